"""benchmarks/sass.py: recorded launches typed as Triton's launcher would type them."""

import importlib.util

import pytest

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")


@needs_triton
def test_strides_left_run_time_are_not_specialised():
    """The scan kernels keep their strides run-time values (`do_not_specialize`, given by
    name): a stride of 1 made a constant changes the tiles' layout (the forward compiled to
    128 registers and 1 KB of shared memory instead of 96 and none when this was missed)."""
    from benchmarks.sass import launch_signature
    from benchmarks.scan_sass import SassConfig, recorded_launches

    (_, fwd, args, kwargs), _ = recorded_launches(SassConfig(L=32, d=64))
    signature, constants, attrs, options = launch_signature(fwd, args, kwargs)
    values = dict(zip(fwd.arg_names, args, strict=False))
    assert values["s_ud"] == 1 and signature["s_ud"] == "i32" and "s_ud" not in constants
    assert signature["s_ub"] == "i32"  # a multiple of 16, no hint either
    assert not any(fwd.arg_names[i].startswith("s_") for (i,) in attrs)
    assert signature["L"] == "i32" and (fwd.arg_names.index("L"),) in attrs  # 32: a hint
    assert signature["u_ptr"] == "*bf16" and signature["A_ptr"] == "*fp32"
    assert constants["BLOCK_T"] == kwargs["BLOCK_T"]
    assert options == {"num_warps": 2}  # d = 64: two warps of 32 channels (`scan_config`)


@needs_triton
def test_contiguous_layout_records_the_copied_states():
    """`--layout contiguous` records the (b, d, L) call of scan_backends' `head` variant:
    time-contiguous u, and B, C reaching the kernels as (b, L, n) copies (the wrapper's): the
    kernels take unit state stride only."""
    from benchmarks.scan_sass import SassConfig, recorded_launches

    (_, fwd, args, kwargs), (_, bwd, bargs, bkwargs) = recorded_launches(
        SassConfig(L=32, d=64, layout="contiguous"))
    values = dict(zip(fwd.arg_names, args, strict=False))
    # strides in units of the vector widths: u's channel stride 32 in 8s (unit time stride,
    # `_time_vec`), B a (1, L, n) copy whose step stride n = 16 is 2 x 8 (`_bc_vec`)
    assert kwargs["TIME_UNIT"] and kwargs["VEC"] == 8 and kwargs["BC_VEC"] == 8
    assert values["s_ul"] == 1 and values["s_ud"] == 32 // 8 and values["s_bl"] == 16 // 8
    bvalues = dict(zip(bwd.arg_names, bargs, strict=False))
    assert bkwargs["BC_VEC"] == 8 and bvalues["s_bl"] == bvalues["s_cl"] == 16 // 8


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/              @!P0 BRA 0x80 ;                             /* 0x0000000000008947 */
        /*0020*/                   LDG.E.128 R4, [R2.64] ;                /* 0x0000000402047981 */
        /*0030*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;      /* 0x0c201f0004057f89 */
        /*0040*/                   FFMA R6, R5, R4, R6 ;                  /* 0x0000000405067223 */
        /*0050*/               @P1 BRA 0x30 ;                             /* 0x0000000000001947 */
        /*0060*/                   FADD R6, R6, R4 ;                      /* 0x0000000406067221 */
        /*0070*/              @!P2 BRA 0x20 ;                             /* 0xffffffa00000a947 */
        /*0080*/                   STG.E [R2.64], R6 ;                    /* 0x0000000602007986 */
        /*0090*/                   EXIT ;                                 /* 0x000000000000794d */
        /*00a0*/                   NOP;
        /*00b0*/                   NOP;
"""


def test_main_loop_counts_the_longest_backward_branch_once():
    """`main_loop`: from the target of the longest backward branch (0x70 -> 0x20) to it, the
    nested loop (0x50 -> 0x30) inside it counted once, forward branches ignored."""
    from benchmarks.sass import main_loop

    loop = main_loop(SASS)
    assert loop["instructions"] == 6  # 0x20 .. 0x70
    assert (loop["LDG"], loop["SHFL"], loop["FFMA"], loop["FADD"], loop["STG"]) == (1, 1, 1, 1, 0)
    assert main_loop(SASS.replace("BRA 0x20", "BRA 0x80"))["instructions"] == 3  # inner only
    no_loop = SASS.replace("BRA 0x20", "BRA 0x80").replace("BRA 0x30", "BRA 0x60")
    assert set(main_loop(no_loop).values()) == {0}


def test_opcodes_one_per_instruction_line():
    """Every instruction line counted once, `NOP;` without a space included (a pattern whose
    operands could run past the line end swallowed the next line's instruction)."""
    from benchmarks.sass import opcodes

    ops = opcodes(SASS)
    assert sum(ops.values()) == 12 and ops["NOP"] == 2 and ops["BRA"] == 3

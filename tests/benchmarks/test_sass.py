"""benchmarks/sass.py: recorded launches typed as Triton's launcher would type them."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


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

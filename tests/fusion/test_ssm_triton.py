"""The `triton` scan backend and per-row `lengths` against the torch backend.

Three kinds of tests:

* CPU, always: the torch backend's `lengths` (a padded row equals its truncated row; no
  gradient past its length), the Mamba head's lengths path, and that CPU runs never import
  Triton.
* CPU, when Triton is installed (CI has none: skipped): the Triton kernels under Triton's
  interpreter (`TRITON_INTERPRET=1`, which must be set before Triton is imported, hence a
  subprocess) on small shapes, float32, against the torch backend.
* `gpu`: the compiled kernels on CUDA against the torch backend, values and every gradient.
  Tolerances (relative to the largest reference magnitude, at least 1; see `assert_close`):
  float32 inputs 1e-4 (both backends compute in float32 and differ only by summation order),
  float16 5e-3 and bfloat16 2e-2 (outputs and gradients are rounded to the input dtype:
  1 ulp is 1e-3 / 4e-3); the A gradient, a sum over batch and time, gets 10x.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusion.heads.mamba as mamba_module
from fusion import ssm
from fusion.heads import build_head
from fusion.ssm import selective_scan, selective_scan_sequential
from tests.fusion.test_ssm import assert_close, make_inputs, run_and_grads
from tests.fusion.triton_interpreter import run_interpreted, run_without_triton

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def grads_equal(grads, grads_ref, tol, names=None):
    for name in names or grads_ref:
        assert_close(grads[name].float(), grads_ref[name].float(),
                     tol * 10 if name == "A" else tol)


# ------------------------------------------------------------------ CPU: lengths, torch backend


@pytest.mark.parametrize("options", [True, False])
def test_torch_lengths_equal_truncated_rows(options):
    """Row i with lengths[i] = l: outputs and gradients equal the scan of its first l steps;
    outputs past l are 0 and nothing past l gets a gradient."""
    b, d, n, L = 4, 3, 5, 13
    lengths = torch.tensor([13, 0, 6, 1])
    inputs = make_inputs(b, d, n, L, torch.float64, seed=3, options=options)
    kwargs = {"delta_softplus": options}
    y, grads = run_and_grads(selective_scan, inputs, backend="torch", lengths=lengths, **kwargs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i, length in enumerate(lengths.tolist()):
        assert (y[i, :, length:] == 0).all()
        for name in ("u", "delta", "z", "B", "C"):
            if name in grads:
                assert (grads[name][i, :, length:] == 0).all(), name
        if length == 0:
            continue
        row = {k: (v.detach()[i:i + 1, ..., :length] if v.dim() == 3 else v.detach())
               .requires_grad_() for k, v in inputs.items()}
        y_row = selective_scan_sequential(**row, **kwargs)
        assert_close(y[i:i + 1, :, :length], y_row, 1e-12)
        g_row = torch.autograd.grad(y_row, list(row.values()), gy[i:i + 1, :, :length])
        for (name, g) in zip(row, g_row, strict=True):
            if g.dim() == 3:
                assert_close(grads[name][i:i + 1, ..., :length], g, 1e-12)
    # parameters shared by the rows: the sum of the rows' gradients
    per_row = []
    for i, length in enumerate(lengths.tolist()):
        if length:
            row = {k: (v.detach()[i:i + 1, ..., :length] if v.dim() == 3 else v)
                   for k, v in inputs.items()}
            per_row.append(torch.autograd.grad(selective_scan_sequential(**row, **kwargs),
                                               [inputs[k] for k in inputs if inputs[k].dim() < 3],
                                               gy[i:i + 1, :, :length]))
    shared = [k for k in inputs if inputs[k].dim() < 3]
    for j, name in enumerate(shared):
        assert_close(grads[name], sum(p[j] for p in per_row), 1e-12)


def test_lengths_past_L_are_clamped_and_validated():
    inputs = {k: v.detach() for k, v in make_inputs(2, 3, 4, 5, torch.float32).items()}
    y = selective_scan(**inputs, backend="torch")
    torch.testing.assert_close(selective_scan(**inputs, backend="torch",
                                              lengths=torch.tensor([5, 9])), y)
    with pytest.raises(ValueError, match="lengths"):
        selective_scan(**inputs, backend="torch", lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match="lengths"):
        selective_scan(**inputs, backend="torch", lengths=torch.tensor([5.0, 5.0]))


def test_triton_is_never_chosen_or_imported_on_cpu():
    run_without_triton("""
        import sys, torch
        from fusion import ssm
        from fusion.heads import build_head
        assert ssm.resolve_backend("auto", "cpu") == "torch"
        assert ssm.available_backends("cpu") == ["torch"]
        head = build_head("mamba", modality_dims={"video": 8, "verb_question": 4},
                          d_model=8, d_state=2)
        head({"video": torch.randn(2, 5, 8), "verb_question": torch.randn(2, 3, 4)})
        assert "triton" not in sys.modules, "triton was imported on a CPU run"
    """)


def test_triton_backend_refused_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = {k: v.detach() for k, v in make_inputs(1, 2, 3, 4, torch.float32).items()}
    with pytest.raises(RuntimeError, match="triton"):
        selective_scan(**inputs, backend="triton")


def small_mamba(**kwargs):
    torch.manual_seed(0)
    return build_head("mamba", modality_dims={"video": 24, "verb_question": 16,
                                              "noun_question": 16},
                      num_verbs=5, num_nouns=7, d_model=24, d_state=4, **kwargs)


def ragged_batch(n=3, video_len=12, question_len=5, device="cpu"):
    g = torch.Generator().manual_seed(0)
    inputs = {"video": torch.randn(n, video_len, 24, generator=g),
              "verb_question": torch.randn(n, question_len, 16, generator=g),
              "noun_question": torch.randn(n, question_len, 16, generator=g)}
    masks = {k: torch.arange(v.shape[1])[None] < torch.randint(2, v.shape[1] + 1, (n, 1),
                                                               generator=g)
             for k, v in inputs.items()}
    return ({k: v.to(device) for k, v in inputs.items()},
            {k: v.to(device) for k, v in masks.items()})


def head_results(head, inputs, masks):
    head.zero_grad()
    out = head(inputs, masks)
    (out["verb"].square().sum() + out["noun"].sum()).backward()
    return [out["verb"].detach(), out["noun"].detach(), head.A_log.grad.clone(),
            head.mixers["video"][0].in_proj.weight.grad.clone(),
            head.mixers["question"][0].x_proj.weight.grad.clone()]


def test_head_lengths_path_equals_padding(monkeypatch):
    """The head's ragged path (one call, per-row lengths) gives the padded path's results;
    run on CPU by declaring the torch backend ragged."""
    head = small_mamba(depth=2)
    head.max_padding_ragged = 4.0  # group the branches into one ragged call
    inputs, masks = ragged_batch()
    expected = head_results(head, inputs, masks)
    calls = []
    original = mamba_module.selective_scan

    def recording(*args, **kwargs):
        calls.append(kwargs.get("lengths"))
        return original(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "RAGGED_BACKENDS", ("torch",))
    monkeypatch.setattr(mamba_module, "selective_scan", recording)
    got = head_results(head, inputs, masks)
    assert len(calls) == 2  # one call per layer
    # each row's real tokens; groups run the shortest branch first
    real = [masks[m].sum(1).tolist() for m in ("verb_question", "noun_question", "video")]
    assert calls[0].tolist() == sum(real, [])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # one call per branch (the default): each gets its rows' real tokens
    head.max_padding_ragged = 1.0
    calls.clear()
    got = head_results(head, inputs, masks)
    assert [c.tolist() for c in calls[:2]] == [real[0] + real[1], real[2]]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ragged_backends_group_long_and_short_branches():
    head = small_mamba()
    shapes = {"video": torch.Size([2, 48, 40]), "question": torch.Size([4, 48, 4])}
    assert head.scan_groups(shapes) == [["question"], ["video"]]  # 2.5x padding > 1.5x
    assert head.scan_groups(shapes, ragged=True) == [["question"], ["video"]]  # default 1x
    head.max_padding_ragged = 4.0
    assert head.scan_groups(shapes, ragged=True) == [["question", "video"]]
    far = {"video": torch.Size([2, 48, 400]), "question": torch.Size([20, 48, 4])}
    assert head.scan_groups(far, ragged=True) == [["question"], ["video"]]  # 8.4x memory


# ------------------------------------------------------------------ CPU: Triton's interpreter

INTERPRETER_SCRIPT = r"""
import sys
import torch

from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()

from fusion import ssm
from fusion.ssm_triton import ScanConfig
from tests.fusion.test_ssm import assert_close, make_inputs, run_and_grads

assert ssm.resolve_backend("triton", "cpu") == "triton"
# the kernels must write every output element (zeros past a row's length included): outputs
# are allocated uninitialised, here filled with NaN so an element left unwritten shows
_empty = torch.empty


def nan_empty(*args, **kwargs):
    t = _empty(*args, **kwargs)
    return t.fill_(float("nan")) if t.is_floating_point() else t


torch.empty = nan_empty
assert ssm.resolve_backend("auto", "cpu") == "torch"
CASES = [  # b, d, n, L, options, lengths, config (tiny tiles: several chunks and d-blocks)
    (1, 1, 1, 1, True, None, None),
    (2, 3, 4, 1, False, None, None),
    (2, 5, 3, 7, True, None, ScanConfig(block_t=2, block_d_fwd=2, block_d_bwd=4)),
    (2, 5, 3, 11, True, [11, 4], ScanConfig(block_t=4, block_d_fwd=4, block_d_bwd=2)),
    (3, 4, 8, 20, False, [0, 20, 9], ScanConfig(block_t=4)),
    (3, 7, 2, 18, True, [25, 3, 17], ScanConfig(block_t=8, block_d_fwd=8, block_d_bwd=2)),
    # forward chunks of 8 storing a state every 2 steps, backward walking chunks of 2
    (2, 6, 4, 21, True, [21, 10], ScanConfig(block_t=8, block_t_bwd=2, block_d_bwd=4)),
    # a state stored every 4 steps of chunks of 8 (twice a chunk) and every 8 steps of chunks
    # of 4 (every other chunk); backward chunks of 2 run up from their interval's state
    (2, 5, 3, 19, True, [19, 6], ScanConfig(block_t=8, block_t_bwd=2, ckpt_t=4)),
    (2, 6, 4, 21, True, [21, 10], ScanConfig(block_t=4, block_t_bwd=2, ckpt_t=8, block_d_bwd=4)),
    # one state: (b, 1, L) B and C keep their stride along n (no copy makes it 1)
    (2, 3, 1, 9, True, None, ScanConfig(block_t=4)),
]
for b, d, n, L, options, lengths, config in CASES:
    inputs = make_inputs(b, d, n, L, torch.float32, seed=L + d, options=options)
    lengths = None if lengths is None else torch.tensor(lengths)
    kwargs = {"delta_softplus": options, "lengths": lengths}
    from fusion.ssm_triton import selective_scan_triton

    y, grads = run_and_grads(selective_scan_triton, inputs, config=config, **kwargs)
    y_ref, grads_ref = run_and_grads(ssm.selective_scan, inputs, backend="torch", **kwargs)
    errors = {"y": (y - y_ref).abs().max().item()}
    assert y.dtype == torch.float32 and y.shape == (b, d, L)
    assert_close(y, y_ref, 1e-5)
    for name in inputs:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_close(grads[name], grads_ref[name], 1e-5)
        errors[name] = (grads[name] - grads_ref[name]).abs().max().item()
    print((b, d, n, L, options, None if lengths is None else lengths.tolist()),
          "max abs err", {k: f"{v:.1e}" for k, v in errors.items()})
# D without delta_bias and delta_bias without D (their per-row gradients share one buffer)
for absent in ("D", "delta_bias"):
    inputs = make_inputs(2, 5, 3, 6, torch.float32, seed=11)
    del inputs[absent]
    y, grads = run_and_grads(selective_scan_triton, inputs, delta_softplus=True,
                             config=ScanConfig(block_d_bwd=2))
    y_ref, grads_ref = run_and_grads(ssm.selective_scan, inputs, backend="torch",
                                     delta_softplus=True)
    for name in inputs:
        assert_close(grads[name], grads_ref[name], 1e-5)
# float64 inputs run in float32 and come back as float64; the public entry point
inputs = make_inputs(2, 3, 4, 9, torch.float64, seed=5)
y, grads = run_and_grads(ssm.selective_scan, inputs, backend="triton", delta_softplus=True)
y_ref, grads_ref = run_and_grads(ssm.selective_scan, inputs, backend="torch",
                                 delta_softplus=True)
assert y.dtype == torch.float64
assert_close(y, y_ref, 1e-5)
for name in inputs:
    assert_close(grads[name], grads_ref[name], 1e-5)
# half-precision inputs (A, D, delta_bias float32): outputs and gradients in the input dtype
for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 2e-2)):
    inputs = make_inputs(2, 5, 4, 13, torch.float32, seed=3)
    inputs = {k: (v.detach().to(dtype) if k not in ("A", "D", "delta_bias") else v.detach())
              .requires_grad_() for k, v in inputs.items()}
    kwargs = {"delta_softplus": True, "lengths": torch.tensor([13, 6])}
    y, grads = run_and_grads(selective_scan_triton, inputs, config=ScanConfig(block_t=4),
                             **kwargs)
    y_ref, grads_ref = run_and_grads(ssm.selective_scan, inputs, backend="torch", **kwargs)
    assert y.dtype == dtype
    assert_close(y.float(), y_ref.float(), tol)
    for name in inputs:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_close(grads[name].float(), grads_ref[name].float(), tol)
    print(dtype, "matches the torch backend at tolerance", tol)
# channels-last views, as the Mamba head passes them: u, delta, z transposed (b, L, d)
# tensors (z a half of a wider projection), B and C slices of one (b, L, 3 + 2n) tensor;
# outputs and gradients come back in that layout
b, d, n, L = 3, 6, 4, 11
g = torch.Generator().manual_seed(7)
xz = torch.randn(b, L, 2 * d, generator=g, requires_grad=True)
bc = torch.randn(b, L, 3 + 2 * n, generator=g, requires_grad=True)
dl = (0.5 * torch.randn(b, L, d, generator=g)).requires_grad_()
A = (-torch.rand(d, n, generator=g) * 3).requires_grad_()
D, bias = (torch.randn(d, generator=g).requires_grad_() for _ in range(2))
leaves = [xz, bc, dl, A, D, bias]
from fusion.ssm_triton import _states_unit

# these B, C views compile the kernels with the state stride fixed to 1, (b, n, L) tensors not
assert _states_unit(bc[..., 3:3 + n].transpose(1, 2), bc[..., 3 + n:].transpose(1, 2))
assert not _states_unit(*(bc[..., 3:3 + n].transpose(1, 2).contiguous() for _ in range(2)))
results = {}
for name, fn in (("triton", selective_scan_triton),
                 ("torch", lambda *a, **k: ssm.selective_scan(*a, **k, backend="torch"))):
    u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
    y = fn(u, dl.transpose(1, 2), A, bc[..., 3:3 + n].transpose(1, 2),
           bc[..., 3 + n:].transpose(1, 2), D, z, bias, True,
           lengths=torch.tensor([11, 4, 0]))
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    results[name] = (y.detach(), *torch.autograd.grad(y, leaves, gy))
    if name == "triton":
        assert y.stride(1) == 1, y.stride()  # channels-last like u
for got, ref in zip(results["triton"], results["torch"], strict=True):
    assert_close(got, ref, 1e-5)
print("channels-last views match the torch backend")
# the Mamba head: each branch in a call of its own (Δ's bias and softplus, D and the gate
# inside the scan kernel) and its convolutions in Triton too, against the torch backend
from tests.fusion.test_ssm_triton import head_results, ragged_batch, small_mamba

head = small_mamba(depth=2)
inputs, masks = ragged_batch()
results = {}
for backend in ("triton", "torch"):
    head.backend = backend
    results[backend] = head_results(head, inputs, masks)
for got, ref in zip(results["triton"], results["torch"], strict=True):
    assert_close(got, ref, 1e-5)
print("the Mamba head matches the torch backend")
# the kernels' launches as torch.library operators: schema, fake (shapes and strides, for
# torch.compile) and autograd registration, on the head's channels-last views (no lengths:
# opcheck compares every output of two runs, and the checkpointed states past a row's length
# are never written)
from fusion import ssm_triton as st

cfg = st._cfg_list(st.scan_config(L, d, n, ScanConfig(block_t=4, block_d_bwd=4)))
args = (xz[..., :d].transpose(1, 2), dl.transpose(1, 2), A, bc[..., 3:3 + n].transpose(1, 2),
        bc[..., 3 + n:].transpose(1, 2), D, xz[..., d:].transpose(1, 2), bias,
        None, True, cfg, True)
checks = torch.library.opcheck(torch.ops.fusion.scan_fwd.default, args)
assert set(checks.values()) == {"SUCCESS"}, checks
# eager calls skip the operators' dispatch (`_EagerScan`); the operators' own autograd, what
# torch.compile runs, gives the same y and gradients, bit for bit
y_eager = selective_scan_triton(*args[:8], True, config=ScanConfig(block_t=4, block_d_bwd=4))
assert type(y_eager.grad_fn).__name__ == "_EagerScanBackward", y_eager.grad_fn
y_op, _ = torch.ops.fusion.scan_fwd(*args)
gy = torch.randn(y_op.shape, generator=torch.Generator().manual_seed(2))
assert torch.equal(y_eager, y_op)
for got, ref in zip(torch.autograd.grad(y_eager, leaves, gy),
                    torch.autograd.grad(y_op, leaves, gy), strict=True):
    assert torch.equal(got, ref)
# memory layouts chosen so a warp's accesses are contiguous (issue18_status.md, twelfth
# session): checkpointed states channels-contiguous, B and C's gradients (and the partial
# sums behind them) states-contiguous, and (b, n, L) B and C copied to states-contiguous
# before the launch
y, states = torch.ops.fusion.scan_fwd(*args)
assert states.stride(1) == 1 and states.stride(3) == d, states.stride()
grads = torch.ops.fusion.scan_bwd(torch.ones_like(y), *args[:8], None, states, True, cfg)
assert grads[3].stride(1) == 1 and grads[4].stride(1) == 1, (grads[3].stride(), grads[4].stride())
seen, check = [], st._check_states_unit
st._check_states_unit = lambda op, B, C: seen.append((B.stride(1), C.stride(1))) or check(op, B, C)
with torch.no_grad():
    selective_scan_triton(args[0].contiguous(), args[1].contiguous(), A,
                          *(t.contiguous() for t in args[3:5]))
st._check_states_unit = check
assert seen == [(1, 1)], seen
# the operators themselves refuse strided states (the kernels take unit state stride only)
for op, op_args in (("scan_fwd", (*args[:3], *(t.contiguous() for t in args[3:5]), *args[5:])),
                    ("scan_bwd", (torch.ones_like(y), *args[:3],
                                  *(t.contiguous() for t in args[3:5]), *args[5:8], None,
                                  states, True, cfg))):
    try:
        getattr(torch.ops.fusion, op)(*op_args)
    except ValueError as error:
        assert "contiguous states" in str(error), error
    else:
        raise AssertionError(f"{op} ran on strided states")
print("layouts: states, B / C gradients and B / C copies as chosen")
print("interpreter: all cases match the torch backend")
"""


def test_triton_kernels_under_the_interpreter():
    """The Triton kernels themselves, on CPU tensors, run by Triton's interpreter."""
    run_interpreted(INTERPRETER_SCRIPT)


# ------------------------------------------------------------------ GPU: compiled kernels


def needs_triton():
    if ssm._triton_fn() is None:
        pytest.skip("triton is not installed")


def test_scan_config_chunks():
    """Forward chunks of 8, backward chunks of 4 (never longer than the forward's); the
    backward's register cap."""
    needs_triton()
    from fusion.ssm_triton import ScanConfig, backward_maxnreg, scan_config

    tiles = scan_config(32, 2048, 16)
    assert (tiles["BLOCK_T"], tiles["BLOCK_T_BWD"]) == (8, 4)
    # forward: a lane a channel, 4 warps; 16 channels a warp on (b, d, L) tensors, 2 warps
    assert (tiles["BLOCK_D_FWD"], tiles["WARPS_FWD"], tiles["BLOCK_D_BWD"]) == (128, 4, 16)
    tiles = scan_config(32, 2048, 16, time_unit=True)
    assert (tiles["BLOCK_D_FWD"], tiles["WARPS_FWD"]) == (32, 2)
    assert (scan_config(32, 40, 16)["BLOCK_D_FWD"], scan_config(32, 40, 16)["WARPS_FWD"]) == (64, 2)
    assert (scan_config(32, 8, 16)["BLOCK_D_FWD"], scan_config(32, 8, 16)["WARPS_FWD"]) == (8, 1)
    # a state stored every backward chunk, from CKPT_LONG_L = 256 steps every other one
    assert scan_config(32, 2048, 16)["CKPT_T"] == 4
    assert scan_config(256, 2048, 16)["CKPT_T"] == 8
    assert scan_config(2, 2048, 16)["CKPT_T"] == 2
    assert scan_config(32, 2048, 16, ScanConfig(ckpt_t=16))["CKPT_T"] == 16
    assert scan_config(32, 2048, 16, ScanConfig(ckpt_t=2))["CKPT_T"] == 4  # never inside a chunk
    assert backward_maxnreg(tiles) == 168
    assert scan_config(2, 2048, 16)["BLOCK_T_BWD"] == 2
    tiles = scan_config(32, 2048, 16, ScanConfig(block_t=4, block_t_bwd=16, maxnreg_bwd=255))
    assert (tiles["BLOCK_T"], tiles["BLOCK_T_BWD"]) == (4, 4)
    assert backward_maxnreg(tiles) == 255


def test_lane_sums_only_on_the_tile_their_ptx_assumes(monkeypatch):
    """The backward's PTX channel sums (`_sum_channels`) need one warp of 16 channels and 16
    (padded) states, compiled: any other tile, or the interpreter, sums with `tl.sum`."""
    needs_triton()
    from fusion.ssm_triton import ScanConfig, lane_sums, scan_config

    assert lane_sums(scan_config(256, 1536, 16)) and lane_sums(scan_config(16, 1536, 12))
    assert not lane_sums(scan_config(256, 1536, 8))
    assert not lane_sums(scan_config(256, 1536, 16, ScanConfig(num_warps_bwd=2)))
    assert not lane_sums(scan_config(256, 1536, 16, ScanConfig(block_d_bwd=8)))
    assert not lane_sums(scan_config(256, 1536, 16, ScanConfig(lane_sums=False)))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not lane_sums(scan_config(256, 1536, 16))


def test_vector_widths_follow_layout_and_alignment():
    """`_time_vec`: unit time stride and the vector width dividing every row / channel
    stride and data offset; `_bc_vec`: 16-byte loads of B and C's states where aligned."""
    needs_triton()
    from fusion.ssm_triton import _bc_vec, _time_vec

    u = torch.zeros(2, 6, 24, dtype=torch.bfloat16)
    assert _time_vec(u, u.float(), None) == 8
    assert _time_vec(torch.zeros(2, 6, 20)) == 4  # channel stride 20: 4 elements
    assert _time_vec(torch.zeros(2, 6, 7)) == 1  # unit time stride, no wider vector
    assert _time_vec(u[..., 1:]) == 1  # offset by one element
    assert _time_vec(u, torch.zeros(2, 24, 6).transpose(1, 2)) == 0  # one channels-last
    bc = torch.zeros(2, 24, 48, dtype=torch.bfloat16)  # (b, L, 16 + 2n), n = 16
    B, C = bc[..., 16:32].transpose(1, 2), bc[..., 32:].transpose(1, 2)
    assert _bc_vec(B, C) == 8
    assert _bc_vec(bc[..., 8:24].transpose(1, 2), C) == 8  # 16 bytes in
    assert _bc_vec(bc[..., 4:20].transpose(1, 2), C) == 1  # 8 bytes in: misaligned
    assert _bc_vec(torch.zeros(2, 5, 3).transpose(1, 2), torch.zeros(2, 5, 3).transpose(1, 2)) == 1


def _ptx_op(op: str, a, b=None, c=None):
    """One lane's result of the few PTX forms `_lane_sum_asm` writes."""
    import numpy as np

    if op in ("mov.u32", "mov.b32"):
        return a
    if op == "and.b32":
        return a & b
    if op == "setp.ne.b32":
        return a != b
    if op == "selp.b32":
        return a if c else b
    if op == "add.f32":
        return np.float32(a + b)
    raise AssertionError(f"PTX op {op} not simulated")


def run_ptx_on_a_warp(asm: str, inputs):
    """`asm` run by 32 lanes in lock step; inputs (32, k) are $k.. (after k outputs);
    returns the outputs (32, k)."""
    import numpy as np

    k = inputs.shape[1]
    regs = [{f"${k + j}": np.float32(v) for j, v in enumerate(row)} for row in inputs]
    for lane, r in enumerate(regs):
        r["%laneid"] = lane
    for line in asm.splitlines():
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        op, args = line.rstrip(";").split(" ", 1)
        dst, *src = [a.strip() for a in args.split(",")]
        if op.startswith("shfl.sync.bfly"):
            new = [regs[lane ^ int(src[1])][src[0]] for lane in range(32)]
        else:
            new = [_ptx_op(op, *[r[a] if a in r else int(a, 0) for a in src]) for r in regs]
        for r, v in zip(regs, new, strict=True):
            r[dst] = v
    return np.array([[r[f"${j}"] for j in range(k)] for r in regs])


def test_b_and_c_steps_compiled_in_only_where_no_clamp_is_needed():
    """`_bc_step`: B and C's step stride when every chunk lies inside L, no row has a length
    (past one, the clamp keeps the padding out), both share it and no state is padded."""
    needs_triton()
    from fusion.ssm_triton import _bc_step

    bc = torch.zeros(2, 256, 48, dtype=torch.bfloat16)  # (b, L, 16 + 2n), n = 16
    B, C = bc[..., 16:32].transpose(1, 2), bc[..., 32:].transpose(1, 2)
    assert _bc_step(B, C, None, 256, 8, even_n=True) == 48
    assert _bc_step(B, C, torch.tensor([256, 100]), 256, 8, even_n=True) == 0
    assert _bc_step(B[..., :250], C[..., :250], None, 250, 8, even_n=True) == 0
    assert _bc_step(B, C.contiguous(), None, 256, 8, even_n=True) == 0  # step strides 48, 1
    assert _bc_step(B, C, None, 256, 8, even_n=False) == 0


def test_the_lane_sums_ptx_sums_each_state_over_the_16_channel_lanes():
    """`_lane_sum_asm` run lane by lane: lane l (channel l % 16, states 8 (l // 16) ..
    +7) ends with the sum over its 16 channel lanes of state 4 b3 + 2 b2 + b1 of its group
    (b: the channel's bits), what `_lane_state` stores, in all 8 outputs."""
    needs_triton()
    import numpy as np

    from fusion.ssm_triton import _lane_sum_asm

    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    out = run_ptx_on_a_warp(_lane_sum_asm(), x)
    for lane in range(32):
        ch, group = lane % 16, lane // 16
        state = 4 * (ch >> 3 & 1) + 2 * (ch >> 2 & 1) + (ch >> 1 & 1)
        expected = x[16 * group:16 * group + 16, state].sum(dtype=np.float64)
        np.testing.assert_allclose(out[lane], expected, rtol=1e-5, atol=1e-5)


def cuda_inputs(b, d, n, L, dtype, seed, options=True):
    """Random inputs on CUDA; u, delta, B, C, z in `dtype`, A, D, delta_bias float32.

    Without `options` (no softplus) Δ is |N(0, 0.25)|: Δ > 0 as in real use (the head applies
    softplus before the call). A raw normal Δ < 0 makes exp(Δ A) > 1, so the recurrence grows
    like exp(|Δ A| t) and overflows fp16 (and, at L = 512, float32) on every backend, the
    torch reference included: that compares infinities, not the kernels.
    """
    inputs = make_inputs(b, d, n, L, torch.float32, device="cuda", seed=seed, options=options)
    if not options:
        inputs["delta"] = inputs["delta"].detach().abs()
    return {k: (v.detach().to(dtype) if k not in ("A", "D", "delta_bias") else v.detach())
            .requires_grad_() for k, v in inputs.items()}


def random_shapes(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = []
    for _ in range(count):
        b = int(torch.randint(1, 6, (1,), generator=g))
        d = int(torch.randint(1, 200, (1,), generator=g)) | 1  # odd
        n = (1, 4, 5, 16)[int(torch.randint(0, 4, (1,), generator=g))]
        L = int(torch.randint(1, 400, (1,), generator=g))
        ragged = bool(torch.randint(0, 2, (1,), generator=g))
        lengths = torch.randint(0, L + 1, (b,), generator=g).tolist() if ragged else None
        shapes.append((b, d, n, L, lengths))
    return shapes


GPU_SHAPES = [  # b, d, n, L, lengths
    (1, 1, 1, 1, None),
    (2, 3, 16, 1, None),
    (2, 37, 16, 77, [77, 30]),
    (2, 40, 12, 50, [50, 21]),  # 16 states in the tile, 4 masked (the lane sums' store)
    (3, 129, 5, 64, [0, 64, 1]),
    (4, 96, 16, 300, None),
    (8, 256, 16, 512, None),
    (2, 64, 16, 2049, [2049, 1000]),
    *random_shapes(4),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("b", "d", "n", "L", "lengths"), GPU_SHAPES)
def test_triton_matches_torch_backend(dtype, b, d, n, L, lengths):
    needs_triton()
    options = (b + d + L) % 2 == 1  # half the shapes without D, z, delta_bias, softplus
    inputs = cuda_inputs(b, d, n, L, dtype, seed=L + d, options=options)
    kwargs = {"delta_softplus": options,
              "lengths": None if lengths is None else torch.tensor(lengths, device="cuda")}
    y, grads = run_and_grads(selective_scan, inputs, backend="triton", **kwargs)
    y_ref, grads_ref = run_and_grads(selective_scan, inputs, backend="torch", **kwargs)
    tol = TOL[dtype]
    assert y.dtype == y_ref.dtype == dtype and y.shape == (b, d, L)
    assert torch.isfinite(y_ref).all()  # the inputs keep the reference in range (Δ > 0)
    assert torch.isfinite(y).all()
    assert_close(y.float(), y_ref.float(), tol)
    for name in inputs:
        assert grads[name].dtype == inputs[name].dtype, name
    grads_equal(grads, grads_ref, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [
    {"block_t": 2}, {"block_t": 4, "block_d_fwd": 1, "block_d_bwd": 1},
    {"block_t": 32, "block_d_fwd": 4, "block_d_bwd": 2},
    {"block_t": 16, "block_d_fwd": 2, "block_d_bwd": 1, "num_warps_fwd": 8, "num_warps_bwd": 8},
    {"block_t": 16, "block_d_fwd": 16, "block_d_bwd": 8, "num_warps_fwd": 8, "num_warps_bwd": 2},
    {"block_d_fwd": 16}, {"block_d_fwd": 32}, {"block_d_fwd": 64, "num_warps_fwd": 2},
    {"maxnreg_fwd": 72, "maxnreg_bwd": 184},
    # the staged forward (`fusion.ssm_staged`), two and four warps
    {"staged_fwd": True}, {"staged_fwd": True, "num_warps_fwd": 4, "block_d_fwd": 64},
])
def test_tile_sizes_do_not_change_results(config):
    needs_triton()
    from fusion.ssm_triton import ScanConfig, selective_scan_triton

    inputs = cuda_inputs(3, 50, 16, 200, torch.float32, seed=1)
    lengths = torch.tensor([200, 7, 131], device="cuda")
    kwargs = {"delta_softplus": True, "lengths": lengths}
    y, grads = run_and_grads(selective_scan_triton, inputs, config=ScanConfig(**config),
                             **kwargs)
    y_ref, grads_ref = run_and_grads(selective_scan, inputs, backend="torch", **kwargs)
    assert_close(y, y_ref, 1e-4)
    grads_equal(grads, grads_ref, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("b", "d", "n", "L", "config"), [
    (3, 50, 16, 200, {"block_t": 16, "block_t_bwd": 16}),
    (2, 40, 16, 37, {"block_t": 8, "block_t_bwd": 2, "maxnreg_bwd": 255}),
    (2, 33, 3, 19, {"block_t": 4, "block_t_bwd": 1}),
    (2, 128, 8, 70, {"block_d_bwd": 64, "block_t_bwd": 8}),
    # a state every 8 / 16 steps: backward chunks run up from their interval's state
    (3, 50, 16, 200, {"ckpt_t": 8}),
    (2, 40, 16, 37, {"block_t": 4, "ckpt_t": 16}),
    (3, 50, 16, 200, {"staged_fwd": True, "ckpt_t": 16}),  # a state every other chunk
])
def test_backward_chunks_apart_from_forward_chunks(b, d, n, L, config):
    """The forward storing a state every `block_t_bwd` (or `ckpt_t`) steps of its chunks,
    the backward walking those, ragged rows included."""
    needs_triton()
    from fusion.ssm_triton import ScanConfig, selective_scan_triton

    inputs = cuda_inputs(b, d, n, L, torch.float32, seed=d + L)
    lengths = torch.tensor([L] + [max(L // 3, 1)] * (b - 1), device="cuda")
    kwargs = {"delta_softplus": True, "lengths": lengths}
    y, grads = run_and_grads(selective_scan_triton, inputs, config=ScanConfig(**config),
                             **kwargs)
    y_ref, grads_ref = run_and_grads(selective_scan, inputs, backend="torch", **kwargs)
    assert_close(y, y_ref, 1e-4)
    grads_equal(grads, grads_ref, 1e-4)


@pytest.mark.gpu
def test_strided_inputs_and_gradients():
    """Views as the Mamba layer makes them (z a half of in_proj's output, B and C transposed
    slices of x_proj's), an expanded upstream gradient, and inference without states."""
    needs_triton()
    b, d, n, L = 3, 40, 16, 70
    g = torch.Generator(device="cuda").manual_seed(0)
    xz = torch.randn(b, L, 2 * d, device="cuda", generator=g)
    u, z = (t.detach().requires_grad_() for t in xz.transpose(1, 2).chunk(2, dim=1))
    bc = torch.randn(b, L, 2 * n + 3, device="cuda", generator=g, requires_grad=True)
    B, C = bc[..., 3:3 + n].transpose(1, 2), bc[..., 3 + n:].transpose(1, 2)
    delta = (0.5 * torch.randn(b, d, L, device="cuda", generator=g)).requires_grad_()
    A = (-torch.rand(d, n, device="cuda", generator=g) * 4).requires_grad_()
    D = torch.randn(d, device="cuda", generator=g).requires_grad_()
    leaves = [u, z, bc, delta, A, D]
    results = {}
    for backend in ("triton", "torch"):
        y = selective_scan(u, delta, A, B, C, D, z, delta_softplus=True, backend=backend)
        results[backend] = (y.detach(), *torch.autograd.grad(y.sum(), leaves))
    for a, r in zip(results["triton"], results["torch"], strict=True):
        assert_close(a, r, 1e-4)
    with torch.no_grad():
        y = selective_scan(u, delta, A, B, C, D, z, delta_softplus=True, backend="triton")
    assert_close(y, results["torch"][0], 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "views"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_steps_compiled_in_equal_the_clamped_loads(layout, dtype, monkeypatch):
    """A call without lengths (B and C's step stride compiled in, `_bc_step`) against the
    same call with every row's length L (the clamped loads): y and every gradient, forward
    (on (b, d, L) tensors the staged one without lengths, which stages B and C clamped
    instead; Triton's on views) and backward."""
    needs_triton()
    from fusion import ssm_triton
    from fusion.ssm_triton import selective_scan_triton

    steps = []
    bc_step = ssm_triton._bc_step
    monkeypatch.setattr(ssm_triton, "_bc_step", lambda *a, **k: steps.append(
        bc_step(*a, **k)) or steps[-1])
    b, d, n, L = 3, 96, 16, 136
    inputs = cuda_inputs(b, d, n, L, dtype, seed=7, options=False)
    if layout == "views":  # u, Δ channels-last; B and C slices of one (b, L, 2n) tensor
        for name in ("u", "delta"):
            inputs[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2)
        bc = torch.cat([inputs["B"], inputs["C"]], 1).detach().transpose(1, 2).contiguous()
        inputs["B"], inputs["C"] = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
        inputs = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    y, grads = run_and_grads(selective_scan_triton, inputs)
    assert steps and all(steps), steps
    steps.clear()
    full = torch.full((b,), L, device="cuda", dtype=torch.int32)
    y_ref, grads_ref = run_and_grads(selective_scan_triton, inputs, lengths=full)
    assert steps and not any(steps), steps
    assert_close(y.float(), y_ref.float(), TOL[dtype])
    grads_equal(grads, grads_ref, TOL[dtype])


@pytest.mark.gpu
def test_one_ragged_call_equals_one_call_per_modality():
    """Video (16 steps) and text (64 steps) stacked with lengths in one call give what two
    separate calls give, values and gradients (the EK100 case of the benchmark)."""
    needs_triton()
    video = cuda_inputs(4, 96, 16, 16, torch.bfloat16, seed=0, options=False)
    text = cuda_inputs(8, 96, 16, 64, torch.bfloat16, seed=1, options=False)
    text["A"] = video["A"]  # one shared A
    keys = ("u", "delta", "B", "C")
    stacked = {k: torch.cat([F.pad(video[k], (0, 48)), text[k]]).detach().requires_grad_()
               for k in keys}
    A = video["A"].detach().requires_grad_()
    lengths = torch.tensor([16] * 4 + [64] * 8, device="cuda")
    y = selective_scan(**stacked, A=A, delta_softplus=True, backend="triton", lengths=lengths)
    gy = torch.randn(y.shape, device="cuda", dtype=y.dtype)
    g_stacked = torch.autograd.grad(y, [*stacked.values(), A], gy)
    g_a = torch.zeros_like(A)
    for rows, length in ((slice(0, 4), 16), (slice(4, 12), 64)):
        part = {k: v.detach()[rows, :, :length].requires_grad_() for k, v in stacked.items()}
        a = A.detach().requires_grad_()
        y_part = selective_scan(**part, A=a, delta_softplus=True, backend="triton")
        grads = torch.autograd.grad(y_part, [*part.values(), a], gy[rows, :, :length])
        assert_close(y[rows, :, :length].float(), y_part.float(), 1e-2)
        assert (y[rows, :, length:] == 0).all()
        for k, g_one, g_sep in zip(keys, g_stacked, grads, strict=False):
            assert_close(g_one[rows, :, :length].float(), g_sep.float(), 1e-2)
            assert (g_one[rows, :, length:] == 0).all(), k
        g_a += grads[-1]
    assert_close(g_stacked[-1], g_a, 1e-3)


@pytest.mark.gpu
def test_auto_picks_triton_on_cuda():
    needs_triton()
    assert ssm.resolve_backend("auto", "cuda") == "triton"
    assert ssm.available_backends("cuda")[-1] == "triton"


@pytest.mark.gpu
def test_mamba_head_triton_equals_torch_backend(monkeypatch):
    """The head with the triton backend (one ragged call per layer) against the torch
    backend (padding), float32 and under bf16 autocast as in training."""
    needs_triton()
    head = small_mamba(depth=2).cuda()
    inputs, masks = ragged_batch(n=6, device="cuda")
    # the default keeps one call per branch (bias, D and gate in the kernel); 4.0 stacks them
    for max_padding in (1.0, 4.0):
        head.max_padding_ragged = max_padding
        results = {}
        for backend in ("torch", "triton"):
            head.backend = backend
            results[backend] = head_results(head, inputs, masks)
        for a, r in zip(results["triton"], results["torch"], strict=True):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    calls = []
    original = mamba_module.selective_scan

    def recording(*args, **kwargs):
        calls.append((args[0].shape, kwargs.get("lengths")))
        return original(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", recording)
    head.backend = "auto"
    with torch.autocast("cuda", torch.bfloat16):
        out = head(inputs, masks)
    assert len(calls) == 2 and calls[0][0][0] == 18 and calls[0][1] is not None
    head.backend = "torch"
    with torch.autocast("cuda", torch.bfloat16):
        ref = head(inputs, masks)
    torch.testing.assert_close(out["verb"].float(), ref["verb"].float(), rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
def test_compiled_head_runs_the_scan_operators_in_their_eager_layouts(monkeypatch):
    """torch.compile calls the kernels' launches as operators (`fusion::scan_fwd/bwd`) with
    the strides the eager head gives them (traced, they lost their layouts and register cap)
    and gets the eager head's values and gradients."""
    needs_triton()
    from fusion import ssm_triton

    head = small_mamba(depth=2).cuda()
    head.backend = "triton"
    inputs, masks = ragged_batch(n=6, device="cuda")
    layouts = []
    original = ssm_triton._check_states_unit

    def recording(op, B, C):  # the operators' own check: called once a launch
        layouts.append((B.stride(), C.stride()))
        return original(op, B, C)

    monkeypatch.setattr(ssm_triton, "_check_states_unit", recording)
    expected = head_results(head, inputs, masks)
    eager_layouts, layouts[:] = list(layouts), []
    compiled = torch.compile(head)
    head.zero_grad()
    out = compiled(inputs, masks)
    (out["verb"].square().sum() + out["noun"].sum()).backward()
    got = [out["verb"].detach(), out["noun"].detach(), head.A_log.grad.clone(),
           head.mixers["video"][0].in_proj.weight.grad.clone(),
           head.mixers["question"][0].x_proj.weight.grad.clone()]
    assert sorted(layouts) == sorted(eager_layouts) and all(s[1] == 1 for s, _ in layouts)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

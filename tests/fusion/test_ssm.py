"""fusion.ssm: the torch scan equals the step-by-step recurrence (values and every gradient)."""

from __future__ import annotations

import pytest
import torch

from fusion import ssm
from fusion.ssm import selective_scan, selective_scan_sequential, selective_scan_torch

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, n, L, dtype, device="cpu", seed=0, options=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    inputs = {
        "u": rand(b, d, L),
        "delta": rand(b, d, L) * 0.5,
        "A": -torch.exp(rand(d, n) * 0.5),
        "B": rand(b, n, L),
        "C": rand(b, n, L),
    }
    if options:
        inputs |= {"D": rand(d), "z": rand(b, d, L), "delta_bias": rand(d) * 0.5 - 1.0}
    return {k: v.requires_grad_() for k, v in inputs.items()}


def run_and_grads(fn, inputs, seed=1, **kwargs):
    y = fn(**inputs, **kwargs)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(y, list(inputs.values()), gy.to(y))
    return y, dict(zip(inputs, grads, strict=True))


def assert_close(actual, expected, tol):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


SHAPES = [  # (b, d, n, L, chunk): L=1, odd sizes, several chunks, a ragged last chunk
    (1, 1, 1, 1, None),
    (2, 3, 4, 1, 4),
    (2, 5, 3, 7, 2),
    (1, 4, 8, 33, 8),
    (3, 2, 16, 64, 16),
    (2, 6, 5, 29, None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("b", "d", "n", "L", "chunk"), SHAPES)
@pytest.mark.parametrize("options", [True, False])
def test_torch_scan_matches_recurrence(dtype, b, d, n, L, chunk, options):
    inputs = make_inputs(b, d, n, L, dtype, seed=L + d, options=options)
    kwargs = {"delta_softplus": options}
    y, grads = run_and_grads(selective_scan_torch, inputs, chunk_size=chunk, **kwargs)
    y_ref, grads_ref = run_and_grads(selective_scan_sequential, inputs, **kwargs)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert y.dtype == dtype and y.shape == (b, d, L)
    assert_close(y, y_ref, tol)
    for name in inputs:
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], grads_ref[name], tol)


def test_random_shapes_against_float64_reference():
    """float32 scan against the float64 recurrence on random shapes: rel. error below 1e-5."""
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        b, d, n = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(3))
        L = int(torch.randint(1, 48, (1,), generator=g))
        inputs64 = make_inputs(b, d, n, L, torch.float64, seed=trial)
        inputs32 = {k: v.detach().float().requires_grad_() for k, v in inputs64.items()}
        y, grads = run_and_grads(selective_scan, inputs32, delta_softplus=True, backend="torch")
        y_ref, grads_ref = run_and_grads(selective_scan_sequential, inputs64, delta_softplus=True)
        assert_close(y.double(), y_ref, 1e-5)
        for name in inputs64:
            assert_close(grads[name].double(), grads_ref[name], 1e-5)


def test_chunking_does_not_change_results():
    inputs = make_inputs(2, 3, 4, 50, torch.float64)
    y_one, g_one = run_and_grads(selective_scan_torch, inputs, chunk_size=64)
    for chunk in (1, 3, 16):
        y, g = run_and_grads(selective_scan_torch, inputs, chunk_size=chunk)
        assert_close(y, y_one, 1e-12)
        for name in inputs:
            assert_close(g[name], g_one[name], 1e-12)


def test_bfloat16_inputs_keep_fp32_state():
    inputs = make_inputs(2, 4, 3, 20, torch.float32)
    y32 = selective_scan_torch(**inputs, delta_softplus=True)
    low = {k: v.detach().bfloat16() for k, v in inputs.items()}
    low["A"] = inputs["A"].detach()  # A stays fp32, as in Mamba
    y = selective_scan_torch(**low, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert (y.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_backward_memory_is_linear_in_length():
    """Saved tensors grow like L (inputs + one state per chunk), not like L²."""

    def saved_bytes(L):
        inputs = make_inputs(1, 8, 4, L, torch.float32, options=False)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selective_scan_torch(**inputs, chunk_size=16)
        return total

    small, large = saved_bytes(64), saved_bytes(1024)
    assert large < 20 * small  # 16x the length, < 20x the memory (a loop would be ~256x)


def test_backends_and_errors():
    inputs = {k: v.detach() for k, v in make_inputs(1, 2, 3, 4, torch.float32).items()}
    assert ssm.resolve_backend("auto", "cpu") == "torch"
    assert ssm.available_backends("cpu") == ["torch"]
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        selective_scan(**inputs, backend="cuda")
    if ssm._mamba_ssm_fn() is None:
        with pytest.raises(RuntimeError, match="mamba_ssm"):
            selective_scan(**inputs, backend="mamba_ssm")
    bad = dict(inputs, B=inputs["B"][:, :, :2])
    with pytest.raises(ValueError, match="expected \\(b, n, L\\)"):
        selective_scan(**bad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("b", "d", "n", "L"), [(2, 64, 16, 1), (4, 96, 16, 77), (8, 256, 16, 512)])
def test_mamba_ssm_matches_torch_backend(dtype, b, d, n, L):
    if ssm._mamba_ssm_fn() is None:
        pytest.skip("mamba_ssm is not installed")
    inputs = make_inputs(b, d, n, L, torch.float32, device="cuda", seed=L)
    inputs = {k: (v.detach().to(dtype) if k not in ("A", "D", "delta_bias") else v.detach())
              .requires_grad_() for k, v in inputs.items()}
    y, grads = run_and_grads(selective_scan, inputs, delta_softplus=True, backend="mamba_ssm")
    y_ref, grads_ref = run_and_grads(selective_scan, inputs, delta_softplus=True, backend="torch")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert y.dtype == y_ref.dtype == dtype
    assert_close(y.float(), y_ref.float(), tol)
    for name in inputs:
        assert_close(grads[name].float(), grads_ref[name].float(), tol * 10 if name == "A" else tol)

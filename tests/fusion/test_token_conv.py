"""`fusion.token_conv`: the depthwise token convolution, torch backend and Triton kernels.

Three kinds of tests, as in test_ssm_triton:

* CPU, always: the torch backend is the `F.conv1d` expressions (causal and centred, with and
  without SiLU and bias), right-padding never leaks into real tokens in causal mode, argument
  checks, and that CPU runs never import Triton.
* CPU, when Triton is installed (CI has none: skipped): the Triton kernels under Triton's
  interpreter (`TRITON_INTERPRET=1`, which must be set before Triton is imported, hence a
  subprocess) on small float32 shapes, values and all three gradients against the torch
  backend (1e-5 relative to the largest reference magnitude).
* `gpu`: the compiled kernels on CUDA against the torch backend, values and gradients;
  float32 1e-4, bfloat16 2e-2 relative to the largest magnitude (see `assert_close`: the
  outputs are rounded to bf16, and the torch backend rounds the fp32 weights to bf16 first).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusion import token_conv as token_conv_module
from fusion.token_conv import token_conv
from tests.fusion.test_ssm import assert_close
from tests.fusion.triton_interpreter import run_interpreted, run_without_triton


def reference(x, weight, bias, causal, activation):
    """The F.conv1d expressions the brief pins (x (b, L, d))."""
    L, d, k = x.shape[1], x.shape[2], weight.shape[2]
    if causal:
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=k - 1, groups=d)[..., :L]
    else:
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=k // 2, groups=d)
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2)


def conv_inputs(b, L, d, k, dtype=torch.float64, bias=True, seed=0, device="cpu", extra=0):
    """x (b, L, d) as a channel slice of a (b, L, d + extra) leaf, weight (d, 1, k), bias."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, L, d + extra, generator=g, dtype=torch.float64).to(device, dtype)
    weight = (torch.randn(d, 1, k, generator=g, dtype=torch.float64) / k).to(device)
    b_ = torch.randn(d, generator=g, dtype=torch.float64).to(device) if bias else None
    wide.requires_grad_()
    weight.requires_grad_()
    if b_ is not None:
        b_.requires_grad_()
    return wide, wide[..., extra:], weight, b_


# ------------------------------------------------------------------ CPU: torch backend


@pytest.mark.parametrize(("k", "causal"), [(4, True), (3, True), (3, False), (5, False),
                                           (1, True)])
@pytest.mark.parametrize("activation", ["none", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_backend_is_the_conv1d_expression(k, causal, activation, bias):
    wide, x, weight, b = conv_inputs(3, 9, 6, k, bias=bias, extra=2)
    y = token_conv(x, weight, b, causal=causal, activation=activation, backend="auto")
    expected = reference(x, weight, b, causal, activation)
    assert y.shape == (3, 9, 6) and y.is_contiguous() and y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # causal: output t depends on inputs t-k+1..t only; centred: t-k//2..t+k//2
    gx = torch.autograd.grad(y[:, 4].sum(), wide)[0][..., 2:]
    lo, hi = (4 - k + 1, 4) if causal else (4 - k // 2, 4 + k // 2)
    touched = (gx != 0).any(dim=(0, 2)).nonzero().flatten().tolist()
    assert set(touched) <= set(range(max(lo, 0), hi + 1))


def test_causal_padding_never_leaks_into_real_tokens():
    """Left-aligned rows (real tokens, then padding): the real tokens' outputs and gradients
    are those of the unpadded row, whatever the padding holds."""
    lengths = [9, 4, 1]
    _, x, weight, b = conv_inputs(3, 9, 5, 4)
    for fill in (0.0, 1e3):
        padded = x.detach().clone()
        for i, n in enumerate(lengths):
            padded[i, n:] = fill
        padded.requires_grad_()
        y = token_conv(padded, weight, b, causal=True, activation="silu")
        for i, n in enumerate(lengths):
            row = padded.detach()[i:i + 1, :n]
            torch.testing.assert_close(y[i:i + 1, :n],
                                       token_conv(row, weight, b, causal=True,
                                                  activation="silu"))
            g = torch.autograd.grad(y[i, :n].sum(), padded, retain_graph=True)[0]
            assert (g[:, n:] == 0).all() and (g[:i] == 0).all() and (g[i + 1:] == 0).all()


def test_autocast_dtype_matches_conv1d():
    """Under autocast the result has F.conv1d's dtype there (the autocast dtype)."""
    _, x, weight, b = conv_inputs(2, 5, 4, 4, dtype=torch.float32)
    for xd in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", torch.bfloat16):
            y = token_conv(x.to(xd), weight.float(), b.float(), causal=True, activation="silu")
            expected = reference(x.to(xd), weight.float(), b.float(), True, "silu")
        assert y.dtype == expected.dtype == torch.bfloat16
        torch.testing.assert_close(y, expected)


def test_arguments_are_checked():
    _, x, weight, b = conv_inputs(2, 5, 4, 3)
    with pytest.raises(ValueError, match="activation"):
        token_conv(x, weight, b, causal=True, activation="relu")
    with pytest.raises(ValueError, match="weight"):
        token_conv(x, weight[:3], b, causal=True)
    with pytest.raises(ValueError, match="bias"):
        token_conv(x, weight, b[:3], causal=True)
    with pytest.raises(ValueError, match="odd"):
        token_conv(x, torch.randn(4, 1, 4, dtype=torch.float64), None, causal=False)
    with pytest.raises(ValueError, match="backend"):
        token_conv(x, weight, b, causal=True, backend="cudnn")
    assert token_conv(x[:, :0], weight, b, causal=True).shape == (2, 0, 4)


def test_triton_backend_refused_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, x, weight, b = conv_inputs(1, 3, 2, 3)
    with pytest.raises(RuntimeError, match="triton"):
        token_conv(x, weight, b, causal=True, backend="triton")


def test_triton_is_never_chosen_or_imported_on_cpu():
    run_without_triton("""
        import sys, torch
        from fusion import token_conv as tc
        assert tc.resolve_backend("auto", "cpu") == "torch"
        assert tc.available_backends("cpu") == ["torch"]
        x = torch.randn(2, 5, 3)
        tc.token_conv(x, torch.randn(3, 1, 4), None, causal=True, activation="silu")
        assert "triton" not in sys.modules, "triton was imported on a CPU run"
    """)


def test_run_without_triton_fails_when_its_script_does(monkeypatch):
    """The two tests above can fail: a script whose check fails fails the helper with the
    script's message; TRITON_INTERPRET set here does not reach the script."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(AssertionError, match="triton was imported on a CPU run"):
        run_without_triton("""
            import os, sys
            assert "TRITON_INTERPRET" not in os.environ, "TRITON_INTERPRET reached the script"
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
            sys.modules["triton"] = sys  # stands in for an import of Triton
            assert "triton" not in sys.modules, "triton was imported on a CPU run"
        """)


# ------------------------------------------------------------------ CPU: Triton's interpreter

INTERPRETER_SCRIPT = r"""
import torch

from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()

from fusion import token_conv as tc
from fusion.conv_triton import ConvConfig, token_conv_triton
from tests.fusion.test_ssm import assert_close
from tests.fusion.test_token_conv import conv_inputs

assert tc.resolve_backend("triton", "cpu") == "triton"
assert tc.resolve_backend("auto", "cpu") == "torch"


def run(fn, x, leaves, gy, **kwargs):
    y = fn(x, leaves[1], leaves[2] if len(leaves) > 2 else None, **kwargs)
    return y, torch.autograd.grad(y, leaves, gy)


SMALL = ConvConfig(block_l_fwd=16, block_l_bwd=8, block_d=32, blocks_per_chunk=2)
CASES = [  # b, L, d, k, causal, activation, bias, extra (x a slice of a wider tensor), config
    (2, 7, 5, 4, True, "silu", True, 0, None),
    (2, 7, 5, 3, False, "none", False, 3, None),
    (2, 33, 40, 4, True, "silu", False, 40, SMALL),  # several token, channel blocks, chunks
    (2, 33, 40, 3, False, "silu", True, 1, None),
    (2, 33, 5, 4, True, "none", True, 0, ConvConfig(block_l_bwd=8, min_programs=3)),
    (1, 2, 3, 3, False, "silu", True, 0, None),  # L < k: every tap past an edge somewhere
    (2, 11, 6, 7, False, "silu", True, 2, None),  # k > 4: taps 4.. take the kernel's 3D path
    (1, 9, 3, 6, True, "none", False, 0, None),
    (1, 5, 4, 1, True, "silu", True, 0, None),
]
for b, L, d, k, causal, activation, bias, extra, config in CASES:
    wide, x, weight, bias_ = conv_inputs(b, L, d, k, torch.float32, bias, seed=L + d,
                                         extra=extra)
    weight, bias_ = weight.detach().float().requires_grad_(), bias_
    if bias_ is not None:
        bias_ = bias_.detach().float().requires_grad_()
    leaves = [wide, weight] + ([bias_] if bias else [])
    gy = torch.randn(b, L, d, generator=torch.Generator().manual_seed(1))
    kwargs = {"causal": causal, "activation": activation}
    y, grads = run(token_conv_triton, x, leaves, gy, config=config, **kwargs)
    y_ref, grads_ref = run(tc.token_conv, x, leaves, gy, backend="torch", **kwargs)
    assert y.shape == (b, L, d) and y.is_contiguous() and y.dtype == torch.float32
    assert_close(y, y_ref, 1e-5)
    for name, g, g_ref in zip(("x", "weight", "bias"), grads, grads_ref, strict=False):
        assert g.dtype == g_ref.dtype, name
        assert_close(g, g_ref, 1e-5)
    print((b, L, d, k, causal, activation, bias, extra), "max abs err",
          f"{(y - y_ref).abs().max().item():.1e}",
          [f"{(g - r).abs().max().item():.1e}" for g, r in zip(grads, grads_ref, strict=False)])
# the public entry point; float64 in and out (computed in float32); bf16 x with fp32 weights
wide, x, weight, bias_ = conv_inputs(2, 9, 6, 4, torch.float64, seed=2)
y, grads = run(tc.token_conv, x, [wide, weight, bias_], x.detach() * 0 + 1,
               causal=True, activation="silu", backend="triton")
y_ref, grads_ref = run(tc.token_conv, x, [wide, weight, bias_], x.detach() * 0 + 1,
                       causal=True, activation="silu", backend="torch")
assert y.dtype == torch.float64 and all(g.dtype == torch.float64 for g in grads)
assert_close(y, y_ref, 1e-5)
for g, r in zip(grads, grads_ref, strict=True):
    assert_close(g, r, 1e-5)
wide, x, weight, bias_ = conv_inputs(2, 9, 6, 4, torch.bfloat16, seed=3)
weight, bias_ = (t.detach().float().requires_grad_() for t in (weight, bias_))
gy = torch.ones(2, 9, 6, dtype=torch.bfloat16)
y, grads = run(tc.token_conv, x, [wide, weight, bias_], gy, causal=True, activation="silu",
               backend="triton")
# the reference in float32 from the same bf16 values: the kernel computes in float32
ref_leaves = [wide.detach().float().requires_grad_(), weight, bias_]
y_ref, grads_ref = run(tc.token_conv, ref_leaves[0], ref_leaves, gy.float(), causal=True,
                       activation="silu", backend="torch")
assert y.dtype == torch.bfloat16 and grads[0].dtype == torch.bfloat16
assert grads[1].dtype == grads[2].dtype == torch.float32
assert_close(y.float(), y_ref, 1e-2)
for g, r in zip(grads, grads_ref, strict=True):
    assert_close(g.float(), r, 1e-2)
print("interpreter: all cases match the torch backend")
"""


def test_triton_kernels_under_the_interpreter():
    """The Triton kernels themselves, on CPU tensors, run by Triton's interpreter."""
    run_interpreted(INTERPRETER_SCRIPT)


# ------------------------------------------------------------------ GPU: compiled kernels


def needs_triton():
    if token_conv_module._triton_fn() is None:
        pytest.skip("triton is not installed")


def backend_results(backend, wide, x, weight, bias, gy, **kwargs):
    leaves = [t for t in (wide, weight, bias) if t is not None]
    y = token_conv(x, weight, bias, backend=backend, **kwargs)
    return y.detach(), torch.autograd.grad(y, leaves, gy)


GPU_CASES = [(4, True, "silu"), (3, False, "none")]  # k, causal, activation


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("b", "L", "d"), [(128, 16, 2048), (256, 32, 2048), (3, 77, 130),
                                           (2, 3137, 64)])
@pytest.mark.parametrize(("k", "causal", "activation"), GPU_CASES)
def test_triton_matches_torch_backend(dtype, b, L, d, k, causal, activation):
    needs_triton()
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    wide, x, weight, bias = conv_inputs(b, L, d, k, dtype, bias=causal, seed=L, device="cuda",
                                        extra=d)  # x = wide[..., d:], as xz[..., :d] would
    weight, bias = (None if t is None else t.detach().float().requires_grad_()
                    for t in (weight, bias))
    gy = torch.randn(b, L, d, device="cuda", dtype=dtype)
    kwargs = {"causal": causal, "activation": activation}
    y, grads = backend_results("triton", wide, x, weight, bias, gy, **kwargs)
    y_ref, grads_ref = backend_results("torch", wide, x, weight, bias, gy, **kwargs)
    assert y.dtype == dtype and y.shape == (b, L, d) and y.is_contiguous()
    assert_close(y.float(), y_ref.float(), tol)
    for g, r in zip(grads, grads_ref, strict=True):
        assert g.dtype == r.dtype
        assert_close(g.float(), r.float(), tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("k", "causal", "activation"), [(1, True, "silu"), (2, True, "none"),
                                                         (5, False, "silu"), (6, True, "silu"),
                                                         (9, False, "none")])
def test_triton_other_kernel_sizes(k, causal, activation):
    needs_triton()
    wide, x, weight, bias = conv_inputs(3, 50, 70, k, torch.float32, seed=k, device="cuda",
                                        extra=5)
    weight, bias = (t.detach().float().requires_grad_() for t in (weight, bias))
    gy = torch.randn(3, 50, 70, device="cuda")
    kwargs = {"causal": causal, "activation": activation}
    y, grads = backend_results("triton", wide, x, weight, bias, gy, **kwargs)
    y_ref, grads_ref = backend_results("torch", wide, x, weight, bias, gy, **kwargs)
    assert_close(y, y_ref, 1e-4)
    for g, r in zip(grads, grads_ref, strict=True):
        assert_close(g, r, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [
    {"block_l_bwd": 16, "num_warps_bwd": 4},  # the four-warp backward the sweep compared
    {"block_l_bwd": 8, "block_d_bwd": 256, "num_warps_bwd": 2, "min_programs": 1},
    {"block_l_fwd": 64, "block_d": 64, "num_warps_fwd": 8, "blocks_per_chunk": 3},
    {"block_l_fwd": 16, "block_l_bwd": 32, "block_d": 256, "num_warps_bwd": 8},
])
def test_tile_sizes_do_not_change_results(config):
    needs_triton()
    from fusion.conv_triton import ConvConfig, token_conv_triton

    wide, x, weight, bias = conv_inputs(3, 300, 200, 4, torch.bfloat16, seed=1, device="cuda",
                                        extra=200)
    weight, bias = (t.detach().float().requires_grad_() for t in (weight, bias))
    gy = torch.randn(3, 300, 200, device="cuda", dtype=torch.bfloat16)
    leaves = [wide, weight, bias]
    y = token_conv_triton(x, weight, bias, causal=True, activation="silu",
                          config=ConvConfig(**config))
    grads = torch.autograd.grad(y, leaves, gy)
    y_ref, grads_ref = backend_results("torch", wide, x, weight, bias, gy, causal=True,
                                       activation="silu")
    assert_close(y.float(), y_ref.float(), 2e-2)
    for g, r in zip(grads, grads_ref, strict=True):
        assert_close(g.float(), r.float(), 2e-2)


@pytest.mark.gpu
def test_triton_under_autocast_as_the_mamba_layer_calls_it():
    """bf16 autocast, x a half of a (b, L, 2d) projection, fp32 Conv1d weights: bf16 out,
    gradients in the parameters' dtypes, close to the torch backend under autocast."""
    needs_triton()
    torch.manual_seed(0)
    d, k = 256, 4
    proj = torch.nn.Linear(64, 2 * d, bias=False).cuda()
    conv = torch.nn.Conv1d(d, d, k, groups=d, padding=k - 1).cuda()
    inp = torch.randn(8, 80, 64, device="cuda")
    results = {}
    for backend in ("triton", "torch"):
        with torch.autocast("cuda", torch.bfloat16):
            x = proj(inp)[..., :d]
            y = token_conv(x, conv.weight, conv.bias, causal=True, activation="silu",
                           backend=backend)
            loss = (y.float() ** 2).mean()
        assert y.dtype == torch.bfloat16
        results[backend] = (y.detach().float(), *torch.autograd.grad(
            loss, [proj.weight, conv.weight, conv.bias]))
        assert results[backend][2].dtype == torch.float32
    for a, r in zip(results["triton"], results["torch"], strict=True):
        assert_close(a, r, 2e-2)


@pytest.mark.gpu
def test_auto_picks_triton_on_cuda():
    needs_triton()
    assert token_conv_module.resolve_backend("auto", "cuda") == "triton"

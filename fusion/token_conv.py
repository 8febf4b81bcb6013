"""Depthwise convolution along the token axis of (batch, tokens, channels) tensors, SiLU fused.

    y = token_conv(x, weight, bias, causal=True, activation="silu", backend="auto")

Why: the Mamba head works in (b, L, d) layout (its projections are `nn.Linear`s), but PyTorch's
depthwise `conv1d` wants (b, d, L). Each layer therefore paid a transpose to (b, d, L), the
conv_depthwise kernels (forward and backward), a separate SiLU and a transpose back: about
1.4 ms of a ~10 ms training step on an H100 (issue 18). `token_conv` does the same
convolution in the (b, L, d) layout the head already has, reading x through its strides (a
channel slice of the in-projection's (b, L, 2d) output needs no copy), in ONE forward kernel
with bias and activation fused, and a backward of two kernels: one recomputes the
pre-activation from x (only x is saved), writes g = gy * silu'(pre) and per-program float32
partial sums of dweight and dbias; the other is the forward kernel on g, taps reversed (dx).

Measured on one H200 (not on an H100 yet), bf16 x a channel half of a (b, L, 2d) tensor, fp32
weights under autocast, k = 4 causal with SiLU, kernel time summed by torch.profiler (what a
CUDA-graph replay costs), in microseconds, forward / forward + backward:

| b, L, d | F.conv1d on x.transpose(1, 2) + silu | triton |
|---|---|---|
| 128, 16, 2048 | 99 / 327 | 8 / 68 |
| 256, 32, 2048 | 394 / 1295 | 32 / 248 |
| 32, 3137, 2048 | 4239 / 13737 | 342 / 2475 |

Both backward columns include autograd's copy of dx into the (b, L, 2d) gradient (about 15
us and 730 us of those figures at the smallest and largest size). The forward moves 2-2.4
TB/s; the backward's first kernel (g, dweight) is the slow part (with 4-warp programs it
moved about 1.3 TB/s at the largest size and took 58 of the 100 us at the smallest, mostly a
fixed cost per program; `fusion.conv_triton` says what was tried).

Semantics (`weight` is an `nn.Conv1d(d, d, k, groups=d)` weight (d, 1, k), `bias` (d,) or None):

* `causal=True`: Mamba's causal convolution, output t sees inputs t-k+1..t; equals
  `F.conv1d(x.transpose(1, 2), weight, bias, padding=k - 1, groups=d)[..., :L].transpose(1, 2)`.
  Tokens after t never reach output t, so right-padding never leaks into real tokens.
* `causal=False` (odd k): centred, equals `F.conv1d(..., padding=k // 2, groups=d)` transposed,
  zeros outside [0, L).
* `activation="silu"` applies SiLU to the convolution's output.
* The result is (b, L, d), contiguous. Its dtype is x's, except under `torch.autocast` on x's
  device, where it is the autocast dtype (what `F.conv1d` returns there: autocast casts the
  convolution's inputs). The triton backend computes in float32 from whatever dtypes x,
  weight and bias have (fp32 weights with a bf16 x, as under autocast, are not rounded first);
  the torch backend casts weight and bias to x's dtype before `F.conv1d` (autocast then casts
  all three to its dtype, as it would anyway).

Backends:

* `torch`: the `F.conv1d` expressions above (+ `F.silu`), any device; the reference.
* `triton`: `fusion.conv_triton` (fused kernels, forward and backward), imported lazily; CUDA
  tensors only (CPU tensors too under `TRITON_INTERPRET=1`, for tests).
* `auto`: `triton` for CUDA tensors when Triton imports, else `torch`. CPU machines never
  import Triton.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.backends import resolve

Backend = Literal["auto", "torch", "triton"]
Activation = Literal["none", "silu"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
ACTIVATIONS: tuple[str, ...] = ("none", "silu")


@functools.cache
def _triton_fn() -> Callable | None:
    """`fusion.conv_triton.token_conv_triton`, or None where Triton does not import."""
    try:
        from fusion.conv_triton import token_conv_triton
    except Exception:  # ImportError, or a Triton install that fails to initialise
        return None
    return token_conv_triton


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` here, least preferred first; `auto` takes the last."""
    names = ["torch"]
    if torch.device(device).type == "cuda" and _triton_fn() is not None:
        names.append("triton")
    return names


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend `backend` means for tensors on `device` (`fusion.backends`)."""
    return resolve("token-conv", backend, BACKENDS, available_backends(device),
                   lambda: _triton_fn() is not None)


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, causal: bool,
           activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; have {ACTIVATIONS}")
    if x.dim() != 3:
        raise ValueError(f"x is {tuple(x.shape)}, expected (batch, tokens, channels)")
    d = x.shape[-1]
    if weight.dim() != 3 or weight.shape[:2] != (d, 1) or weight.shape[2] < 1:
        raise ValueError(f"weight is {tuple(weight.shape)}, expected a depthwise Conv1d weight "
                         f"(d, 1, k) with d = {d}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"bias is {tuple(bias.shape)}, expected ({d},)")
    if not causal and weight.shape[2] % 2 == 0:
        raise ValueError(f"a centred (causal=False) convolution needs an odd kernel, got "
                         f"k = {weight.shape[2]}")


def _out_dtype(x: Tensor) -> torch.dtype:
    """x's dtype, or the autocast dtype where autocast would cast F.conv1d's inputs."""
    device = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def token_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    causal: bool,
    activation: Activation = "none",
    backend: Backend = "auto",
) -> Tensor:
    """Depthwise convolution along the token axis of x (b, L, d) -> (b, L, d), contiguous.

    `weight` (d, 1, k) and `bias` (d,) or None as in `nn.Conv1d(d, d, k, groups=d)`; `causal`
    (output t sees t-k+1..t) or centred (odd k, zeros outside the sequence); `activation`
    "none" or "silu", applied to the convolution's output. See the module docstring for
    dtypes and backends.
    """
    _check(x, weight, bias, causal, activation)
    name = resolve_backend(backend, x.device)
    b, L, d = x.shape
    if L == 0:
        return torch.zeros((b, L, d), dtype=_out_dtype(x), device=x.device)
    if name == "triton" and x.numel() > 0:
        return _triton_fn()(x, weight, bias, causal=causal, activation=activation,
                            out_dtype=_out_dtype(x))
    return token_conv_torch(x, weight, bias, causal=causal, activation=activation)


def token_conv_torch(x: Tensor, weight: Tensor, bias: Tensor | None, *, causal: bool,
                     activation: Activation = "none") -> Tensor:
    """The `torch` backend: `F.conv1d` on the transposed x (the reference for tests)."""
    _check(x, weight, bias, causal, activation)
    L, d, k = x.shape[1], x.shape[2], weight.shape[2]
    y = F.conv1d(x.transpose(1, 2), weight.to(x.dtype),
                 None if bias is None else bias.to(x.dtype),
                 padding=k - 1 if causal else k // 2, groups=d)
    if causal:
        y = y[..., :L]
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2).contiguous()

"""Selective scan (Mamba's S6 recurrence) with mamba-ssm's signature and layout.

    y = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, backend="auto", lengths=None)

Shapes follow `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`: `u, delta, z` are
(batch, d, L), `A` is (d, n), `B, C` are (batch, n, L), `D, delta_bias` are (d,); the result is
(batch, d, L) in `u`'s dtype. Per channel d and state n the recurrence is

    Δ_t = softplus(delta_t + delta_bias)          (softplus only with delta_softplus)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,        h_{-1} = 0
    y_t = C_t · h_t + D u_t,                       y_t ← y_t · silu(z_t)

Backends:

* `torch`: pure PyTorch, any device. An `autograd.Function` whose forward runs a chunked
  Hillis-Steele parallel scan (log2 T passes over a chunk of T steps, state carried from chunk
  to chunk) and keeps only the inputs and one state per chunk; backward recomputes each
  chunk's states and runs the adjoint recurrence `g_t = C_t gy_t + exp(Δ_{t+1} A) g_{t+1}` as a
  reverse scan. Memory is O(b·d·n·T) working space plus O(b·d·L) saved tensors, never the
  O(L²) of a per-step Python loop under autograd (what mamba-ssm's `selective_scan_ref` costs).
  State and arithmetic are float32 (float64 when any input is float64).
* `triton`: fused Triton kernels (`fusion.ssm_triton`), forward and backward, float32
  state; imported lazily, CUDA tensors only (CPU tensors too under `TRITON_INTERPRET=1`, for
  tests). It skips the steps past each row's `lengths` instead of computing them.
* `mamba_ssm`: mamba-ssm's CUDA kernel, imported lazily (it cannot import on CPU machines).
* `auto`: for CUDA tensors `triton` when Triton imports, else `mamba_ssm` when it imports,
  else `torch`; for CPU tensors always `torch`. CPU machines never import Triton.

`lengths` (optional, (batch,) integers): row i is a sequence of `lengths[i]` steps padded to
L. Its outputs at steps t >= lengths[i] are 0 and those steps pass no gradient to any input,
on every backend: `torch` and `mamba_ssm` set Δ = 0 there (after bias and softplus, so the
step is the identity on the state) and zero y; `triton` does not scan those steps at all.
Since the scan is causal, outputs before a row's length never depend on its padding either
way. This is what lets the Mamba head scan modalities of different lengths in one call.

`selective_scan_sequential` is the plain step-by-step recurrence, the reference for tests.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion.backends import resolve

Backend = Literal["auto", "torch", "mamba_ssm", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "mamba_ssm", "triton")
RAGGED_BACKENDS: tuple[str, ...] = ("triton",)
"""Backends whose cost does not grow with padding past `lengths` (they skip those steps)."""

# Working-space budget of the torch backend: a chunk holds about this many (b, d, T, n)
# elements per tensor (fp32: 1 GiB), so T = this / (b·d·n), a power of two >= 16.
CHUNK_ELEMENTS = 2**28


@dataclass
class ScanCount:
    """FLOPs of the selective scans run inside `count_scan_flops()` (see `scan_flops`)."""

    flops: int = 0
    calls: int = 0


_COUNTERS: list[ScanCount] = []


def scan_flops(b: int, d: int, L: int, n: int) -> int:
    """Analytic FLOPs of one scan of (b, d, L) inputs with n states: b·d·L·(7n + 1).

    Per channel, step and state: Δ·A (1), exp (1), (Δu)·B (1), a·h + x (2), C·h summed over
    the states (2); per channel and step: Δ·u (1). Like FlopCounterMode, which counts only
    matrix products and convolutions, it leaves out the elementwise work around the scan
    (softplus, the D skip, the silu(z) gate). A multiply-add is 2 FLOPs, as in the counter.
    """
    return b * d * L * (7 * n + 1)


@contextlib.contextmanager
def count_scan_flops() -> Iterator[ScanCount]:
    """Adds up `scan_flops` of every `selective_scan` call in the block (any backend).

    `torch.utils.flop_counter.FlopCounterMode` cannot see the scan: the CUDA kernel is opaque
    to it and the torch backend is elementwise work, which it does not count.
    """
    count = ScanCount()
    _COUNTERS.append(count)
    try:
        yield count
    finally:
        _COUNTERS.remove(count)


@functools.cache
def _mamba_ssm_fn() -> Callable | None:
    """mamba-ssm's `selective_scan_fn`, or None where it does not import (CPU machines)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return _scan_interface_alone()
    except Exception:  # OSError/RuntimeError from a CUDA extension that cannot load
        return None
    return selective_scan_fn


def _scan_interface_alone() -> Callable | None:
    """`selective_scan_fn` without running `mamba_ssm/__init__.py`.

    That file imports mamba-ssm's whole model zoo (Mamba2/3, transformers' generation
    classes), which can fail on an environment where the scan kernel itself loads fine.
    """
    import importlib
    import importlib.util
    import sys
    import types

    try:
        spec = importlib.util.find_spec("mamba_ssm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    saved = sys.modules.get("mamba_ssm")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn
    except Exception:
        if saved is None:
            sys.modules.pop("mamba_ssm", None)
        else:
            sys.modules["mamba_ssm"] = saved
        return None


@functools.cache
def _triton_fn() -> Callable | None:
    """`fusion.ssm_triton.selective_scan_triton`, or None where Triton does not import."""
    try:
        from fusion.ssm_triton import selective_scan_triton
    except Exception:  # ImportError, or a Triton install that fails to initialise
        return None
    return selective_scan_triton


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` here, least preferred first (`torch` always can);
    `auto` takes the last: triton, then mamba_ssm, then torch on CUDA; torch on CPU."""
    names = ["torch"]
    if torch.device(device).type == "cuda":
        if _mamba_ssm_fn() is not None:
            names.append("mamba_ssm")
        if _triton_fn() is not None:
            names.append("triton")
    return names


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend `backend` means for tensors on `device` (`fusion.backends`)."""
    return resolve("selective-scan", backend, BACKENDS, available_backends(device),
                   lambda: _triton_fn() is not None)


def _check_lengths(lengths: Tensor | None, u: Tensor) -> None:
    if lengths is None:
        return
    if lengths.shape != (u.shape[0],) or lengths.dtype.is_floating_point or lengths.is_complex():
        raise ValueError(f"lengths is {tuple(lengths.shape)} {lengths.dtype}, expected "
                         f"({u.shape[0]},) integers")


def _step_mask(lengths: Tensor, L: int, device: torch.device) -> Tensor:
    """(b, 1, L) bool: step t of row i is real (t < lengths[i])."""
    return (torch.arange(L, device=device) < lengths.to(device)[:, None])[:, None, :]


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, d, L = u.shape
    n = A.shape[-1]
    if delta.shape != u.shape or A.shape != (d, n):
        raise ValueError(f"u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}: "
                         "expected u, delta (b, d, L) and A (d, n)")
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, L):
            raise ValueError(f"{name} is {tuple(t.shape)}, expected (b, n, L) = {(b, n, L)}")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: Backend = "auto",
    lengths: Tensor | None = None,
) -> Tensor:
    """Selective scan of `u` (b, d, L); see the module docstring for the recurrence and
    `lengths` (per-row sequence lengths; steps past them give 0 on every backend)."""
    _check_shapes(u, delta, A, B, C)
    _check_lengths(lengths, u)
    for count in _COUNTERS:  # the call's (b, d, L) shape, padding included, on every backend
        count.flops += scan_flops(*u.shape, A.shape[-1])
        count.calls += 1
    name = resolve_backend(backend, u.device)
    if name == "triton":
        return _triton_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths)
    if name == "mamba_ssm":
        fn = _mamba_ssm_fn()
        if lengths is not None:
            # the kernel has no lengths: Δ = 0 (identity steps) past them, computed here
            mask = _step_mask(lengths, u.shape[-1], u.device)
            dt = delta.float()
            if delta_bias is not None:
                dt = dt + delta_bias.float()[:, None]
            if delta_softplus:
                dt = F.softplus(dt)
            delta, delta_bias, delta_softplus = dt * mask, None, False
        # the kernel wants u and delta in one dtype; A, D and delta_bias stay fp32
        y = fn(u, delta.to(u.dtype), A.float(), B, C,
               None if D is None else D.float(), z,
               None if delta_bias is None else delta_bias.float(), delta_softplus)
        return y if lengths is None else y * mask
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                lengths=lengths)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """The `torch` backend; `chunk_size` overrides the automatic chunk length (tests).

    `lengths`: Δ is set to 0 past each row's length (after bias and softplus: the step is the
    identity on the state and adds no input) and y to 0, so those steps pass no gradient.
    """
    _check_shapes(u, delta, A, B, C)
    _check_lengths(lengths, u)
    dtype = _compute_dtype(u, delta, A, B, C)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    mask = None if lengths is None else _step_mask(lengths, u.shape[-1], u.device)
    if mask is not None:
        delta = delta * mask
    if chunk_size is None:
        b, d, L = u.shape
        per_step = max(1, b * d * A.shape[-1])
        chunk_size = max(16, 1 << max(0, (CHUNK_ELEMENTS // per_step).bit_length() - 1))
    y = _SelectiveScan.apply(u, delta, A, B, C, int(chunk_size))
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    if mask is not None:
        y = y * mask
    return y.to(u.dtype)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _scan(a: Tensor, x: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Inclusive linear scan along dim -2, in place: returns (prod a, h).

    Forward: h_t = a_t h_{t-1} + x_t and P_t = a_0 ... a_t. Reverse: h_t = a_t h_{t+1} + x_t and
    P_t = a_t ... a_{T-1}. Hillis-Steele: log2(T) passes, each one full-size multiply-add.
    """
    T = a.shape[-2]
    k = 1
    while k < T:
        if reverse:
            x[..., :-k, :] += a[..., :-k, :] * x[..., k:, :]
            a[..., :-k, :] = a[..., :-k, :] * a[..., k:, :]
        else:
            x[..., k:, :] += a[..., k:, :] * x[..., :-k, :]
            a[..., k:, :] = a[..., k:, :] * a[..., :-k, :]
        k *= 2
    return a, x


def _chunk_inputs(u, delta, A, B, C, s, e, dtype):
    """(b, d, T, n) decay exp(Δ A) and input Δ B u of steps s..e-1, plus the chunk's pieces."""
    uc = u[:, :, s:e].to(dtype)
    dc = delta[:, :, s:e]
    Bc = B[:, :, s:e].to(dtype).transpose(1, 2)[:, None]  # (b, 1, T, n)
    Cc = C[:, :, s:e].to(dtype).transpose(1, 2)[:, None]
    dA = torch.exp(dc[..., None] * A.to(dtype)[:, None, :])  # (b, d, T, n)
    dBu = (dc * uc)[..., None] * Bc
    return uc, dc, Bc, Cc, dA, dBu


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t · h_t with h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t (no D, z, bias: autograd's)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):
        dtype = delta.dtype
        b, d, L = u.shape
        n = A.shape[-1]
        starts = list(range(0, L, chunk_size))
        h0s = u.new_zeros((b, d, len(starts), n), dtype=dtype)  # state entering each chunk
        y = u.new_empty((b, d, L), dtype=dtype)
        h = u.new_zeros((b, d, n), dtype=dtype)
        for i, s in enumerate(starts):
            e = min(s + chunk_size, L)
            h0s[:, :, i] = h
            _, _, _, Cc, dA, dBu = _chunk_inputs(u, delta, A, B, C, s, e, dtype)
            P, hc = _scan(dA, dBu)
            hc += P * h[:, :, None, :]
            y[:, :, s:e] = (hc * Cc).sum(-1)
            h = hc[:, :, -1]
        ctx.save_for_backward(u, delta, A, B, C, h0s)
        ctx.chunk_size = chunk_size
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, h0s = ctx.saved_tensors
        dtype = delta.dtype
        chunk_size = ctx.chunk_size
        b, d, L = u.shape
        gy = gy.to(dtype)
        Af = A.to(dtype)
        gu = torch.empty_like(delta)
        gdelta = torch.empty_like(delta)
        gA = torch.zeros_like(Af)
        gB = B.new_empty(B.shape, dtype=dtype)
        gC = C.new_empty(C.shape, dtype=dtype)
        carry = None  # exp(Δ_e A) g_e at the first step e of the chunk to the right
        starts = list(range(0, L, chunk_size))
        for i in reversed(range(len(starts))):
            s = starts[i]
            e = min(s + chunk_size, L)
            h0 = h0s[:, :, i]
            uc, dc, Bc, Cc, dA, dBu = _chunk_inputs(u, delta, A, B, C, s, e, dtype)
            P, h = _scan(dA.clone(), dBu)
            h += P * h0[:, :, None, :]
            gyc = gy[:, :, s:e]
            gC[:, :, s:e] = (h * gyc[..., None]).sum(1).transpose(1, 2)
            # adjoint: g_t = C_t gy_t + exp(Δ_{t+1} A) g_{t+1}, plus the carry from the right
            shifted = torch.cat([dA[:, :, 1:], torch.ones_like(dA[:, :, :1])], dim=2)
            Q, g = _scan(shifted, gyc[..., None] * Cc, reverse=True)
            if carry is not None:
                g += Q * carry[:, :, None, :]
            carry = dA[:, :, 0] * g[:, :, 0]
            # h_t = a_t h_{t-1} + x_t: dL/dx_t = g_t and dL/da_t = g_t h_{t-1}
            gBu = (g * Bc).sum(-1)  # (b, d, T)
            gu[:, :, s:e] = gBu * dc
            h_prev = torch.cat([h0[:, :, None], h[:, :, :-1]], dim=2)
            g_dtA = g * h_prev * dA  # gradient w.r.t. Δ_t A
            gdelta[:, :, s:e] = gBu * uc + (g_dtA * Af[:, None, :]).sum(-1)
            gA += (g_dtA * dc[..., None]).sum((0, 2))
            gB[:, :, s:e] = (g * (dc * uc)[..., None]).sum(1).transpose(1, 2)
        return (gu.to(u.dtype), gdelta, gA.to(A.dtype), gB.to(B.dtype), gC.to(C.dtype), None)


def selective_scan_sequential(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The recurrence one step at a time (reference for tests; O(L) autograd graph)."""
    _check_shapes(u, delta, A, B, C)
    dtype = _compute_dtype(u, delta, A, B, C)
    x, dt, A_, B_, C_ = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = x.new_zeros((u.shape[0], u.shape[1], A.shape[-1]))
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[:, :, t, None] * A_) * h + (dt[:, :, t] * x[:, :, t])[..., None] \
            * B_[:, None, :, t]
        ys.append((h * C_[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + x * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)

"""The `triton` backend of `fusion.token_conv.token_conv`: a depthwise convolution along tokens.

Imported lazily by `fusion.token_conv` (only when the backend is asked for): this module
imports `triton` at the top, and CPU machines without Triton never load it.

    y = token_conv_triton(x, weight, bias, causal=True, activation="silu")

x is (b, L, d) in any strides (typically a channel slice of a wider projection output, the
row stride larger than d), weight an `nn.Conv1d(d, d, k, groups=d)` weight (d, 1, k), bias
(d,) or None; y is (b, L, d), contiguous. Output token t is

    pre_t = bias + sum_j weight[:, 0, j] * x[t + j - PAD],   y_t = act(pre_t)

with PAD = k - 1 (causal: t sees t-k+1..t) or k // 2 (centred, odd k), x = 0 outside [0, L).

Kernels
-------
* Forward: one program per (row, block of BLOCK_L tokens, block of BLOCK_D channels), flattened
  into one grid axis, channel blocks fastest. Channels lie along the contiguous axis, so every
  load and store is coalesced; the k taps are k shifted (BLOCK_L, BLOCK_D) loads of the same
  rows (the halo rows come from L1/L2), accumulated in float32, bias and SiLU applied before
  the single store in the output dtype.
* Backward: one kernel. With g = gy * act'(pre) (pre recomputed from x: nothing but x is saved),
  dx_t = sum_j weight_j g[t + PAD - j], dweight_j = sum g_t x[t + j - PAD], dbias = sum g_t.
  For SiLU, the pre-activation at the k output tokens that read x_t is recomputed from k
  shifted loads each (k^2 loads of x a tile, all but one cached). A program walks a chunk of
  token blocks of one row and keeps its dweight/dbias partial sums in registers; the partials
  (row x chunk, k, d) in float32 are summed by the wrapper (deterministic, no atomics). The
  chunking keeps at least `min_programs` programs in flight for short batches and the partial
  buffers small for long sequences.
* Strides are run-time values (a unit channel stride is specialised by Triton, which
  vectorises those loads); offsets of a row are int64, so views of (b, L, 2d) tensors beyond
  2^31 elements are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@dataclass(frozen=True)
class ConvConfig:
    """Tile sizes and warps. Tokens per tile: `block_l_fwd` / `block_l_bwd` (capped at L rounded
    up to a power of two); channels per tile `block_d` (capped at d, likewise); the backward
    grid is chunked along tokens until it has about `min_programs` programs; `blocks_per_chunk`
    forces the chunk length (tests)."""

    block_l_fwd: int = 32
    block_l_bwd: int = 16
    block_d: int = 128
    num_warps_fwd: int = 4
    num_warps_bwd: int = 4
    min_programs: int = 4096
    blocks_per_chunk: int | None = None


DEFAULT_CONFIG = ConvConfig()
"""Used when `token_conv_triton` gets no `config`; replace it to retune (benchmarks)."""


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# ---------------------------------------------------------------------------- kernels


@triton.jit
def _load_tile(row_ptr, pos, d_offs, d_mask, L, s_l, s_d):
    """x[pos, d_offs] of one row as a float32 (BLOCK_L, BLOCK_D) tile; 0 outside [0, L)."""
    mask = ((pos >= 0) & (pos < L))[:, None] & d_mask[None, :]
    return tl.load(row_ptr + pos[:, None] * s_l + d_offs[None, :] * s_d, mask=mask,
                   other=0.0).to(tl.float32)


@triton.jit
def _load_vec(ptr, d_offs, d_mask, s_d):
    return tl.load(ptr + d_offs * s_d, mask=d_mask, other=0.0).to(tl.float32)


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    L, d, n_dblocks, n_lblocks,
    s_xb, s_xl, s_xd, s_wd, s_wk, s_yb, s_yl, s_yd,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """y (b, L, d): one (BLOCK_L, BLOCK_D) tile of one row per program."""
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    rest = pid // n_dblocks
    pid_l = rest % n_lblocks
    row = (rest // n_lblocks).to(tl.int64)
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < d
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    x_row = x_ptr + row * s_xb
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        acc += _load_vec(bias_ptr, d_offs, d_mask, 1)[None, :]
    for j in tl.static_range(K):
        w = _load_vec(w_ptr + j * s_wk, d_offs, d_mask, s_wd)
        acc += w[None, :] * _load_tile(x_row, t + (j - PAD), d_offs, d_mask, L, s_xl, s_xd)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = (t < L)[:, None] & d_mask[None, :]
    tl.store(y_ptr + row * s_yb + t[:, None] * s_yl + d_offs[None, :] * s_yd,
             acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, gy_ptr, dx_ptr, dw_ptr, db_ptr,
    L, d, n_dblocks, n_chunks, n_lblocks, blocks_per_chunk,
    s_xb, s_xl, s_xd, s_wd, s_wk, s_gb, s_gl, s_gd, s_ob, s_ol, s_od, s_pc, s_pk,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx (b, L, d) and the partial sums of dweight (parts, K, d) and dbias (parts, d), one
    part per (row, chunk of token blocks); the program walks its chunk's blocks in order."""
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    rest = pid // n_dblocks
    chunk = rest % n_chunks
    row = (rest // n_chunks).to(tl.int64)
    part = row * n_chunks + chunk
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < d
    kk = tl.arange(0, BLOCK_K)
    x_row, gy_row, dx_row = x_ptr + row * s_xb, gy_ptr + row * s_gb, dx_ptr + row * s_ob
    if HAS_BIAS:
        bias = _load_vec(bias_ptr, d_offs, d_mask, 1)
    dw_acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    first = chunk * blocks_per_chunk
    for blk in range(first, tl.minimum(first + blocks_per_chunk, n_lblocks)):
        t = blk * BLOCK_L + tl.arange(0, BLOCK_L)
        dx = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        g_own = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(K):
            # output token t + PAD - j read x_t through tap j; its gradient is 0 outside [0, L)
            gy = _load_tile(gy_row, t + (PAD - j), d_offs, d_mask, L, s_gl, s_gd)
            if SILU:
                pre = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
                if HAS_BIAS:
                    pre += bias[None, :]
                for i in tl.static_range(K):
                    w_i = _load_vec(w_ptr + i * s_wk, d_offs, d_mask, s_wd)
                    pre += w_i[None, :] * _load_tile(x_row, t + (i - j), d_offs, d_mask, L,
                                                     s_xl, s_xd)
                sig = tl.sigmoid(pre)
                g = gy * sig * (1.0 + pre * (1.0 - sig))
            else:
                g = gy
            w_j = _load_vec(w_ptr + j * s_wk, d_offs, d_mask, s_wd)
            dx += w_j[None, :] * g
            if j == PAD:
                g_own = g  # the gradient at this tile's own output tokens
        mask = (t < L)[:, None] & d_mask[None, :]
        tl.store(dx_row + t[:, None] * s_ol + d_offs[None, :] * s_od,
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)
        for j in tl.static_range(K):
            xs = _load_tile(x_row, t + (j - PAD), d_offs, d_mask, L, s_xl, s_xd)
            dw_acc += tl.where(kk[:, None] == j, tl.sum(g_own * xs, axis=0)[None, :], 0.0)
        db_acc += tl.sum(g_own, axis=0)
    tl.store(dw_ptr + part * s_pc + kk[:, None] * s_pk + d_offs[None, :], dw_acc,
             mask=(kk < K)[:, None] & d_mask[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part * d + d_offs, db_acc, mask=d_mask)


# ---------------------------------------------------------------------------- autograd


def _tiles(L: int, d: int, block_l: int, cfg: ConvConfig) -> tuple[int, int]:
    return min(_pow2(block_l), _pow2(L)), min(_pow2(cfg.block_d), _pow2(d))


def _pad(k: int, causal: bool) -> int:
    return k - 1 if causal else k // 2


class _TritonTokenConv(torch.autograd.Function):
    """Forward and backward kernels; bias and SiLU fused in both."""

    @staticmethod
    def forward(ctx, x, weight, bias, causal, silu, out_dtype, cfg, needs_grad):
        b, L, d = x.shape
        k = weight.shape[-1]
        y = torch.empty((b, L, d), dtype=out_dtype, device=x.device)
        block_l, block_d = _tiles(L, d, cfg.block_l_fwd, cfg)
        n_dblocks, n_lblocks = triton.cdiv(d, block_d), triton.cdiv(L, block_l)
        _conv_fwd_kernel[(b * n_lblocks * n_dblocks,)](
            x, weight, x if bias is None else bias, y,
            L, d, n_dblocks, n_lblocks,
            *x.stride(), weight.stride(0), weight.stride(2), *y.stride(),
            K=k, PAD=_pad(k, causal), HAS_BIAS=bias is not None, SILU=silu,
            BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg.num_warps_fwd,
        )
        if needs_grad:
            ctx.save_for_backward(x, weight, bias)
        ctx.causal, ctx.silu, ctx.cfg = causal, silu, cfg
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias = ctx.saved_tensors
        cfg = ctx.cfg
        b, L, d = x.shape
        k = weight.shape[-1]
        block_l, block_d = _tiles(L, d, cfg.block_l_bwd, cfg)
        n_dblocks, n_lblocks = triton.cdiv(d, block_d), triton.cdiv(L, block_l)
        per_chunk = cfg.blocks_per_chunk or triton.cdiv(
            n_lblocks, min(n_lblocks, triton.cdiv(cfg.min_programs, b * n_dblocks)))
        n_chunks = triton.cdiv(n_lblocks, per_chunk)
        dx = torch.empty((b, L, d), dtype=x.dtype, device=x.device)
        dw = torch.empty((b * n_chunks, k, d), dtype=torch.float32, device=x.device)
        db = (torch.empty((b * n_chunks, d), dtype=torch.float32, device=x.device)
              if bias is not None else dw)
        _conv_bwd_kernel[(b * n_chunks * n_dblocks,)](
            x, weight, x if bias is None else bias, gy, dx, dw, db,
            L, d, n_dblocks, n_chunks, n_lblocks, per_chunk,
            *x.stride(), weight.stride(0), weight.stride(2), *gy.stride(), *dx.stride(),
            dw.stride(0), dw.stride(1),
            K=k, PAD=_pad(k, ctx.causal), HAS_BIAS=bias is not None, SILU=ctx.silu,
            BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_K=_pow2(k), num_warps=cfg.num_warps_bwd,
        )
        dweight = dw.sum(0).t().unsqueeze(1).to(weight.dtype)  # (d, 1, k)
        dbias = None if bias is None else db.sum(0).to(bias.dtype)
        return dx, dweight, dbias, None, None, None, None, None


def token_conv_triton(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    causal: bool,
    activation: str = "none",
    out_dtype: torch.dtype | None = None,
    config: ConvConfig | None = None,
) -> Tensor:
    """The `triton` backend (arguments checked by `fusion.token_conv.token_conv`).

    y (b, L, d) contiguous in `out_dtype` (default x's dtype); computed in float32 whatever the
    dtypes of x, weight and bias (a bf16 x with fp32 weights, as under autocast, is fine).
    Runs on CUDA tensors, or on CPU tensors under `TRITON_INTERPRET=1` (tests). float64 inputs
    are computed in float32 and come back as float64.
    """
    out_dtype = out_dtype or x.dtype
    tensors = (x, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)
    x, weight, bias = (None if t is None else t.float() if t.dtype == torch.float64 else t
                       for t in tensors)
    if bias is not None:
        bias = bias.contiguous()  # the kernels read it with unit stride
    y = _TritonTokenConv.apply(x, weight, bias, bool(causal), activation == "silu",
                               torch.float32 if out_dtype == torch.float64 else out_dtype,
                               config or DEFAULT_CONFIG, needs_grad)
    return y.to(out_dtype)

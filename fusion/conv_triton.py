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
* Backward: two kernels. With g = gy * act'(pre), dx_t = sum_j weight_j g[t + PAD - j],
  dweight_j = sum_t g_t x[t + j - PAD] and dbias = sum_t g_t. The first kernel recomputes
  pre from x (nothing but x is saved), writes g (SiLU only: otherwise g is gy) in gy's dtype
  and sums dweight/dbias; the second is the forward kernel run on g with the taps reversed.
  A first-kernel program walks a chunk of token blocks of one row, keeps one elementwise
  (BLOCK_L, BLOCK_D) accumulator per tap (taps 0-3; a shared 3D one for taps 4..k-1) and
  dbias in registers and reduces them across tokens once, at the end; the partials
  (row x chunk, k, d) in float32 are summed by the wrapper (deterministic, no atomics). The
  chunking keeps about `min_programs` programs for short batches and the partial buffers
  small for long sequences.
* What was tried, on one H200 (bf16, d = 2048, k = 4, SiLU; summed kernel times): a single
  backward kernel recomputing pre at the k output tokens each x_t feeds (k^2 loads, k
  sigmoids per element) took about 3x the two kernels' time at (32, 3137, 2048); reducing
  dweight across tokens once per tile instead of once per program, or through a
  (k, BLOCK_L, BLOCK_D) tap axis, was 1.5-2.5x slower. One warp per backward program with
  8 x 128 tiles beat four warps at L <= 32 (fwd+bwd 68 vs 100 us at (128, 16, 2048), 248 vs
  304 us at (256, 32, 2048)) and lost 10% at (32, 3137, 2048) (2475 vs 2244 us); 16-token
  tiles with one warp spill at long L (4x slower there). Those 8 x 128 tiles spill too at the
  question call (SiLU, k = 4, (256, 32, 2048): 255 registers and 376 bytes of stack a
  thread, `benchmarks/conv_sass.py --block-d-bwd 128`); 8 x 64 tiles spill at none of the
  head's calls (241 registers) and are faster at every size swept: fwd+bwd 197 vs 233 us at
  (256, 32, 2048), 60 vs 65 at (128, 16, 2048), 1889 vs 2627 at (32, 3137, 2048)
  (benchmarks/results/token_conv_h200_sweep_s8.md). Summing dweight per tile into (BLOCK_D,)
  accumulators (02d5ebf, since reverted) was no faster than the 8 x 64 tiles.
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
    """Tile sizes and warps. Tokens per tile: `block_l_fwd` (forward and backward's dx kernel) /
    `block_l_bwd` (backward's g/dweight kernel), capped at L rounded up to a power of two;
    channels per tile `block_d` / `block_d_bwd` (None: `block_d`), capped at d likewise; the
    g/dweight grid is chunked along tokens until it has about `min_programs` programs;
    `blocks_per_chunk` forces the chunk length (tests); `num_stages_bwd` None = Triton's.
    Defaults: the fastest of sweeps on one H200 for b = 128-256, L = 16-32, d = 2048 (module
    docstring): backward 8 x 64 tiles, one warp; the forward's 32 x 128 tiles with 4 warps
    were the fastest at every size."""

    block_l_fwd: int = 32
    block_l_bwd: int = 8
    block_d: int = 128
    block_d_bwd: int | None = 64
    num_warps_fwd: int = 4
    num_warps_bwd: int = 1
    num_stages_bwd: int | None = None
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
    K: tl.constexpr, PAD: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """y_t = act(bias + sum_j w_j x[t + j - PAD]) (b, L, d), one (BLOCK_L, BLOCK_D) tile of one
    row per program. FLIP reads the taps in reverse order (w_{K-1-j}): backward's dx."""
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
        tap = K - 1 - j if FLIP else j
        w = _load_vec(w_ptr + tap * s_wk, d_offs, d_mask, s_wd)
        acc += w[None, :] * _load_tile(x_row, t + (j - PAD), d_offs, d_mask, L, s_xl, s_xd)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = (t < L)[:, None] & d_mask[None, :]
    tl.store(y_ptr + row * s_yb + t[:, None] * s_yl + d_offs[None, :] * s_yd,
             acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_tap(dw_ptr, s_pk, acc, d_offs, d_mask, J: tl.constexpr):
    tl.store(dw_ptr + J * s_pk + d_offs, tl.sum(acc, axis=0), mask=d_mask)


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, bias_ptr, gy_ptr, g_ptr, dw_ptr, db_ptr,
    L, d, n_dblocks, n_chunks, n_lblocks, blocks_per_chunk,
    s_xb, s_xl, s_xd, s_wd, s_wk, s_gb, s_gl, s_gd, s_hb, s_hl, s_hd, s_pc, s_pk,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """g = gy * act'(pre) (b, L, d), written only for SiLU (else g = gy), and the partial sums
    of dweight_j = sum_t g_t x[t + j - PAD] (parts, K, d) and dbias = sum_t g_t (parts, d), one
    part per (row, chunk of token blocks); the program walks its chunk's blocks in order.

    Every sum over tokens is kept elementwise in (BLOCK_L, BLOCK_D) registers through the loop
    and reduced across the tile once at the end (a reduction per tile, across warps, was the
    slow part). Taps 0-3 get one such accumulator each; taps 4..K-1 (K > 4, rare) share a
    (BLOCK_R, BLOCK_L, BLOCK_D) one."""
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    rest = pid // n_dblocks
    chunk = rest % n_chunks
    row = (rest // n_chunks).to(tl.int64)
    part = row * n_chunks + chunk
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d_offs < d
    x_row, gy_row, g_row = x_ptr + row * s_xb, gy_ptr + row * s_gb, g_ptr + row * s_hb
    if HAS_BIAS:
        bias = _load_vec(bias_ptr, d_offs, d_mask, 1)
    acc0 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    rr = tl.arange(0, BLOCK_R)
    acc_r = tl.zeros((BLOCK_R, BLOCK_L, BLOCK_D), dtype=tl.float32)
    first = chunk * blocks_per_chunk
    for blk in range(first, tl.minimum(first + blocks_per_chunk, n_lblocks)):
        t = blk * BLOCK_L + tl.arange(0, BLOCK_L)
        g = _load_tile(gy_row, t, d_offs, d_mask, L, s_gl, s_gd)  # 0 past L
        # taps 0-3's shifted x tiles, loaded once for the pre-activation and dweight (the
        # store of g between them would otherwise make the compiler load them again)
        x0 = _load_tile(x_row, t - PAD, d_offs, d_mask, L, s_xl, s_xd)
        if K > 1:
            x1 = _load_tile(x_row, t + (1 - PAD), d_offs, d_mask, L, s_xl, s_xd)
        if K > 2:
            x2 = _load_tile(x_row, t + (2 - PAD), d_offs, d_mask, L, s_xl, s_xd)
        if K > 3:
            x3 = _load_tile(x_row, t + (3 - PAD), d_offs, d_mask, L, s_xl, s_xd)
        if SILU:  # recompute the pre-activation (x is all that was saved)
            pre = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
            if HAS_BIAS:
                pre += bias[None, :]
            pre += _load_vec(w_ptr, d_offs, d_mask, s_wd)[None, :] * x0
            if K > 1:
                pre += _load_vec(w_ptr + s_wk, d_offs, d_mask, s_wd)[None, :] * x1
            if K > 2:
                pre += _load_vec(w_ptr + 2 * s_wk, d_offs, d_mask, s_wd)[None, :] * x2
            if K > 3:
                pre += _load_vec(w_ptr + 3 * s_wk, d_offs, d_mask, s_wd)[None, :] * x3
            for j in tl.static_range(4, K):
                w_j = _load_vec(w_ptr + j * s_wk, d_offs, d_mask, s_wd)
                pre += w_j[None, :] * _load_tile(x_row, t + (j - PAD), d_offs, d_mask, L,
                                                 s_xl, s_xd)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
            tl.store(g_row + t[:, None] * s_hl + d_offs[None, :] * s_hd,
                     g.to(g_ptr.dtype.element_ty), mask=(t < L)[:, None] & d_mask[None, :])
        db_acc += g
        acc0 += g * x0
        if K > 1:
            acc1 += g * x1
        if K > 2:
            acc2 += g * x2
        if K > 3:
            acc3 += g * x3
        if K > 4:
            pos = t[None, :, None] + rr[:, None, None] + (4 - PAD)  # taps 4 + r
            x_r = tl.load(x_row + pos * s_xl + d_offs[None, None, :] * s_xd,
                          mask=(rr < K - 4)[:, None, None] & (pos >= 0) & (pos < L)
                          & d_mask[None, None, :], other=0.0).to(tl.float32)
            acc_r += g[None, :, :] * x_r
    dw_part = dw_ptr + part * s_pc
    _store_tap(dw_part, s_pk, acc0, d_offs, d_mask, 0)
    if K > 1:
        _store_tap(dw_part, s_pk, acc1, d_offs, d_mask, 1)
    if K > 2:
        _store_tap(dw_part, s_pk, acc2, d_offs, d_mask, 2)
    if K > 3:
        _store_tap(dw_part, s_pk, acc3, d_offs, d_mask, 3)
    if K > 4:
        tl.store(dw_part + (4 + rr[:, None]) * s_pk + d_offs[None, :], tl.sum(acc_r, axis=1),
                 mask=(rr < K - 4)[:, None] & d_mask[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part * d + d_offs, tl.sum(db_acc, axis=0), mask=d_mask)


# ---------------------------------------------------------------------------- autograd


def _tiles(L: int, d: int, block_l: int, block_d: int) -> tuple[int, int]:
    return min(_pow2(block_l), _pow2(L)), min(_pow2(block_d), _pow2(d))


def _pad(k: int, causal: bool) -> int:
    return k - 1 if causal else k // 2


class _TritonTokenConv(torch.autograd.Function):
    """Forward and backward kernels; bias and SiLU fused in both."""

    @staticmethod
    def forward(ctx, x, weight, bias, causal, silu, out_dtype, cfg, needs_grad):
        b, L, d = x.shape
        k = weight.shape[-1]
        y = torch.empty((b, L, d), dtype=out_dtype, device=x.device)
        block_l, block_d = _tiles(L, d, cfg.block_l_fwd, cfg.block_d)
        n_dblocks, n_lblocks = triton.cdiv(d, block_d), triton.cdiv(L, block_l)
        _conv_fwd_kernel[(b * n_lblocks * n_dblocks,)](
            x, weight, x if bias is None else bias, y,
            L, d, n_dblocks, n_lblocks,
            *x.stride(), weight.stride(0), weight.stride(2), *y.stride(),
            K=k, PAD=_pad(k, causal), FLIP=False, HAS_BIAS=bias is not None, SILU=silu,
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
        pad = _pad(k, ctx.causal)
        dev = x.device
        # 1. g = gy * act'(pre) and the dweight/dbias partials, chunked along tokens
        block_l, block_d = _tiles(L, d, cfg.block_l_bwd, cfg.block_d_bwd or cfg.block_d)
        n_dblocks, n_lblocks = triton.cdiv(d, block_d), triton.cdiv(L, block_l)
        per_chunk = cfg.blocks_per_chunk or triton.cdiv(
            n_lblocks, min(n_lblocks, triton.cdiv(cfg.min_programs, b * n_dblocks)))
        n_chunks = triton.cdiv(n_lblocks, per_chunk)
        g = torch.empty((b, L, d), dtype=gy.dtype, device=dev) if ctx.silu else gy
        dw = torch.empty((b * n_chunks, k, d), dtype=torch.float32, device=dev)
        db = (torch.empty((b * n_chunks, d), dtype=torch.float32, device=dev)
              if bias is not None else dw)
        _conv_grad_kernel[(b * n_chunks * n_dblocks,)](
            x, weight, x if bias is None else bias, gy, g, dw, db,
            L, d, n_dblocks, n_chunks, n_lblocks, per_chunk,
            *x.stride(), weight.stride(0), weight.stride(2), *gy.stride(), *g.stride(),
            dw.stride(0), dw.stride(1),
            K=k, PAD=pad, HAS_BIAS=bias is not None, SILU=ctx.silu,
            BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_R=_pow2(max(1, k - 4)),
            num_warps=cfg.num_warps_bwd,
            **({} if cfg.num_stages_bwd is None else {"num_stages": cfg.num_stages_bwd}),
        )
        # 2. dx_t = sum_j w_j g[t + PAD - j]: the forward kernel, taps reversed, PAD' = K-1-PAD
        dx = torch.empty((b, L, d), dtype=x.dtype, device=dev)
        block_l, block_d = _tiles(L, d, cfg.block_l_fwd, cfg.block_d)
        n_dblocks, n_lblocks = triton.cdiv(d, block_d), triton.cdiv(L, block_l)
        _conv_fwd_kernel[(b * n_lblocks * n_dblocks,)](
            g, weight, g, dx,
            L, d, n_dblocks, n_lblocks,
            *g.stride(), weight.stride(0), weight.stride(2), *dx.stride(),
            K=k, PAD=k - 1 - pad, FLIP=True, HAS_BIAS=False, SILU=False,
            BLOCK_L=block_l, BLOCK_D=block_d, num_warps=cfg.num_warps_fwd,
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

"""Partial sums added up on the GPU, deterministically: the last step of the Triton scan's
backward (`fusion.ssm_triton`).

The scan backward writes one partial sum per program (per row of the batch, per block of
channels) instead of using atomics, so its results never depend on the order
programs run in; the partials are then summed over their middle axis here. One launch fills
up to three gradients stacked in one buffer, each cast to its own dtype: in the Mamba head's
compiled EK100 step these sums had been five aten reductions and three casts a scan
backward: 10 of the step's 13 `reduce_kernel` launches, which took 0.15 ms of 3.74 ms
(benchmarks/results/profile_step_h200_compiled_s9_split_linear.md).

Not used by `fusion.conv_triton`: its backward is an autograd.Function that torch.compile
traces, so inductor already fuses its sums; routed through here it was no faster on the
H200 and one compiled training run failed in inductor (issue18_status.md, tenth session).
Imported lazily with the scan (it imports `triton` at the top).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _sum_middle_kernel(x_ptr, y_ptr, y2_ptr, y3_ptr, K, Q, N1, N2,
                       NUM_OUT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """x (P, K, Q), contiguous float32, summed over K into a (P, Q) result whose flat
    elements [0, N1) go to y, [N1, N1 + N2) to y2 and the rest to y3 (NUM_OUT of them),
    each cast to its own dtype: several gradients reduced by one launch. The order of the
    sum is fixed: deterministic, like the aten sums it replaces."""
    p = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < Q
    x_row = x_ptr + p * K * Q
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        tile = tl.load(x_row + k[:, None].to(tl.int64) * Q + q[None, :],
                       mask=(k < K)[:, None] & q_mask[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    f = p * Q + q
    tl.store(y_ptr + f, acc.to(y_ptr.dtype.element_ty), mask=q_mask & (f < N1))
    if NUM_OUT > 1:
        tl.store(y2_ptr + (f - N1), acc.to(y2_ptr.dtype.element_ty),
                 mask=q_mask & (f >= N1) & (f < N1 + N2))
    if NUM_OUT > 2:
        tl.store(y3_ptr + (f - N1 - N2), acc.to(y3_ptr.dtype.element_ty),
                 mask=q_mask & (f >= N1 + N2))


def sum_middle(x: Tensor, *outs: Tensor, tiles: tuple[int, int, int] | None = None) -> None:
    """`outs` (one to three contiguous tensors) = x summed over its middle axis, x a
    contiguous float32 (P, K, Q) whose flattened (P, Q) sum fills them in order, each in
    its own dtype. Tiles from a sweep on the scan's calls in the Mamba head (H200,
    `python benchmarks/partial_sums.py --sweep`): a few long sums (P < 64: the per-row
    gradients) want long K tiles, many short ones (dB, dC) short tiles. `tiles` = (BLOCK_K,
    BLOCK_Q, warps) overrides them (the sweep)."""
    P, K, Q = x.shape
    sizes = [o.numel() for o in outs]
    if not 1 <= len(outs) <= 3 or sum(sizes) != P * Q or any(not o.is_contiguous()
                                                              for o in outs):
        raise ValueError(f"sum_middle: contiguous outputs of {sizes} elements for a "
                         f"{tuple(x.shape)} sum")
    block_k, block_q, warps = tiles or ((64, 32, 4) if P < 64 else (16, 64, 2))
    y2, y3 = (outs + (outs[0],) * 2)[1:3]
    _sum_middle_kernel[(P, triton.cdiv(Q, block_q))](
        x, outs[0], y2, y3, K, Q, sizes[0], sizes[1] if len(sizes) > 1 else 0,
        NUM_OUT=len(outs), BLOCK_K=block_k, BLOCK_Q=block_q, num_warps=warps)

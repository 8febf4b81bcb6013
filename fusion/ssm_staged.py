"""The scan forward on time-contiguous tensors with u and Δ staged in shared memory (Gluon).

Why: on (b, d, L) tensors `fusion.ssm_triton`'s forward gives each lane a channel's 8 steps
a chunk, 16 bytes of a 128-byte line of u and of Δ, and counts on L1 keeping the rest of
the line for the next 7 chunks. Any version with fewer instructions ran more warps an SM,
lost those L1 hits and waited on L2 (Nsight Compute, issue18_status.md, sixteenth and
seventeenth sessions). Plain Triton cannot load a tile in one layout and compute in
another without its own choice of conversions; Gluon (Triton's explicit-layout dialect)
can. Here every 64 steps the program loads its channels' u and Δ as whole lines (8 lanes a
channel's 128 bytes, `staging_layout`) into shared memory, and each 8-step chunk reads its
steps from there, a lane pair a channel, all 8 steps in each lane (a step is a register
pick). The block's B and C go to shared memory too, widened to float32 once for all the
program's channels (a step clamped to the row's length as it is staged); each step then
reads its 16 states from there (two 16-byte reads a lane, the same for every channel),
where each lane had loaded and widened them itself. The states stored for the backward and y
are as in `ssm_triton`'s kernel.

Measured on the H200 against that kernel, same process (`python benchmarks/scan_head_calls.py
--calls head:256 --modules <5ac9a7c copy> <staged copy>`, scan_staged3_*_h200_s17.md): forward
0.40 vs 0.47 ms at L = 256 and 1.56 vs 1.92 at L = 1024; fwd+bwd 2.61 vs 2.68 and 10.32 vs
10.64. B and C in shared memory (nineteenth session, `--calls head:256 head:1024 head:4096
--modules <1af9772 copy> fusion.ssm_triton`, scan_bcsmem_h200_s19b.md): forward 7.06 vs 8.65
ms summed over the three calls, 1.35 vs 1.56 at L = 1024 (scan_bcsmem_h200_s19.md); sm_90
chunk loop 593 -> 476 instructions. Taken only where it applies
(`fusion.ssm_triton.staged_forward`): 16 states, unit time stride and 16-byte aligned rows.
Not under Triton's interpreter (Gluon has none): the CPU tests compile it for sm_90 instead.
"""

from __future__ import annotations

import functools

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

CHUNK = 8
"""A chunk: the steps a lane holds; the staging block is CHUNK chunks (64 steps, a 128-byte
line of bf16)."""
STEPS = gl.constexpr(CHUNK)  # as the kernels see it


@gluon.jit
def _softplus(x):
    """log(1 + e^x), as `fusion.ssm_triton._softplus`."""
    e = gl.exp(-gl.abs(x))
    w = 1.0 + e
    log1p_e = gl.where(w == 1.0, e, gl.log(w) * (e / (w - 1.0)))
    return gl.maximum(x, 0.0) + log1p_e


@gluon.jit
def _f32(x):
    """As float32; bf16 by a shift of its bits (one instruction a value)."""
    if x.dtype == gl.bfloat16:
        return (x.to(gl.uint16, bitcast=True).to(gl.uint32) << 16).to(gl.float32, bitcast=True)
    return x.to(gl.float32)


@gluon.jit
def _channel(v):
    """A (channels,) vector as (channels, 1, 1) in the state tiles' layout."""
    return gl.expand_dims(gl.expand_dims(v, 1), 1)


@gluon.jit
def _pick(tile, steps, k: gl.constexpr):
    """Step k of a (channels, STEPS) tile whose lanes hold all steps: a register pick."""
    return gl.sum(gl.where(gl.expand_dims(steps, 0) == k, tile, 0.0), axis=1)


# as `fusion.ssm_triton._scan_fwd_kernel`'s: strides stay run-time values
_STRIDES = tuple("""
    s_ub s_ud s_ul s_db s_dd s_dl s_ad s_an s_bb s_bl s_cb s_cl s_zb s_zd s_zl
    s_yb s_yd s_yl s_hb s_hd s_hc s_hn
""".split())


@gluon.jit(do_not_specialize=_STRIDES)
def scan_fwd_staged_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, y_ptr, state_ptr,
    L, d, n,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an, s_bb, s_bl, s_cb, s_cl,
    s_zb, s_zd, s_zl, s_yb, s_yd, s_yl, s_hb, s_hd, s_hc, s_hn,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    HAS_LEN: gl.constexpr, STORE_STATES: gl.constexpr, BC_VEC: gl.constexpr,
    VEC: gl.constexpr, CKPT_T: gl.constexpr, WARPS: gl.constexpr, STAGE: gl.constexpr,
):
    """`fusion.ssm_triton._scan_fwd_kernel`'s outputs and arguments (u, Δ, z, y with unit
    time stride, their row and channel strides in VEC elements; 16 states) for 16 x WARPS
    channels a program, STAGE = `staging_layout(WARPS)`."""
    BLOCK_D: gl.constexpr = 16 * WARPS
    # (channels, 2 state groups, 8 states): lane l channel l // 2, group l % 2
    S: gl.constexpr = gl.BlockedLayout([1, 1, 8], [16, 2, 1], [WARPS, 1, 1], [2, 1, 0])
    T: gl.constexpr = gl.SliceLayout(1, S)  # (channels, steps): both lanes of a channel, all steps
    V: gl.constexpr = gl.SliceLayout(1, T)  # (channels,)
    N2: gl.constexpr = gl.SliceLayout(0, S)  # (2, 8): a lane's 8 consecutive states
    SH: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    row = gl.program_id(0).to(gl.int64)
    d0 = gl.program_id(1) * BLOCK_D
    dv = d0 + gl.arange(0, BLOCK_D, layout=V)
    d_mask = dv < d
    steps = gl.arange(0, STEPS, layout=gl.SliceLayout(0, T))
    n_offs = (gl.expand_dims(gl.arange(0, 2, layout=gl.SliceLayout(1, N2)), 1) * 8
              + gl.expand_dims(gl.arange(0, 8, layout=gl.SliceLayout(0, N2)), 0))
    n3 = gl.expand_dims(n_offs, 0)
    d3 = _channel(dv)
    dn_mask = _channel(d_mask) & (n3 < n)
    # padded channels get A = 0 and B = 0 (y masked): their state stays 0; exp(x) = exp2(x log2 e)
    A2 = gl.load(A_ptr + d3 * s_ad + n3 * s_an, mask=dn_mask, other=0.0).to(gl.float32) \
        * 1.4426950408889634
    bias = gl.zeros([BLOCK_D], gl.float32, layout=V)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + dv, mask=d_mask, other=0.0).to(gl.float32)
    if HAS_D:
        Dv = gl.load(D_ptr + dv, mask=d_mask, other=0.0).to(gl.float32)
    length = L
    if HAS_LEN:
        length = gl.minimum(gl.maximum(gl.load(len_ptr + row).to(gl.int32), 0), L)
    u_row, dt_row = u_ptr + row * (s_ub * VEC), delta_ptr + row * (s_db * VEC)
    z_row = z_ptr + row * (s_zb * VEC)
    b_row, c_row = B_ptr + row * (s_bb * BC_VEC), C_ptr + row * (s_cb * BC_VEC)
    y_row = y_ptr + row * (s_yb * VEC)
    # a block: (STEPS chunks x channels, STEPS steps), row = chunk * BLOCK_D + channel, read
    # back a chunk at a time through a (STEPS, channels, STEPS) view of the same bytes
    rows = gl.arange(0, STEPS * BLOCK_D, layout=gl.SliceLayout(1, STAGE))
    stage_d = gl.expand_dims(d0 + rows % BLOCK_D, 1)
    stage_t = (gl.expand_dims((rows // BLOCK_D) * STEPS, 1)
               + gl.expand_dims(gl.arange(0, STEPS, layout=gl.SliceLayout(0, STAGE)), 0))
    u_smem = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [STEPS * BLOCK_D, STEPS], SH)
    dt_smem = gl.allocate_shared_memory(delta_ptr.dtype.element_ty, [STEPS * BLOCK_D, STEPS], SH)
    u_chunks = u_smem._reinterpret(u_ptr.dtype.element_ty, [STEPS, BLOCK_D, STEPS], SH)
    dt_chunks = dt_smem._reinterpret(delta_ptr.dtype.element_ty, [STEPS, BLOCK_D, STEPS], SH)
    # B and C of a block's steps, widened to float32 once for all channels: (steps, 2, 8)
    BCL: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [WARPS, 1], [1, 0])
    bc_t = gl.expand_dims(gl.arange(0, STEPS * STEPS, layout=gl.SliceLayout(1, BCL)), 1)
    bc_n = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(0, BCL)), 0)
    b_smem = gl.allocate_shared_memory(gl.float32, [STEPS * STEPS, 16], SH)
    c_smem = gl.allocate_shared_memory(gl.float32, [STEPS * STEPS, 16], SH)
    b_steps = b_smem._reinterpret(gl.float32, [STEPS * STEPS, 2, 8], SH)
    c_steps = c_smem._reinterpret(gl.float32, [STEPS * STEPS, 2, 8], SH)
    h = gl.zeros([BLOCK_D, 2, 8], gl.float32, layout=S)
    d2 = gl.expand_dims(dv, 1)
    n_chunks = gl.cdiv(length, STEPS)
    for block in range(0, gl.cdiv(length, STEPS * STEPS)):
        tb = block * STEPS * STEPS
        stage_mask = (stage_d < d) & (tb + stage_t < length)
        u_block = gl.load(u_row + stage_d * (s_ud * VEC) + tb + stage_t, mask=stage_mask,
                          other=0.0)
        dt_block = gl.load(dt_row + stage_d * (s_dd * VEC) + tb + stage_t, mask=stage_mask,
                           other=0.0)
        bt = gl.minimum(tb + bc_t, length - 1)  # past the length Δ is 0 (ssm_triton)
        b_block = _f32(gl.load(b_row + bt * (s_bl * BC_VEC) + bc_n))
        c_block = _f32(gl.load(c_row + bt * (s_cl * BC_VEC) + bc_n))
        gl.thread_barrier()  # the last block's chunks have read theirs
        u_smem.store(u_block)
        dt_smem.store(dt_block)
        b_smem.store(b_block)
        c_smem.store(c_block)
        gl.thread_barrier()
        for c in range(0, gl.minimum(STEPS, n_chunks - block * STEPS)):
            t0 = tb + c * STEPS
            t_offs = t0 + steps
            mask = gl.expand_dims(d_mask, 1) & gl.expand_dims(t_offs < length, 0)
            u = _f32(u_chunks.index(c).load(T))
            dt = _f32(dt_chunks.index(c).load(T))
            if HAS_BIAS:
                dt += gl.expand_dims(bias, 1)
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = gl.where(mask, dt, 0.0)  # steps past the length: exp(0) = 1, no input
            dtu = dt * u
            y = gl.zeros([BLOCK_D, STEPS], gl.float32, layout=T)
            for k in gl.static_range(STEPS):
                if STORE_STATES and k % CKPT_T == 0:
                    at = dn_mask & (t0 + k < length)
                    if CKPT_T > STEPS:  # one chunk in CKPT_T / STEPS stores, at its start
                        at = at & (t0 % CKPT_T == 0)
                    gl.store(state_ptr + row * s_hb + d3 * s_hd + ((t0 + k) // CKPT_T) * s_hc
                             + n3 * s_hn, h, mask=at)
                Bt = b_steps.index(c * STEPS + k).load(N2)
                Ct = c_steps.index(c * STEPS + k).load(N2)
                dt_k = _channel(_pick(dt, steps, k))
                dtu_k = _channel(_pick(dtu, steps, k))
                h = gl.exp2(dt_k * A2) * h + dtu_k * gl.expand_dims(Bt, 0)
                y_k = gl.sum(gl.sum(h * gl.expand_dims(Ct, 0), axis=2), axis=1)
                y = gl.where(gl.expand_dims(steps, 0) == k,
                             gl.expand_dims(gl.convert_layout(y_k, V), 1), y)
            if HAS_D:
                y += gl.expand_dims(Dv, 1) * u
            if HAS_Z:
                zt = gl.load(z_row + d2 * (s_zd * VEC) + gl.expand_dims(t_offs, 0), mask=mask,
                             other=0.0).to(gl.float32)
                y = y * zt / (1.0 + gl.exp(-zt))
            gl.store(y_row + d2 * (s_yd * VEC) + gl.expand_dims(t_offs, 0),
                     y.to(y_ptr.dtype.element_ty), mask=mask)
    if HAS_LEN:  # y = 0 past the length, written here: no memset of y before the launch
        zeros = gl.zeros([BLOCK_D, STEPS], y_ptr.dtype.element_ty, layout=T)
        for t0 in range((length // STEPS) * STEPS, L, STEPS):
            t_offs = t0 + steps
            tail = gl.expand_dims(d_mask, 1) & gl.expand_dims((t_offs >= length) & (t_offs < L), 0)
            gl.store(y_row + d2 * (s_yd * VEC) + gl.expand_dims(t_offs, 0), zeros, mask=tail)


@functools.cache  # built once: a launch's key hashes it, its construction cost 15 us
def staging_layout(warps: int) -> gl.DistributedLinearLayout:
    """The layout of a staged block, (STEPS chunks x 16 warps channels, STEPS steps) with
    row = chunk * channels + channel: a lane's STEPS steps in registers (16 bytes in bf16);
    lane bits: 3 for the chunk, 2 for the channel, so 8 lanes read one channel's 128 bytes
    and a warp access 4 whole lines; warps and then registers the other channel bits."""
    block_d = 16 * warps
    chunk = [[block_d << i, 0] for i in range(3)]
    channel = [[1 << i, 0] for i in range(block_d.bit_length() - 1)]
    warp_bits = warps.bit_length() - 1
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [0, 4]] + channel[2 + warp_bits:],
        lane_bases=chunk + channel[:2], warp_bases=channel[2:2 + warp_bits], block_bases=[],
        shape=[CHUNK * block_d, CHUNK])

"""The `triton` backend of `fusion.ssm.selective_scan`: a fused selective scan in Triton.

Imported lazily by `fusion.ssm` (only when the backend is asked for): this module imports
`triton` at the top, and CPU machines without Triton never load it.

    y = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, lengths)

Same shapes and recurrence as `fusion.ssm` (read its docstring), plus `lengths`: an optional
(batch,) integer tensor. Row i is scanned over its first `lengths[i]` steps only; steps
t >= lengths[i] give y = 0, receive no gradient and cost no scan work. That is what lets the
Mamba head stack modalities of different lengths (16 video tokens, 2 x 32 question tokens)
along the batch axis and scan them in ONE launch with their shared `A`, padding included at no
cost and never changing a result.

Why the kernels look the way they do
------------------------------------
* One program per (row, block of BLOCK_D channels); channels lie across the lanes and each
  thread walks its channel's steps in order (time never crosses lanes, so no scan needs
  shuffles). Tiles are shaped (channels, steps) and (channels, states) and the strides stay
  run-time values: Triton then puts channels on the lanes and steps and states in the thread
  (with 16 channels a warp, two lanes share a channel's 16 states, interleaved; with 32,
  each lane holds one channel's states and its chunk of steps). A chunk of BLOCK_T steps
  is loaded as one tile; the chunk's loop is unrolled, so picking step k of a tile is a
  register pick (`_col`, `_put`) when the steps lie in the thread.
* Layout: any strides, except that B and C's states are contiguous (the kernels take their
  state stride as 1; `selective_scan_triton` copies (b, n, L) tensors, d / n times smaller
  than u, to that layout). The Mamba head passes transposed views of its (b, L, ·)
  projections (channels contiguous: each step's loads across the lanes are coalesced), and
  outputs and gradients are allocated in u's layout (`_like`), so nothing is copied on
  either side. Strides the compiler cannot see make every access a 2-byte one, so two are
  given in vector units when the tensors allow it: B and C's row and step strides in 16
  bytes (`_bc_vec`: a lane's 16 states one load, with 32 channels a program), and u, Δ,
  z, y's with a unit time stride (`_time_vec`: a lane's steps one load; forward only, the
  backward's 4-step tiles got slower so). The forward's tile follows: 32 channels, or 16
  on time-contiguous tensors (`scan_config`).
* Everything elementwise around the scan is fused: Δ + delta_bias, softplus, the D skip, the
  silu(z) gate, and in backward their derivatives; inputs are read in their own dtype and
  computed in float32; exp is exp2 with A pre-scaled by log2(e).
* Forward writes y and, when a gradient is needed, the state entering every CKPT_T steps
  (b, d, L / CKPT_T, n) in float32, channels contiguous in memory (`_new_states`). Backward
  walks chunks of BLOCK_T_BWD steps from last to first (shorter than the forward's BLOCK_T:
  fewer registers), recomputes the chunk's states from the last stored state into registers
  (a tuple of states; first running up the steps between, `_advance`), then runs the adjoint
  g_t = C_t gy'_t + exp(Δ_{t+1} A) g_{t+1} backwards. Its (channels, states) tiles are
  (channels, BLOCK_N / 8, 8): a thread's states are then 8 consecutive ones and B_t, C_t
  one vector load each, where a 2-D tile put a channel's states on two lanes interleaved
  (n = lane + 2 j) and loaded each state on its own (sm_90: 52 loads instead of 190).
  From L = 256 (`CKPT_LONG_L`) a state every 8 steps rather than every 4 (one backward
  chunk): forward at L = 256 / 1024 on (b, d, L) tensors 0.47 / 1.90 ms against 0.64 /
  2.57, fwd+bwd within +-3 % (H200, scan_ckpt_h200_s14b.md), and half the memory kept for
  the backward (16 vs 32 bytes a channel and step with n = 16).
* dB and dC are sums over channels: each program writes its block's partial sums
  (b, d / BLOCK_D, n, L), states contiguous in memory (deterministic, no atomics). Over a
  warp's 16 channel lanes a step's sums are PTX (`_sum_channels`, `lane_sums`): each
  shuffle round halves what a lane holds, 8 shuffles a sum where Triton's butterfly per
  state takes 32 (sm_90 chunk loop 1758 -> 1442 instructions; H200 fwd+bwd on (b, d, L)
  tensors at L = 256 2.79 vs 3.23 ms, scan_lanesums_head256_h200_s16.md). The PTX assumes
  the lanes Triton gave that tile; `check_lane_layout` verifies them (what each lane and
  register holds, however the layout is written) in each compiled backward and refuses any
  other (`ScanConfig(lane_sums=False)` turns the PTX off). A, D
  and delta_bias gradients are summed over time in registers, one partial a row.
  `fusion.partial_sums` adds the partials up, one launch for dB and dC, one for the per-row
  three.
* Measured on the H200 against mamba-ssm (benchmarks/results/scan_backends_h200_s16d.md;
  L <= 64 host-bound): in the head's layout (transposed views, mamba-ssm copying them as it
  does) fwd+bwd 0.33x / 0.24x / 0.37x / 0.42x / 0.36x at L = 16 / 64 / 256 / 1024 / 4096,
  forward 0.18x to 0.27x; on (b, d, L) tensors fwd+bwd 0.41x / 0.43x / 0.53x / 0.62x / 0.52x,
  forward 0.40x / 0.33x / 0.61x / 0.64x / 0.51x. Layouts matter more than
  instruction counts here: Nsight Compute found both kernels bound by L2 sectors from
  uncoalesced accesses (issue18_status.md, twelfth session), hence the checkpoint and
  partial-sum layouts above, and B, C copied to states-contiguous when they are not. The
  backward is now the larger part: its per-step sums of dB and dC over channels were 64 of
  its ~70 shuffles a step (sm_90 SASS, `benchmarks/scan_sass.py`), 16 since they are PTX.
  Nsight Compute on the head's EK100 calls (benchmarks/results/ncu_scan_h200.txt, kernels
  of that time): the backward at 255 registers a thread, 12.5 % occupancy, spilling, 34 %
  of issue slots busy: latency-bound by registers. Since then: B and C's state stride
  compiled as 1 when it is (`_states_unit`: 72 bytes of spill instead of 664 in the sm_90
  compile of benchmarks/scan_sass.py), and backward chunks of 4 steps capped at 168
  registers (`backward_maxnreg`: 12 warps an SM), forward chunks of 8 storing a state
  every 4 steps: the head's two scan calls 2.34 ms vs 2.73 ms in one run
  (benchmarks/results/scan_head_calls_h200_gluon_default.md; 2.31 and 2.66 in a repeat,
  scan_head_calls_h200_ab.md).
* On (b, d, L) tensors, the forward from `fusion.ssm_staged` (Gluon), which stages u and Δ
  through shared memory as whole lines instead of counting on L1 to keep each line for 8
  chunks: 0.40 vs 0.47 ms at L = 256 and 1.56 vs 1.92 at 1024 on the H200
  (scan_staged3_*_h200_s17.md). By default on the Triton it was written for
  (`ScanConfig.staged_fwd`, `GLUON_READY`), where it applies (`staged_forward`), except on
  calls with per-row lengths, where it was slower (`STAGED_DEFAULT`).
* The two launches are `torch.library` operators (`fusion::scan_fwd`, `fusion::scan_bwd`)
  with exact-stride layout constraints, so `torch.compile` runs them as they are (below);
  eager calls run the same functions through a plain autograd.Function (`_EagerScan`),
  without the operators' dispatch and its host time.
* Overflow: with Δ >= 0 (softplus, or the head's softplus'd Δ) and A <= 0 every factor
  exp(Δ A) is <= 1, so the chunk products P and the states stay bounded by the inputs; a
  negative Δ makes the recurrence grow like exp(|Δ A| L) on every backend alike.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from fusion.backends import triton_interpreted
from fusion.partial_sums import sum_middle

LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes, warps and the backward's register cap. `None` = the heuristic in
    `scan_config`. `block_t` is the forward's chunk; the forward stores the state every
    `block_t_bwd` steps (a divisor: powers of two), the chunk the backward walks."""

    block_t: int | None = None
    block_d_fwd: int | None = None
    block_d_bwd: int | None = None
    num_warps_fwd: int | None = None
    num_warps_bwd: int | None = None
    block_t_bwd: int | None = None
    maxnreg_bwd: int | None = None
    """Register cap of the backward (ptxas); None: `backward_maxnreg`'s choice."""
    maxnreg_fwd: int | None = None
    """Register cap of the forward (ptxas); None: Triton's choice."""
    ckpt_t: int | None = None
    """Steps between the states the forward stores (a multiple of `block_t_bwd`, to which a
    smaller value is raised, as `block_t_bwd` is capped at `block_t`); None: 8 from
    L = `CKPT_LONG_L` (at most the forward's chunk), else `block_t_bwd`. Longer: fewer bytes
    written, read and kept for the backward, whose chunks after the first of an interval
    recompute the states from its start."""
    lane_sums: bool = True
    """The backward's dB / dC sums over channels by PTX (`_sum_channels`) where its tile
    allows (`lane_sums`); False: `tl.sum` (an A/B, or a Triton whose tile layout
    `check_lane_layout` refuses)."""
    staged_fwd: bool | None = None
    """The forward with u and Δ staged in shared memory (`fusion.ssm_staged`, Gluon) where
    it applies (`staged_forward`). None: so on calls without per-row lengths (with them it
    was slower) where this Triton is the one it was written and tested for (`GLUON_READY`),
    else the Triton forward, whose results it matches; True: also with lengths and on another
    Triton, with a one-line error at the call on one without Gluon; False: never."""


CKPT_LONG_L = 256
"""From this length the forward stores a state every 8 steps by default, below it every
backward chunk. On the H200 every 8 was faster forward and within +-3 % fwd+bwd at L = 256 and
1024; on the head's 16- and 32-step EK100 calls fwd+bwd read higher in each of three
comparisons (host-noise-bound: scan_head_calls_h200_s14*.md), and a graphed epoch took 1.882 s
against 1.823 for every 4 steps (two calls, not side by side: train_epoch_h200_s14*.md)."""

DEFAULT_CONFIG = ScanConfig()
"""Used when `selective_scan_triton` gets no `config`; replace it to retune (benchmarks)."""


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def scan_config(L: int, d: int, n: int, config: ScanConfig | None = None,
                time_unit: bool = False) -> dict[str, int]:
    """Concrete tile sizes, warps and register cap (fields of `config` that are set win).

    BLOCK_N = n rounded up to a power of two; forward chunks of BLOCK_T = 8 steps (fewer
    for shorter sequences); backward chunks of BLOCK_T_BWD = 4 (register cap:
    `backward_maxnreg`); a state stored every CKPT_T = 8 steps from L = `CKPT_LONG_L`,
    every BLOCK_T_BWD below (module docstring). The
    layout follows from the tile shapes (module docstring): with BLOCK_D = 32 x warps every
    thread owns one channel and all its states; with 16 channels and one warp, two lanes
    share a channel's states (half the registers, one shuffle in each sum over states).
    Backward: 16 channels and one warp. Forward: 32 channels (a lane a channel: its states
    are one vector load, its steps a register pick), or 16 when `time_unit` (u, Δ, z with
    unit time stride, `_time_vec`), a warp; programs of 4 warps, or 2 on such tensors (fewer
    when d is small). On the H200, forward at L = 1024 (thirteenth session,
    issue18_status.md): channels-last views 2.01 ms with 32 vs 3.24 with 16; (b, d, L)
    tensors 2.75 ms with 16 vs 3.10 with 32; then with 4 and 2 warps 1.82 and 2.57 ms, and on
    the head's EK100 calls 0.42 vs 0.59 ms (fourteenth session, scan_ckpt_h200_s14.md,
    scan_head_calls_h200_s14.md). Backward chunks of 4 capped at 168 registers,
    forward chunks of 8: on the Mamba head's EK100 calls, fwd+bwd 2.34 ms vs 2.73 ms for
    chunks of 8 both ways at 255 registers, one run (issue18_status.md).
    """
    config = config or DEFAULT_CONFIG
    block_n = _pow2(n)
    # a chunk's steps are unrolled: 64 took minutes to compile, so at most 32
    block_t = min(32, _pow2(config.block_t)) if config.block_t else min(8, _pow2(L))
    block_t_bwd = min(block_t, _pow2(config.block_t_bwd) if config.block_t_bwd else 4)
    default_ckpt = min(8, block_t) if L >= CKPT_LONG_L else block_t_bwd
    ckpt_t = max(block_t_bwd, _pow2(config.ckpt_t) if config.ckpt_t else default_ckpt)
    lanes = 16 if time_unit else 32  # a forward warp's channels
    warps_fwd = config.num_warps_fwd or max(1, min(2 if time_unit else 4, _pow2(d) // lanes))
    warps_bwd = config.num_warps_bwd or 1

    def block_d(given: int | None, default: int) -> int:
        return _pow2(given) if given else max(1, min(_pow2(d), default))

    staged = ((STAGED_DEFAULT if GLUON_READY else 0) if config.staged_fwd is None
              else STAGED_ASKED * config.staged_fwd)
    return {"BLOCK_N": block_n, "BLOCK_T": block_t, "BLOCK_T_BWD": block_t_bwd, "CKPT_T": ckpt_t,
            "BLOCK_D_FWD": block_d(config.block_d_fwd, lanes * warps_fwd),
            "BLOCK_D_BWD": block_d(config.block_d_bwd, 16 * warps_bwd),
            "WARPS_FWD": warps_fwd, "WARPS_BWD": warps_bwd,
            "MAXNREG_BWD": config.maxnreg_bwd, "MAXNREG_FWD": config.maxnreg_fwd,
            "LANE_SUMS": int(config.lane_sums), "STAGED_FWD": staged}


BACKWARD_MAXNREG = 168
"""The backward's default register cap: 12 one-warp programs an SM instead of 8, with 80
bytes of spill (sm_90 compile). It holds because B and C's states are contiguous (the
kernels' only B/C layout, `_states_unit`): with strided states the same cap spilled 632
bytes a thread and the backward ran about 3x slower (H200, before such B and C were
copied)."""


def backward_maxnreg(cfg: dict) -> int:
    """The register cap a backward launch passes: the config's, else `BACKWARD_MAXNREG`."""
    return cfg["MAXNREG_BWD"] or BACKWARD_MAXNREG


def _compiled_for_nvidia() -> bool:
    """Kernels compiled for an NVIDIA GPU: what inline PTX (`lane_sums`) and Gluon
    (`staged_forward`) need; not under Triton's interpreter, not on ROCm."""
    return not triton_interpreted() and torch.version.hip is None


GLUON_TRITON = "3.6."
"""The Triton release whose Gluon `fusion.ssm_staged` is written for and was tested with."""


def gluon_ready() -> bool:
    """Whether the default config takes the staged forward (`GLUON_READY`): this Triton is
    `GLUON_TRITON` and has Gluon. Gluon is experimental and changes between releases, so on
    another one the forward stays Triton's unless `ScanConfig(staged_fwd=True)` asks for it."""
    try:
        found = importlib.util.find_spec("triton.experimental.gluon") is not None
    except ImportError:  # no triton.experimental either, or one that fails to import
        found = False
    return found and triton.__version__.startswith(GLUON_TRITON)


GLUON_READY = gluon_ready()
"""`gluon_ready()` at import: `scan_config` runs inside `torch.compile`d code, where a module
lookup would not trace."""


STAGED_ASKED, STAGED_DEFAULT = 1, 2
"""`scan_config`'s "STAGED_FWD": 0 never, 1 asked for (`ScanConfig.staged_fwd=True`), 2 the
default where Gluon is ready: not with per-row lengths, where it was slower on the H200
(fwd 0.89 vs 0.58 ms at L = 256, 3.25 vs 2.30 at 1024; scan_len_h200_s18.md)."""


def staged_forward(cfg: dict, time_vec: int, n: int, ragged: bool) -> bool:
    """Whether the forward runs `fusion.ssm_staged`'s kernel: asked for, or by default on
    calls without per-row lengths (`STAGED_DEFAULT`); on time-contiguous tensors whose rows
    and channels start on 16 bytes (`_time_vec` 8), with 16 states, one warp per 16
    channels, compiled for NVIDIA GPUs (Gluon has no interpreter). Elsewhere the Triton
    forward runs, as without it."""
    wanted = cfg["STAGED_FWD"] == STAGED_ASKED or (cfg["STAGED_FWD"] == STAGED_DEFAULT
                                                    and not ragged)
    return (wanted and time_vec == 8 and n == 16 and cfg["BLOCK_N"] == 16
            and cfg["BLOCK_D_FWD"] == 16 * cfg["WARPS_FWD"] and _compiled_for_nvidia())


def lane_sums(cfg: dict) -> bool:
    """Whether the backward sums dB and dC over channels with `_sum_channels` (PTX shuffles:
    compiled for NVIDIA GPUs, not interpreted) rather than `tl.sum`: for its one-warp tile of
    16 channels and 16 states, whose lanes it assumes (`_lane_sum_asm`), unless the config
    turns it off (`ScanConfig.lane_sums`)."""
    return (bool(cfg["LANE_SUMS"]) and _compiled_for_nvidia()
            and cfg["BLOCK_N"] == 16 and cfg["BLOCK_D_BWD"] == 16 and cfg["WARPS_BWD"] == 1)


LANE_TILE = (16, 2, 8)
"""The (channels, state groups, states) tile `_sum_channels` gets. Its PTX assumes lane l holds
channel l % 16 and state group l // 16, its 8 registers states 0..7 in order (`_lane_map`)."""

_lanes_checked: set[int] = set()  # compiled backward kernels whose tiles passed


def _lane_map(layout: str, shape: tuple[int, ...]) -> list[list[tuple[int, ...]]] | None:
    """The element each register of each lane holds in a one-warp `#ttg.blocked` layout of
    `shape` (None for any other layout): registers run over sizePerThread, then the
    repetitions of the lane tile, each dimension in `order`, as Triton numbers them."""
    fields = {key: [int(x) for x in value.split(",")]
              for key, value in re.findall(r"(\w+) = \[([\d, ]+)\]", layout)}
    keys = ("sizePerThread", "threadsPerWarp", "warpsPerCTA", "order")
    if (not layout.startswith("#ttg.blocked") or any(k not in fields for k in keys)
            or any(len(fields[k]) != len(shape) for k in keys)
            or set(fields["warpsPerCTA"]) != {1}):
        return None
    spt, tpw, order = fields["sizePerThread"], fields["threadsPerWarp"], fields["order"]
    reps = [max(1, size // (a * b)) for size, a, b in zip(shape, spt, tpw, strict=True)]

    def digits(value: int, radix: list[int]) -> list[int]:  # mixed radix, `order` fastest
        out = [0] * len(shape)
        for i in order:
            value, out[i] = divmod(value, radix[i])
        return out

    lanes = []
    for lane in range(32):
        at = digits(lane, tpw)
        lanes.append([tuple((rep[i] * tpw[i] + at[i]) * spt[i] % shape[i] + elem[i]
                            for i in range(len(shape)))
                      for r in range(math.prod(spt) * math.prod(reps))
                      for elem, rep in [(digits(r % math.prod(spt), spt),
                                         digits(r // math.prod(spt), reps))]])
    return lanes


def check_lane_layout(ttgir: str) -> None:
    """Raise unless every tile handed to `_sum_channels` in this compiled backward (its
    TTGIR) puts its elements on the lanes and registers `LANE_TILE`'s PTX assumes: it would
    otherwise sum the wrong values, silently. Triton picks the layout (its text varies with
    the loads around the tile); this pins what it means, per compile."""
    layouts = dict(re.findall(r"^(#[\w.]+) = (.*)$", ttgir, re.M))
    tiles = re.findall(r"tt\.elementwise_inline_asm .*: (tensor<[^>]*>) ->", ttgir)
    found = {tile: layouts.get(tile.rsplit(", ", 1)[-1].rstrip(">"), "?") for tile in tiles}
    want = [[(lane % 16, lane // 16, j) for j in range(8)] for lane in range(32)]
    if not found or any(not tile.startswith("tensor<16x2x8xf32,") or _lane_map(layout, LANE_TILE)
                        != want for tile, layout in found.items()):
        raise RuntimeError(
            f"fusion.ssm_triton: Triton {triton.__version__} laid out the scan backward's "
            f"channel sums as {found or 'nothing found'}, not on the lanes their PTX assumes "
            f"(lane l: channel l % 16, states 8 (l // 16) .. + 7 in order); pass "
            f"config=ScanConfig(lane_sums=False) and report it")


# ---------------------------------------------------------------------------- kernels


# Strides stay run-time values: a stride specialised to 1 would make Triton lay the time (or
# state) axis across the lanes for coalescing, the layout these kernels exist to avoid (seen
# for the checkpoint's state stride in an sm_90 compile). B and C's state stride is the one
# exception: it is always 1 (`_states_unit`), which leaves the layout alone.
_FWD_STRIDES = tuple("""
    s_ub s_ud s_ul s_db s_dd s_dl s_ad s_an s_bb s_bl s_cb s_cl s_zb s_zd s_zl
    s_yb s_yd s_yl s_hb s_hd s_hc s_hn
""".split())
_BWD_STRIDES = tuple("""
    s_ub s_ud s_ul s_db s_dd s_dl s_ad s_an s_bb s_bl s_cb s_cl s_zb s_zd s_zl
    s_gb s_gd s_gl s_hb s_hd s_hc s_hn s_ob s_od s_ol s_pb s_pk s_pn s_pl s_ab s_ad2
    s_an2 s_rb
""".split())


@triton.jit
def _col(tile, t_loc, k: tl.constexpr):
    """Column k (a compile-time step) of a (BLOCK_D, BLOCK_T) tile: a register pick when the
    time axis is inside the thread (the selects fold away)."""
    return tl.sum(tl.where(t_loc[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _put(tile, t_loc, k: tl.constexpr, col):
    """`tile` with column k replaced by `col` (BLOCK_D,)."""
    return tl.where(t_loc[None, :] == k, col[:, None], tile)


@triton.jit
def _softplus(x):
    """log(1 + e^x) in float32, accurate for large |x| (log1p written out: Kahan's trick)."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.maximum(x, 0.0) + log1p_e


@triton.jit
def _delta(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ of a (BLOCK_D, BLOCK_T) tile of raw Δ: + delta_bias, softplus (as flagged). The
    backward keeps raw + bias apart for softplus' derivative, so it writes these out."""
    dt = raw
    if HAS_BIAS:
        dt += bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    return dt


@triton.jit
def _update(h, dt, dtu, t_loc, k: tl.constexpr, A2, Bt, SPLIT: tl.constexpr):
    """The state after step k of a chunk: h_k = exp(Δ_k A) h_{k-1} + Δ_k u_k B_k. h is a
    (channels, states) tile, or with SPLIT a (channels, BLOCK_N / NL, NL) one (the
    backward's). The two orders of operations are the ones timed (a change of order alone
    made the forward 7 % slower on (b, d, L) tensors, scan_bwd3d_h200_s15.md)."""
    if SPLIT:
        dt_k = _col(dt, t_loc, k)[:, None, None]
        dtu_k = _col(dtu, t_loc, k)[:, None, None]
        h_k = tl.exp2(dt_k * A2) * h + dtu_k * Bt[None]
    else:
        h_k = (tl.exp2(_col(dt, t_loc, k)[:, None] * A2) * h
               + _col(dtu, t_loc, k)[:, None] * Bt[None, :])
    return h_k


@triton.jit
def _sum_states(x):
    """Sum of a (channels, BLOCK_N / NL, NL) tile over its states."""
    return tl.sum(tl.sum(x, axis=2), axis=1)


def _lane_sum_asm() -> str:
    """PTX summing a (16 channels, 2, 8 states) tile over its channels (`_sum_channels`).
    Lane l holds channel l % 16's 8 states of group l // 16 (the backward's layout, checked
    in its sm_90 compile by tests/benchmarks/test_scan_sass.py; the PTX itself is run lane by
    lane in tests/fusion/test_ssm_triton.py). Three rounds exchange half of what a lane holds
    with the lane whose channel differs in bit 3, 2, 1 (4, 2, 1 shuffles, a select each
    side) and a last one adds lane pairs: 8 shuffles where a butterfly per state takes 32.
    The lane ends with state 4 b3 + 2 b2 + b1 of its group, summed over the 16 channels
    (b = its channel's bits; `_lane_state`); all 8 outputs are that sum."""
    lines = ["{", ".reg .pred p<3>;", ".reg .b32 ln, t, s<4>, k<4>;", "mov.u32 ln, %laneid;"]
    vals = [f"${8 + j}" for j in range(8)]  # $0-$7 the outputs, $8-$15 the 8 states
    for r, lane_xor in enumerate((8, 4, 2)):
        half = len(vals) // 2  # a lane with the bit set keeps the upper half, sends the lower
        lines += [f"and.b32 t, ln, {lane_xor};", f"setp.ne.b32 p{r}, t, 0;"]
        for i in range(half):
            lo, hi = vals[i], vals[i + half]
            lines += [f"selp.b32 s{i}, {lo}, {hi}, p{r};", f"selp.b32 k{i}, {hi}, {lo}, p{r};",
                      f"shfl.sync.bfly.b32 s{i}, s{i}, {lane_xor}, 0x1f, 0xffffffff;",
                      f"add.f32 k{i}, k{i}, s{i};"]
        vals = [f"k{i}" for i in range(half)]
    lines += ["shfl.sync.bfly.b32 s0, k0, 1, 0x1f, 0xffffffff;", "add.f32 $0, k0, s0;"]
    lines += [f"mov.b32 ${i}, $0;" for i in range(1, 8)]
    return "\n".join(lines + ["}"])


_LANE_SUM_ASM = tl.constexpr(_lane_sum_asm())
_LANE_SUM_CONSTRAINTS = tl.constexpr("=r," * 8 + ",".join(["r"] * 8))  # 8 outputs, 8 inputs


@triton.jit
def _sum_channels(x, NL: tl.constexpr):
    """Sum over channels of the backward's (16, 2, NL = 8) tile, one value a lane
    (`_lane_sum_asm`): a (16, 2) tile of which lanes `_lane_state` says hold which state."""
    sums = tl.inline_asm_elementwise(_LANE_SUM_ASM, _LANE_SUM_CONSTRAINTS, [x],
                                     dtype=tl.float32, is_pure=True, pack=8)
    first = tl.arange(0, NL)[None, None, :] == 0
    return tl.sum(tl.where(first, sums, -0.0), axis=2)  # a register pick: x + -0.0 is x


@triton.jit
def _lane_state():
    """The state whose channel sum each lane of `_sum_channels`'s (16, 2) result holds, and
    whether that lane stores it (one of the two lanes holding each)."""
    ch = tl.arange(0, 16)[:, None]
    state = tl.arange(0, 2)[None, :] * 8 + (ch >> 3 & 1) * 4 + (ch >> 2 & 1) * 2 + (ch >> 1 & 1)
    return state, (ch & 1) == 0


@triton.jit
def _store_sum(ptr, x, s_pn, n_offs, n, t_ok, LANE_SUMS: tl.constexpr, NL: tl.constexpr):
    """Store the sum over channels of a (channels, BLOCK_N / NL, NL) tile at ptr + state *
    s_pn (a step's dB or dC partial), through `_sum_channels` when LANE_SUMS."""
    if LANE_SUMS:
        state, leader = _lane_state()
        tl.store(ptr + state * s_pn, _sum_channels(x, NL), mask=leader & (state < n) & t_ok)
    else:
        tl.store(ptr + n_offs * s_pn, tl.sum(x, axis=0), mask=(n_offs < n) & t_ok)


@triton.jit
def _dt_offs(d_offs, t_offs, s_d, s_l, VEC: tl.constexpr, TIME_UNIT: tl.constexpr):
    """Offsets of a (BLOCK_D, BLOCK_T) tile of a (d, L) slice; s_d counts VEC elements.
    TIME_UNIT: the time stride is 1, known when compiling, so each thread's steps are one
    vector access (`_time_vec`)."""
    if TIME_UNIT:
        return d_offs[:, None] * (s_d * VEC) + t_offs[None, :]
    return d_offs[:, None] * (s_d * VEC) + t_offs[None, :] * s_l


@triton.jit
def _f32(x, PLAIN: tl.constexpr):
    """x as float32; bf16 by a shift of its bits (one instruction a value, where the
    conversion took two for the upper half of each loaded 32-bit pair on sm_90), unless
    PLAIN: by `.to`, as the forward on time-contiguous tensors was timed (its docstring)."""
    if x.dtype == tl.bfloat16 and not PLAIN:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def _load_dt(ptr, d_offs, t_offs, s_d, s_l, mask, VEC: tl.constexpr, TIME_UNIT: tl.constexpr):
    """A (BLOCK_D, BLOCK_T) tile of a (d, L) slice as float32, 0 where masked (`_f32`; by
    `.to` on TIME_UNIT tiles, as the forward there was timed)."""
    return _f32(tl.load(ptr + _dt_offs(d_offs, t_offs, s_d, s_l, VEC, TIME_UNIT), mask=mask,
                        other=0.0), TIME_UNIT)


@triton.jit
def _load_bc(row_ptr, n_offs, t, s_l, VEC: tl.constexpr, mask, EVEN_N: tl.constexpr,
             PLAIN: tl.constexpr = False):
    """B_t or C_t at the states `n_offs` ((BLOCK_N,), or the backward's (BLOCK_N / NL, NL))
    as float32. Step stride in units of VEC elements (16 bytes, `_bc_vec`), so each thread's
    consecutive states are one vector load, not one load a state. t must be a step of the
    row (callers clamp steps past its length to its last: their Δ is 0, so B and C there
    only need to be finite) or masked out by `mask`; with EVEN_N (n = BLOCK_N and no
    other mask) the load has none at all: no zeroing of the registers before each load, no
    predicate a step. PLAIN: converted by `.to` (`_f32`)."""
    ptr = row_ptr + t * (s_l * VEC) + n_offs
    if EVEN_N:
        return _f32(tl.load(ptr), PLAIN)
    return _f32(tl.load(ptr, mask=mask, other=0.0), PLAIN)


@triton.jit
def _bc_at(row_ptr, n_offs, t0, k: tl.constexpr, length, s_l, VEC: tl.constexpr, mask,
           EVEN_N: tl.constexpr, BC_STEP: tl.constexpr):
    """B_t or C_t at step t0 + k of a chunk: with BC_STEP (`_bc_step`) the step is an
    immediate offset from the chunk's first; else clamped to the row's length (`_load_bc`)."""
    if BC_STEP > 0:
        return _f32(tl.load(row_ptr + t0 * BC_STEP + n_offs + k * BC_STEP), False)
    return _load_bc(row_ptr, n_offs, tl.minimum(t0 + k, length - 1), s_l, VEC, mask, EVEN_N)


@triton.jit(do_not_specialize=_FWD_STRIDES)
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, y_ptr, state_ptr,
    L, d, n,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an, s_bb, s_bl, s_cb, s_cl,
    s_zb, s_zd, s_zl, s_yb, s_yd, s_yl, s_hb, s_hd, s_hc, s_hn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LEN: tl.constexpr, STORE_STATES: tl.constexpr, BC_VEC: tl.constexpr,
    VEC: tl.constexpr, TIME_UNIT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, CKPT_T: tl.constexpr,
    EVEN_N: tl.constexpr, BC_STEP: tl.constexpr,
):
    """y (b, d, L) and the state entering every CKPT_T steps (b, d, L / CKPT_T, n), a power
    of two: several a chunk, or one every CKPT_T / BLOCK_T chunks. BC_STEP: `_bc_step`.

    On time-contiguous tensors (TIME_UNIT) B, C and the tiles load as before the sixteenth
    session (masked past the length, converted by `.to`): with the leaner loads of
    `_load_bc` and `_f32` (64 registers instead of 96) this forward ran 10 % slower there
    on the H200 (0.51 vs 0.47 ms at L = 256, 2.09 vs 1.90 at 1024), where on channels-last
    views they made it 6 % faster (0.365 vs 0.389 ms at L = 256; scan_fwdvar_*_h200_s16.md).
    Nsight Compute at L = 256 (ncu_fwd_head256_*h200_s16.txt): the leaner kernel runs 48 %
    occupancy instead of 30 %, its L1 hit rate falls from 45 % to 30 % (each thread reads
    16 bytes of a 128-byte line of u and Δ a chunk: the rest must stay in L1 for the next
    chunks) and L2 reads rise 28 %: long-scoreboard stalls."""
    row = tl.program_id(0).to(tl.int64)
    d_offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n_offs = tl.arange(0, BLOCK_N)
    t_loc = tl.arange(0, BLOCK_T)
    d_mask = d_offs < d
    n_mask = n_offs < n
    dn_mask = d_mask[:, None] & n_mask[None, :]
    # padded channels and states get A = 0 and B = 0: their state stays 0
    A2 = tl.load(A_ptr + d_offs[:, None] * s_ad + n_offs[None, :] * s_an, mask=dn_mask,
                 other=0.0).to(tl.float32) * 1.4426950408889634  # exp(x) = exp2(x log2 e)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0).to(tl.float32)
    length = L
    if HAS_LEN:
        length = tl.minimum(tl.maximum(tl.load(len_ptr + row).to(tl.int32), 0), L)
    # u, Δ, z and y's row and channel strides count VEC elements (`_time_vec`)
    u_row, dt_row = u_ptr + row * (s_ub * VEC), delta_ptr + row * (s_db * VEC)
    z_row = z_ptr + row * (s_zb * VEC)
    b_row, c_row = B_ptr + row * (s_bb * BC_VEC), C_ptr + row * (s_cb * BC_VEC)
    y_row = y_ptr + row * (s_yb * VEC)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(0, tl.cdiv(length, BLOCK_T)):
        t0 = c * BLOCK_T
        t_offs = t0 + t_loc
        mask = d_mask[:, None] & (t_offs < length)[None, :]
        u = _load_dt(u_row, d_offs, t_offs, s_ud, s_ul, mask, VEC, TIME_UNIT)
        dt = _delta(_load_dt(dt_row, d_offs, t_offs, s_dd, s_dl, mask, VEC, TIME_UNIT), bias,
                    HAS_BIAS, SOFTPLUS)
        dt = tl.where(mask, dt, 0.0)  # steps past the length: exp(0) = 1, no input
        dtu = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        for k in tl.static_range(BLOCK_T):
            if STORE_STATES and k % CKPT_T == 0:
                at = dn_mask & (t0 + k < length)
                if CKPT_T > BLOCK_T:  # one chunk in CKPT_T / BLOCK_T stores, at its start
                    at = at & (t0 % CKPT_T == 0)
                tl.store(state_ptr + row * s_hb + d_offs[:, None] * s_hd
                         + ((t0 + k) // CKPT_T) * s_hc + n_offs[None, :] * s_hn, h, mask=at)
            if TIME_UNIT:  # the older loads: faster here (`_scan_fwd_kernel`'s docstring)
                bc_mask = n_mask & (t0 + k < length)
                Bt = _load_bc(b_row, n_offs, t0 + k, s_bl, BC_VEC, bc_mask, False, True)
                Ct = _load_bc(c_row, n_offs, t0 + k, s_cl, BC_VEC, bc_mask, False, True)
            else:
                Bt = _bc_at(b_row, n_offs, t0, k, length, s_bl, BC_VEC, n_mask, EVEN_N, BC_STEP)
                Ct = _bc_at(c_row, n_offs, t0, k, length, s_cl, BC_VEC, n_mask, EVEN_N, BC_STEP)
            h = _update(h, dt, dtu, t_loc, k, A2, Bt, False)
            y = _put(y, t_loc, k, tl.sum(h * Ct[None, :], axis=1))
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zt = _load_dt(z_row, d_offs, t_offs, s_zd, s_zl, mask, VEC, TIME_UNIT)
            y = y * zt * tl.sigmoid(zt)
        tl.store(y_row + _dt_offs(d_offs, t_offs, s_yd, s_yl, VEC, TIME_UNIT), y, mask=mask)
    if HAS_LEN:  # y = 0 past the length, written here: no memset of y before the launch
        zeros = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        for t0 in range((length // BLOCK_T) * BLOCK_T, L, BLOCK_T):
            t_offs = t0 + t_loc
            tail = d_mask[:, None] & ((t_offs >= length) & (t_offs < L))[None, :]
            tl.store(y_row + _dt_offs(d_offs, t_offs, s_yd, s_yl, VEC, TIME_UNIT), zeros, mask=tail)


@triton.jit
def _advance(h, u_row, dt_row, b_row, d_offs, n_offs, t_loc, t0, s_ud, s_ul, s_dd, s_dl, s_bl,
             d_mask, n_mask, A2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             BC_VEC: tl.constexpr, BLOCK_T: tl.constexpr, EVEN_N: tl.constexpr):
    """The state after steps t0 .. t0 + BLOCK_T - 1 (all inside the row's length) from the
    state before them: the backward's run from a stored state up to its chunk. Tiles loaded
    as the chunks load theirs, the steps unrolled: their loads overlap."""
    mask = d_mask[:, None] & (t_loc < BLOCK_T)[None, :]
    t_offs = t0 + t_loc
    u = _load_dt(u_row, d_offs, t_offs, s_ud, s_ul, mask, 1, False)
    dt = _delta(_load_dt(dt_row, d_offs, t_offs, s_dd, s_dl, mask, 1, False), bias, HAS_BIAS,
                SOFTPLUS)
    dtu = dt * u
    for k in tl.static_range(BLOCK_T):
        Bt = _load_bc(b_row, n_offs, t0 + k, s_bl, BC_VEC, n_mask, EVEN_N)
        h = _update(h, dt, dtu, t_loc, k, A2, Bt, True)
    return h


@triton.jit(do_not_specialize=_BWD_STRIDES)
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, state_ptr, gy_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, d, n,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_ad, s_an, s_bb, s_bl, s_cb, s_cl,
    s_zb, s_zd, s_zl, s_gb, s_gd, s_gl, s_hb, s_hd, s_hc, s_hn, s_ob, s_od, s_ol,
    s_pb, s_pk, s_pn, s_pl, s_ab, s_ad2, s_an2, s_rb,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LEN: tl.constexpr, BC_VEC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, CKPT_T: tl.constexpr,
    NL: tl.constexpr, LANE_SUMS: tl.constexpr, EVEN_N: tl.constexpr, BC_STEP: tl.constexpr,
    P_STEP: tl.constexpr,
):
    """du, ddelta, dz (b, d, L) with strides s_o*; per-row dA (b, d, n), dD and dbias (b, d)
    (rows s_rb apart); dB, dC partial sums over this program's channels (b, d-blocks, n, L),
    strides s_p*, the step stride compiled in (P_STEP = s_pl). BC_STEP: `_bc_step`."""
    row = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    # the states as (BLOCK_N / NL, NL): a thread's states are NL consecutive ones, so its B_t
    # and C_t are one vector load (`_bc_vec`)
    n_offs = tl.arange(0, BLOCK_N // NL)[:, None] * NL + tl.arange(0, NL)[None, :]
    t_loc = tl.arange(0, BLOCK_T)
    d_mask = d_offs < d
    n_mask = n_offs < n
    dn_mask = d_mask[:, None, None] & n_mask[None]
    A = tl.load(A_ptr + d_offs[:, None, None] * s_ad + n_offs[None] * s_an, mask=dn_mask,
                other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=d_mask, other=0.0).to(tl.float32)
    length = L
    if HAS_LEN:
        length = tl.minimum(tl.maximum(tl.load(len_ptr + row).to(tl.int32), 0), L)
    u_row, dt_row, z_row = u_ptr + row * s_ub, delta_ptr + row * s_db, z_ptr + row * s_zb
    b_row, c_row = B_ptr + row * (s_bb * BC_VEC), C_ptr + row * (s_cb * BC_VEC)
    gy_row = gy_ptr + row * s_gb
    o_row = row * s_ob
    p_row = row * s_pb + pid_d * s_pk
    n_chunks = tl.cdiv(length, BLOCK_T)
    g_next = tl.zeros((BLOCK_D, BLOCK_N // NL, NL), dtype=tl.float32)  # exp(Δ_{t+1} A) g_{t+1}
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N // NL, NL), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        t0 = c * BLOCK_T
        t_offs = t0 + t_loc
        mask = d_mask[:, None] & (t_offs < length)[None, :]
        # strides as given (VEC 1, no TIME_UNIT): with unit time stride compiled in, the 4-step
        # tiles took another layout and spilled (sm_90, thirteenth session)
        u = _load_dt(u_row, d_offs, t_offs, s_ud, s_ul, mask, 1, False)
        raw = _load_dt(dt_row, d_offs, t_offs, s_dd, s_dl, mask, 1, False)
        if HAS_BIAS:
            raw += bias[:, None]
        dt = raw
        if SOFTPLUS:
            dt = _softplus(raw)
        dt = tl.where(mask, dt, 0.0)
        dtu = dt * u
        gy = _load_dt(gy_row, d_offs, t_offs, s_gd, s_gl, mask, 1, False)
        if HAS_Z:
            zt = _load_dt(z_row, d_offs, t_offs, s_zd, s_zl, mask, 1, False)
            sig = tl.sigmoid(zt)
            gyz = gy * zt * sig  # the gradient reaching y before the gate
        else:
            gyz = gy
        h = tl.load(state_ptr + row * s_hb + d_offs[:, None, None] * s_hd
                    + (t0 // CKPT_T) * s_hc + n_offs[None] * s_hn, mask=dn_mask, other=0.0)
        if CKPT_T > BLOCK_T:  # the state stored at the interval's start, run up to t0
            for tp in range((t0 // CKPT_T) * CKPT_T, t0, BLOCK_T):
                h = _advance(h, u_row, dt_row, b_row, d_offs, n_offs, t_loc, tp, s_ud, s_ul,
                             s_dd, s_dl, s_bl, d_mask, n_mask, A2, bias, HAS_BIAS, SOFTPLUS,
                             BC_VEC, BLOCK_T, EVEN_N)
        # 1. the chunk's states again, from its checkpoint; dC_t = sum_d h_t gy'_t
        hs = ()
        y = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        for k in tl.static_range(BLOCK_T):
            Bt = _bc_at(b_row, n_offs, t0, k, length, s_bl, BC_VEC, n_mask, EVEN_N, BC_STEP)
            ah = tl.exp2(_col(dt, t_loc, k)[:, None, None] * A2) * h  # a_t h_{t-1}
            h = ah + _col(dtu, t_loc, k)[:, None, None] * Bt[None]
            hs = hs + (ah,)  # what the adjoint needs, rather than h_t
            _store_sum(dC_ptr + p_row + t0 * P_STEP + k * P_STEP,
                       h * _col(gyz, t_loc, k)[:, None, None], s_pn, n_offs, n, t0 + k < length,
                       LANE_SUMS, NL)
            if HAS_Z:
                Ct = _bc_at(c_row, n_offs, t0, k, length, s_cl, BC_VEC, n_mask, EVEN_N, BC_STEP)
                y = _put(y, t_loc, k, _sum_states(h * Ct[None]))
        out_offs = o_row + _dt_offs(d_offs, t_offs, s_od, s_ol, 1, False)
        if HAS_Z:
            if HAS_D:
                y += Dv[:, None] * u
            tl.store(dz_ptr + out_offs, gy * y * sig * (1.0 + zt * (1.0 - sig)),
                     mask=mask)
        # 2. the adjoint g_t = C_t gy'_t + exp(Δ_{t+1} A) g_{t+1}, last step first
        du = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        ddt = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        for k in tl.static_range(BLOCK_T - 1, -1, -1):
            Bt = _bc_at(b_row, n_offs, t0, k, length, s_bl, BC_VEC, n_mask, EVEN_N, BC_STEP)
            Ct = _bc_at(c_row, n_offs, t0, k, length, s_cl, BC_VEC, n_mask, EVEN_N, BC_STEP)
            dt_k = _col(dt, t_loc, k)
            dtu_k = _col(dtu, t_loc, k)
            g = _col(gyz, t_loc, k)[:, None, None] * Ct[None] + g_next
            # h_t = a_t h_{t-1} + Δ_t B_t u_t: d(Δ_t B_t u_t) = g_t, d(Δ_t A) = g_t a_t h_{t-1}
            gB = _sum_states(g * Bt[None])
            du = _put(du, t_loc, k, gB * dt_k)
            g_ah = g * hs[k]
            ddt = _put(ddt, t_loc, k, gB * _col(u, t_loc, k) + _sum_states(g_ah * A))
            dA_acc += g_ah * dt_k[:, None, None]
            _store_sum(dB_ptr + p_row + t0 * P_STEP + k * P_STEP, g * dtu_k[:, None, None], s_pn,
                       n_offs, n, t0 + k < length, LANE_SUMS, NL)
            g_next = tl.exp2(dt_k[:, None, None] * A2) * g
        if HAS_D:
            du += gyz * Dv[:, None]
            dD_acc += tl.sum(gyz * u, axis=1)
        tl.store(du_ptr + out_offs, du, mask=mask)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        tl.store(ddelta_ptr + out_offs, ddt, mask=mask)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
    tl.store(dA_ptr + row * s_ab + d_offs[:, None, None] * s_ad2 + n_offs[None] * s_an2,
             dA_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + row * s_rb + d_offs, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + row * s_rb + d_offs, dbias_acc, mask=d_mask)
    if HAS_LEN:  # no gradient past the length: zeros, written here instead of memsets
        zeros = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        zeros_p = tl.zeros((BLOCK_N, BLOCK_T), dtype=tl.float32)
        for t0 in range((length // BLOCK_T) * BLOCK_T, L, BLOCK_T):
            t_offs = t0 + t_loc
            t_tail = (t_offs >= length) & (t_offs < L)
            tail = d_mask[:, None] & t_tail[None, :]
            out_offs = o_row + _dt_offs(d_offs, t_offs, s_od, s_ol, 1, False)
            tl.store(du_ptr + out_offs, zeros, mask=tail)
            tl.store(ddelta_ptr + out_offs, zeros, mask=tail)
            if HAS_Z:
                tl.store(dz_ptr + out_offs, zeros, mask=tail)
            states = tl.arange(0, BLOCK_N)
            p_offs = p_row + states[:, None] * s_pn + t_offs[None, :] * s_pl
            p_tail = (states < n)[:, None] & t_tail[None, :]
            tl.store(dB_ptr + p_offs, zeros_p, mask=p_tail)
            tl.store(dC_ptr + p_offs, zeros_p, mask=p_tail)


# ---------------------------------------------------------------------------- autograd


def _like(u: Tensor, dtype: torch.dtype) -> Tensor:
    """An uninitialised (b, d, L) output in u's layout (the kernels write every element,
    zeros past a row's length included): channels-last (a transposed (b, L, d) tensor, as
    the Mamba head passes its projections without copying them) or (b, d, L) contiguous.
    Outputs in the inputs' layout keep the kernels' loads and stores coalesced alike."""
    b, d, L = u.shape
    if u.stride(1) == 1 and d > 1:
        return torch.empty((b, L, d), dtype=dtype, device=u.device).transpose(1, 2)
    return torch.empty((b, d, L), dtype=dtype, device=u.device)


def _states_unit(B: Tensor, C: Tensor) -> bool:
    """B and C with their states contiguous (stride 1), as the Mamba head's x_proj views are
    and the only layout the kernels take (`selective_scan_triton` copies others). With that
    stride a constant, each thread's state loads share one address plus constant offsets:
    fewer registers spilled in backward (stack 664 -> 72 bytes in the sm_90 compile of
    `benchmarks/scan_sass.py`) and, on the H200 at the head's EK100 calls, the scan 11-16 %
    faster (benchmarks/results/issue18_status.md). Only this stride: letting Triton
    specialise strides freely changes the tiles' layout (see the note above the kernels).
    With one state the stride is never used (and `.contiguous()` keeps a size-1 dimension's
    stride as it is, so no copy could make it 1)."""
    return B.shape[1] == 1 or (B.stride(1) == 1 and C.stride(1) == 1)


def _check_states_unit(op: str, B: Tensor, C: Tensor) -> None:
    if not _states_unit(B, C):
        raise ValueError(f"{op}: B and C need contiguous states (stride 1 along n), got strides "
                         f"{tuple(B.stride())} and {tuple(C.stride())}; selective_scan_triton "
                         "copies them so")


def _bc_vec(B: Tensor, C: Tensor) -> int:
    """Elements in 16 bytes when B and C allow 16-byte loads of a step's states (aligned
    data, row and step strides multiples of it), else 1. The kernels take B and C's strides
    in these units: Triton then knows each thread's states are aligned and loads them with
    one instruction. Without it every state was its own 2-byte load (sm_90 SASS: 136 of the
    forward's 144 loads a chunk, LDG.E.U16; `benchmarks/scan_sass.py`)."""
    vec = 16 // B.element_size()
    return vec if B.dtype == C.dtype and _aligned(vec, (B, C), dims=(0, 2)) else 1


def _time_vec(*tensors: Tensor | None) -> int:
    """0 unless every (b, d, L) tensor given has unit time stride (u, Δ, z and y of a
    (b, d, L)-contiguous call); then the largest of 8, 4, 2, 1 that divides their row and
    channel strides and data offsets in elements. The forward then compiles with the time
    stride 1 and those strides in units of it (`_dt_offs`): each thread's steps are one
    vector load or store where they were one 2-byte access a step."""
    present = [t for t in tensors if t is not None]
    if any(t.stride(2) != 1 for t in present):
        return 0
    return next((vec for vec in (8, 4, 2) if _aligned(vec, present, dims=(0, 1))), 1)


def _aligned(vec: int, tensors, dims: tuple[int, ...]) -> bool:
    """Every tensor's data offset and its strides along `dims` are multiples of `vec`
    elements: what lets the kernels take those strides in units of `vec`."""
    return all(t.data_ptr() % (vec * t.element_size()) == 0
               and all(t.stride(i) % vec == 0 for i in dims) for t in tensors)


def _strides_vec(t: Tensor | None, vec: int) -> tuple[int, int, int]:
    """(row, channel, time) strides of a (b, d, L) tensor, the first two in units of vec."""
    if t is None:
        return (0, 0, 0)
    return t.stride(0) // vec, t.stride(1) // vec, t.stride(2)


def _bc_step(B: Tensor, C: Tensor, lengths: Tensor | None, L: int, chunk: int,
             even_n: bool) -> int:
    """B and C's step stride in elements, compiled into a launch so that a chunk's steps load
    at immediate offsets from its first, without a clamp and a 64-bit address a step (sm_90
    chunk loops: the backward 1334 -> 1283 instructions with P_STEP, the forward 1251 -> 1188
    on views; `scan_sass.py`; the staged forward stages B and C instead), where that is safe:
    no per-row lengths (past a row's length the clamp reads its last step, the padding after
    it may not be finite and would reach the gradients through Δ = 0), every chunk inside L,
    B and C with one step stride and no padded states (`EVEN_N`). 0: the clamped loads
    (`_load_bc`)."""
    safe = lengths is None and L % chunk == 0 and B.stride(2) == C.stride(2) and even_n
    return B.stride(2) if safe else 0


def _strides_bc(t: Tensor, vec: int) -> tuple[int, int]:
    """Row and step strides of B or C in units of `vec` elements (`_bc_vec`; their state
    stride is 1: `_check_states_unit`)."""
    return t.stride(0) // vec, t.stride(2) // vec


# The kernels' launches are custom operators (`torch.library`): `torch.compile` then calls
# them as they are, with the inputs' exact strides (`needs_exact_strides`), and does not trace
# into them. Traced, a launch lost its register cap and got its inputs in other layouts, and
# inductor fused the partial-sum reductions into slower kernels: the backward ran 0.80 ms a
# call instead of 0.60 in a compiled, graphed EK100 step (H200, issue18_status.md).
# (an older torch without the exact-strides tag: fixed stride order, which may copy a view)
_LAYOUT_TAGS = (getattr(torch.Tag, "needs_exact_strides", torch.Tag.needs_fixed_stride_order),)
_CFG_KEYS = ("BLOCK_N", "BLOCK_T", "BLOCK_T_BWD", "CKPT_T", "BLOCK_D_FWD", "BLOCK_D_BWD",
             "WARPS_FWD", "WARPS_BWD", "MAXNREG_BWD", "MAXNREG_FWD", "LANE_SUMS",
             "STAGED_FWD")


def _cfg_list(cfg: dict) -> list[int]:
    return [int(cfg[k] or 0) for k in _CFG_KEYS]


def _cfg_dict(values: list[int]) -> dict:
    cfg = dict(zip(_CFG_KEYS, values, strict=True))
    cfg["MAXNREG_BWD"] = cfg["MAXNREG_BWD"] or None
    cfg["MAXNREG_FWD"] = cfg["MAXNREG_FWD"] or None
    return cfg


def _n_checkpoints(L: int, cfg: dict) -> int:
    return triton.cdiv(L, cfg["CKPT_T"])


def _new_states(u: Tensor, n_ckpt: int, n: int, store: bool) -> Tensor:
    """The checkpointed states, a float32 (b, d, n_ckpt, n) view of (b, n_ckpt, n, d) memory
    (a 1-element dummy when not stored). Channels contiguous because they lie across the
    lanes: a warp's store or load of one state of its 16 channels is 64 contiguous bytes.
    With states contiguous instead, each such access touched 16 sectors for 8 bytes of each,
    and the forward was bound by that L2 traffic (Nsight Compute on the H200: 47 % of its
    sectors excessive, L2 77 % busy; issue18_status.md, twelfth session)."""
    if not store:
        return u.new_empty((1, 1, 1, 1), dtype=torch.float32)
    b, d, _ = u.shape
    return u.new_empty((b, n_ckpt, n, d), dtype=torch.float32).permute(0, 3, 1, 2)


def _scan_fwd_impl(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                   z: Tensor | None, delta_bias: Tensor | None, lengths: Tensor | None,
                   softplus: bool, config: list[int], store_states: bool) -> tuple[Tensor, Tensor]:
    """y in u's layout and (when `store_states`) the checkpointed states the backward reads."""
    _check_states_unit("fusion::scan_fwd", B, C)
    cfg = _cfg_dict(config)
    b, d, L = u.shape
    n = A.shape[-1]
    y = _like(u, u.dtype)
    states = _new_states(u, _n_checkpoints(L, cfg), n, store_states)
    dummy = u  # stands in for absent optional tensors (never read: constexpr flags)
    vec = _bc_vec(B, C)
    time_vec = _time_vec(u, delta, z, y)
    tv = max(time_vec, 1)
    grid = (b, triton.cdiv(d, cfg["BLOCK_D_FWD"]))
    cap = None if triton_interpreted() else cfg["MAXNREG_FWD"]
    if staged_forward(cfg, time_vec, n, ragged=lengths is not None):
        try:  # Gluon: imported only when asked for
            from fusion import ssm_staged
        except ImportError as error:
            raise ImportError(
                f"ScanConfig(staged_fwd=True) needs Triton's Gluon (triton.experimental.gluon; "
                f"written for Triton 3.6, this is {triton.__version__}): {error}; install "
                "it or leave staged_fwd off") from error

        kernel, extra = ssm_staged.scan_fwd_staged_kernel, {
            "CKPT_T": cfg["CKPT_T"], "WARPS": cfg["WARPS_FWD"],
            "STAGE": ssm_staged.staging_layout(cfg["WARPS_FWD"])}
    else:
        kernel, extra = _scan_fwd_kernel, {
            "TIME_UNIT": time_vec > 0, "BLOCK_D": cfg["BLOCK_D_FWD"],
            "BLOCK_N": cfg["BLOCK_N"], "BLOCK_T": cfg["BLOCK_T"], "CKPT_T": cfg["CKPT_T"],
            "EVEN_N": n == cfg["BLOCK_N"],
            "BC_STEP": _bc_step(B, C, lengths, L, cfg["BLOCK_T"], n == cfg["BLOCK_N"])}
    kernel[grid](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, dummy if lengths is None else lengths,
        y, states, L, d, n,
        *_strides_vec(u, tv), *_strides_vec(delta, tv), *A.stride(), *_strides_bc(B, vec),
        *_strides_bc(C, vec), *_strides_vec(z, tv), *_strides_vec(y, tv), *states.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_LEN=lengths is not None, STORE_STATES=store_states, BC_VEC=vec,
        VEC=tv, **extra, num_warps=cfg["WARPS_FWD"],
        **({} if cap is None else {"maxnreg": cap}),
    )
    return y, states


_scan_fwd = torch.library.custom_op("fusion::scan_fwd", mutates_args=(),
                                    tags=_LAYOUT_TAGS)(_scan_fwd_impl)


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, lengths, softplus, config,
                   store_states):
    n_ckpt = _n_checkpoints(u.shape[2], _cfg_dict(config))
    return _like(u, u.dtype), _new_states(u, n_ckpt, A.shape[-1], store_states)


def _scan_bwd_impl(gy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
                   lengths: Tensor | None, states: Tensor, softplus: bool,
                   config: list[int]) -> list[Tensor]:
    """Gradients of u, delta, A, B, C, D, z, delta_bias (empty tensors for absent ones), the
    partial sums over rows and blocks of channels already added up."""
    _check_states_unit("fusion::scan_bwd", B, C)
    cfg = _cfg_dict(config)
    b, d, L = u.shape
    n = A.shape[-1]
    dev = u.device
    du = _like(u, u.dtype)
    ddelta = _like(u, delta.dtype)
    dz = None if z is None else _like(u, z.dtype)
    # per-row dA, dD, dbias side by side in one (b, d n + d + d) buffer, and dB, dC's partial
    # sums over blocks of channels stacked in another: each summed by one launch below (no
    # atomics: deterministic)
    per_row = [t for t in (D, delta_bias) if t is not None]
    rows = torch.empty((b, d * (n + len(per_row))), dtype=torch.float32, device=dev)
    dA = rows[:, :d * n].view(b, d, n)
    dD = None if D is None else rows[:, d * n:d * (n + 1)]
    dbias = None if delta_bias is None else rows[:, d * (n + len(per_row) - 1):]
    blocks = triton.cdiv(d, cfg["BLOCK_D_BWD"])
    # (b, blocks, n, L) views of (b, blocks, L, n) memory: each step's n sums are stored
    # together (64 bytes), where a (.., n, L) layout put each in its own sector
    dBC = torch.empty((2, b, blocks, L, n), dtype=torch.float32, device=dev)
    dB, dC = dBC[0].transpose(2, 3), dBC[1].transpose(2, 3)
    dummy = du
    vec = _bc_vec(B, C)
    # a register cap is a compile option (the interpreter takes none)
    cap = None if triton_interpreted() else backward_maxnreg(cfg)
    options = {} if cap is None else {"maxnreg": cap}
    lane = lane_sums(cfg)
    compiled = _scan_bwd_kernel[(b, blocks)](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, dummy if lengths is None else lengths,
        states, gy, du, ddelta, dummy if dz is None else dz, dA, dB, dC,
        dummy if dD is None else dD, dummy if dbias is None else dbias,
        L, d, n,
        *u.stride(), *delta.stride(), *A.stride(), *_strides_bc(B, vec), *_strides_bc(C, vec),
        *_strides_vec(z, 1), *gy.stride(), *states.stride(), *du.stride(), *dB.stride(),
        *dA.stride(), rows.stride(0),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_LEN=lengths is not None, BC_VEC=vec,
        BLOCK_D=cfg["BLOCK_D_BWD"], BLOCK_N=cfg["BLOCK_N"], BLOCK_T=cfg["BLOCK_T_BWD"],
        CKPT_T=cfg["CKPT_T"], NL=min(cfg["BLOCK_N"], 8), LANE_SUMS=lane, EVEN_N=n == cfg["BLOCK_N"],
        BC_STEP=_bc_step(B, C, lengths, L, cfg["BLOCK_T_BWD"], n == cfg["BLOCK_N"]),
        P_STEP=dB.stride(3), num_warps=cfg["WARPS_BWD"],
        **options,
    )
    # once a compiled kernel (None: a launch recorded, not run, as benchmarks/scan_sass.py does)
    if lane and compiled is not None and id(compiled) not in _lanes_checked:
        check_lane_layout(compiled.asm.get("ttgir", ""))  # none read: refused, loudly
        _lanes_checked.add(id(compiled))
    gA = torch.empty(A.shape, dtype=A.dtype, device=dev)
    g_per_row = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in per_row]
    sum_middle(rows.view(1, b, rows.shape[1]), gA, *g_per_row)
    gB = torch.empty((b, L, n), dtype=B.dtype, device=dev)
    gC = torch.empty((b, L, n), dtype=C.dtype, device=dev)
    sum_middle(dBC.view(2 * b, blocks, L * n), gB, gC)
    gB, gC = gB.transpose(1, 2), gC.transpose(1, 2)  # (b, n, L), states contiguous like B, C
    gD = _none(u) if D is None else g_per_row[0]
    gbias = _none(u) if delta_bias is None else g_per_row[-1]
    return [du, ddelta, gA, gB, gC, gD, _none(u) if dz is None else dz, gbias]


def _none(u: Tensor) -> Tensor:
    """An absent gradient (an operator's outputs are tensors, each its own)."""
    return u.new_empty(0)


_scan_bwd = torch.library.custom_op("fusion::scan_bwd", mutates_args=(),
                                    tags=_LAYOUT_TAGS)(_scan_bwd_impl)


@_scan_bwd.register_fake
def _scan_bwd_fake(gy, u, delta, A, B, C, D, z, delta_bias, lengths, states, softplus,
                   config):
    b, d, L = u.shape
    return [_like(u, u.dtype), _like(u, delta.dtype), A.new_empty(A.shape),
            B.new_empty((b, L, B.shape[1])).transpose(1, 2),
            C.new_empty((b, L, C.shape[1])).transpose(1, 2),
            _none(u) if D is None else D.new_empty(D.shape),
            _none(u) if z is None else _like(u, z.dtype),
            _none(u) if delta_bias is None else delta_bias.new_empty(delta_bias.shape)]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, lengths, softplus, config, store_states = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, lengths, output[1])
    ctx.softplus, ctx.config = softplus, config


def _gradients(scan_bwd, ctx, gy) -> tuple:
    u, delta, A, B, C, D, z, delta_bias, lengths, states = ctx.saved_tensors
    grads = scan_bwd(gy, u, delta, A, B, C, D, z, delta_bias, lengths, states, ctx.softplus,
                     ctx.config)
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(None if t is None else g for t, g in zip(present, grads, strict=True)),
            None, None, None, None)


def _backward(ctx, gy, _gstates):
    return _gradients(torch.ops.fusion.scan_bwd, ctx, gy)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The operators' autograd without their dispatch, for eager calls on real tensors. The
    `torch.library` layers (schema defaults, redispatch, the dynamo guard) cost more host time
    than the kernels at short lengths: on CPU tensors with the launches stubbed, 48 vs 110 us
    a forward and 190 vs 303 us a forward + backward in the head's views
    (benchmarks/results/scan_host.md; the scan table's L <= 64 rows are host-bound).
    `torch.compile` still sees the operators (`selective_scan_triton`)."""

    @staticmethod
    def forward(ctx, *inputs):
        y, states = _scan_fwd_impl(*inputs)
        _setup_context(ctx, inputs, (y, states))
        return y

    @staticmethod
    def backward(ctx, gy):
        return _gradients(_scan_bwd_impl, ctx, gy)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    lengths: Tensor | None = None,
    config: ScanConfig | None = None,
) -> Tensor:
    """The `triton` backend (shapes checked by `fusion.ssm.selective_scan`); y in u's dtype.

    Runs on CUDA tensors, or on CPU tensors under `TRITON_INTERPRET=1` (tests). float64
    inputs are computed in float32 (the state is always float32).
    """
    b, d, L = u.shape
    if lengths is not None:
        lengths = lengths.to(device=u.device, dtype=torch.int32).contiguous()
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        tensors = tuple(None if t is None else t.float() if t.dtype == torch.float64 else t
                        for t in tensors)
        out_dtype = torch.float64 if u.dtype == torch.float64 else None
    else:
        out_dtype = None
    if b == 0 or d == 0 or L == 0:
        return torch.zeros_like(u)
    u, delta, A, B, C, D, z, delta_bias = tensors
    cfg = _cfg_list(scan_config(L, d, A.shape[-1], config, _time_vec(u, delta, z) > 0))
    if not _states_unit(B, C):  # the kernels' layout: (b, L, n) copies, d / n times smaller
        B, C = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (B, C))
    args = (u, delta, A, B, C, D, z, delta_bias, lengths, bool(delta_softplus), cfg, needs_grad)
    if torch.compiler.is_compiling() or type(u) is not Tensor:  # traced: the operators
        y, _ = torch.ops.fusion.scan_fwd(*args)
    else:
        y = _EagerScan.apply(*args)
    return y if out_dtype is None else y.to(out_dtype)

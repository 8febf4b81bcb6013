"""Selective-scan backends side by side: triton vs mamba-ssm's CUDA kernel vs the torch backend.

    python benchmarks/scan_backends.py            # on the GPU: the committed results
    python benchmarks/scan_backends.py --quick    # CPU smoke check (writes *_quick files)

Why (issue 8): at the harness's shapes (16 video tokens, 2 x 32 question tokens, batch 128,
d_inner 1536, d_state 16) mamba-ssm's `selective_scan_fn` has a floor of ~3.3 ms per
forward+backward set by its launch structure, and the fusion head used to call it per group
of modalities. The `triton` backend should take <= 0.5x mamba-ssm's time at L <= 256 and be
no slower at L = 4096.

Measured, same run and machine, for every backend that imports (others are reported as
unavailable): the scan alone (`fusion.ssm.selective_scan`) on random bf16 inputs of
batch 128, d 1536, n 16, L in {16, 64, 256, 1024, 4096}:

* `fwd`: the forward with inputs that require grad (what training runs: states saved);
  `fwd_bwd`: forward and backward (`y.backward(gy)`).
* three call variants: `head` is the call the Mamba head makes for stacked branches (Δ
  already softplus'd, no D, z or delta_bias: the head applies them outside) on (b, d, L)
  tensors, at every length; `head_views` is the same call in the head's own layout (u, Δ
  transposed (b, L, d) views, B and C slices of one (b, L, 2n) tensor: `scan_args`), at
  every length; `full` is Mamba's usual call (D, z gate, delta_bias and softplus inside the
  scan), at L = 16 and 256.
* the two-modality EK100 case, video 16 + text 64 steps (batch 128 each): ONE call with both
  stacked along the batch (padded to 64; per-row lengths for triton, which then skips the
  padding; the other backends scan the padding) against TWO calls, one per modality; plus
  the head's real branch shapes, video 16 + two questions of 32. The one-call time includes
  the padding and concatenation (the head pays them too).
* `--sweep` (on by default on the GPU): the triton backend's fwd+bwd time over a few tile
  sizes (`fusion.ssm_triton.ScanConfig`) at L = 16 and 4096, to check the default heuristic.

The whole run is capped by `--max-seconds` (300 by default: points past it are recorded as
not run); the result files are rewritten after each section and when the run is cut short.

Timing: CUDA events around each step after warm-up (the first call compiles the Triton
kernels), the median of the repeats; a backend stops at the first length whose step takes
more than `max_step_seconds` (the torch backend at long L) or runs out of memory.
Results: `benchmarks/results/scan_backends.{json,md}` (`--quick`: `scan_backends_quick.*`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402
from fusion import ssm  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class BenchConfig:
    """Time of every selective-scan backend, forward and forward+backward, against length."""

    backends: tuple[str, ...] = ("triton", "mamba_ssm", "torch")
    lengths: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    variants: tuple[str, ...] = ("head", "head_views", "full")
    """`head`: the Mamba head's call (no D/z/bias, Δ pre-softplus'd) on (b, d, L) tensors;
    `head_views`: the same call in the head's own layout (see `scan_args`); `full`: all
    options."""
    full_lengths: tuple[int, ...] = (16, 256)
    """Lengths of the `full` variant (a subset of `lengths` keeps the run short)."""
    batch: int = 128
    d_inner: int = 1536
    d_state: int = 16
    dtype: str = "bf16"
    """bf16, fp16 or fp32 (u, Δ, B, C, z; A, D and delta_bias stay fp32)."""
    video_len: int = 16
    text_len: int = 64
    question_len: int = 32
    target_seconds: float = 0.5
    """Timed steps per point: about this long in all (5 to 50 steps)."""
    warmup: int = 3
    max_step_seconds: float = 2.0
    """A backend stops after a length whose step takes longer than this."""
    max_seconds: float = 300.0
    """Whole-run budget; points past it are recorded as not run (the run then ends within
    about one point's time of it)."""
    sweep: bool = True
    """Triton tile-size sweep (GPU only)."""
    sweep_lengths: tuple[int, ...] = (16, 256, 4096)
    out: Path = ROOT / "benchmarks" / "results" / "scan_backends"
    """Output stem: writes .json and .md (`--quick` appends _quick)."""
    quick: bool = False
    """Tiny CPU smoke run: batch 2, d 32, n 4, fp32, L in (16, 64), no sweep."""
    triton_config: str = ""
    """`fusion.ssm_triton.ScanConfig` fields for the triton backend's default config, as
    `scan_head_calls.py --configs` takes them (`staged_fwd=true`); "" = its defaults."""
    command: str = field(default_factory=lambda: " ".join(["python", *sys.argv]))


SWEEP_CONFIGS = [  # (block_t, block_d_fwd, block_d_bwd, warps_fwd, warps_bwd); None = heuristic
    (None, None, None, None, None),  # 8 / 16 / 16 / 1 / 1 at n = 16
    (8, 32, 16, 1, 1),  # forward with one lane a channel: 255 registers instead of 148
    (8, 16, 8, 1, 1),  # backward with four lanes a channel: no spills (sm_90 ptxas)
    (4, 32, 8, 1, 1),
    (4, 16, 16, 1, 1),
    (16, 16, 8, 1, 1),
    (8, 64, 32, 2, 1),
]
# The sequential-in-thread kernels' layouts follow from BLOCK_D and the warps (see
# `fusion.ssm_triton.scan_config`); the earlier cross-lane-scan kernels' sweep is in
# scan_backends.md (H100).


# ------------------------------------------------------------------------------ inputs


def make_inputs(config: BenchConfig, batch: int, length: int, variant: str,
                device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Leaves (requires_grad) of one scan call; A as the head initialises it, -(1..n)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[config.dtype]
    b, d, n, L = batch, config.d_inner, config.d_state, length

    def randn(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dt)

    inputs = {"u": randn(b, d, L), "B": randn(b, n, L), "C": randn(b, n, L),
              "A": -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1)}
    if variant in ("head", "head_views"):  # the head passes Δ = softplus(dt_proj(...))
        inputs["delta"] = F.softplus(randn(b, d, L, scale=0.5, shift=-3.0, dt=torch.float32)
                                     ).to(dtype)
    if variant == "head_views":  # the same values, stored as the head's projections hold them
        bc = torch.cat([inputs.pop("B"), inputs.pop("C")], dim=1)
        inputs = {k: v.transpose(1, 2).contiguous() if v.dim() == 3 else v
                  for k, v in {**inputs, "BC": bc}.items()}
    elif variant == "full":  # (an `else` here gave `head` these too: see the test)
        inputs |= {"delta": randn(b, d, L, scale=0.5), "z": randn(b, d, L),
                   "D": torch.ones(d, device=device),
                   "delta_bias": randn(d, scale=0.5, shift=-3.0, dt=torch.float32)}
    return {k: v.requires_grad_() for k, v in inputs.items()}


def scan_args(inputs: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """`selective_scan`'s tensors from the leaves. `head_views`: u and Δ are transposed views
    of (b, L, d) tensors and B, C transposed slices of one (b, L, 2n) tensor, as the Mamba
    head passes its projections (`fusion/heads/mamba.py`); the triton backend reads them in
    place, mamba-ssm copies them to unit time stride first (its `selective_scan_interface.py`
    does, lines 28-38 in mamba-ssm 2.3.2.post1), and that copy is in its time."""
    if variant != "head_views":
        return inputs
    n = inputs["BC"].shape[-1] // 2
    return {"u": inputs["u"].transpose(1, 2), "delta": inputs["delta"].transpose(1, 2),
            "A": inputs["A"], "B": inputs["BC"][..., :n].transpose(1, 2),
            "C": inputs["BC"][..., n:].transpose(1, 2)}


def scan_kwargs(variant: str) -> dict:
    return {"delta_softplus": variant == "full"}


# ------------------------------------------------------------------------------ timing


def timed(step: Callable[[], None], device: torch.device, config: BenchConfig,
          compiles: bool = True) -> dict:
    """Median and min ms of `step` after warm-up; `first_ms` is the first call (with
    `compiles`, Triton's compilation of the kernels: seconds, never counted as a step).

    A step slower than `max_step_seconds` is timed once and not repeated; with `compiles`
    that is the second call, since the first one's time is mostly compilation (the first H100
    run reported the all-options backward's 2.1 s compile as its step time).
    """
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    if first > config.max_step_seconds and compiles:
        start = time.perf_counter()
        step()
        sync(device)
        second = time.perf_counter() - start
        if second > config.max_step_seconds:
            return {"ms": 1e3 * second, "ms_min": 1e3 * second, "steps": 1,
                    "first_ms": 1e3 * first}
    elif first > config.max_step_seconds:
        return {"ms": 1e3 * first, "ms_min": 1e3 * first, "steps": 1, "first_ms": 1e3 * first}
    for _ in range(max(0, config.warmup - 1)):
        step()
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    estimate = time.perf_counter() - start
    reps = int(min(50, max(5, config.target_seconds / max(estimate, 1e-5))))
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for begin, end in events:
            begin.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [begin.elapsed_time(end) for begin, end in events]
        gpu = {"gpu_ms": gpu_ms(step, device, min(reps, 10))}
    else:
        gpu = {}
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - start))
    return {"ms": statistics.median(times), "ms_min": min(times), "steps": reps,
            "first_ms": 1e3 * first, **gpu}


def gpu_ms(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """The GPU's own time a step: the durations of every kernel, copy and memset it runs
    (torch.profiler), summed. Where a step is host-bound (short sequences: the Python around
    the launches takes longer than the kernels), the events' time is the host's, and moved
    by up to 40 % between runs of the same kernels on the H200's hosts (issue18_status.md,
    nineteenth session); this one is the kernels'."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    busy = sum(e.device_time for e in prof.events() if e.device_type == DeviceType.CUDA)
    return busy / steps / 1e3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_for(call: Callable[[], torch.Tensor], leaves: list[torch.Tensor], gy: torch.Tensor
              ) -> dict[str, Callable[[], None]]:
    """The `fwd` and `fwd_bwd` steps of a scan call."""

    def fwd() -> None:
        call()

    def fwd_bwd() -> None:
        for t in leaves:
            t.grad = None
        call().backward(gy)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ runs


def run_lengths(config: BenchConfig, device: torch.device, available: list[str],
                deadline: float, results: list[dict]) -> list[dict]:
    """Fills `results` in place (a run cut short keeps what it measured)."""
    for variant in config.variants:
        for backend in config.backends:
            stopped = None if backend in available else f"unavailable on {device.type}"
            lengths = config.full_lengths if variant == "full" else config.lengths
            for length in lengths:
                record = {"variant": variant, "backend": backend, "seq_len": length,
                          "batch": config.batch, "d_inner": config.d_inner,
                          "d_state": config.d_state, "dtype": config.dtype}
                if stopped or time.perf_counter() > deadline:
                    for mode in ("fwd", "fwd_bwd"):
                        results.append({**record, "mode": mode,
                                        "status": stopped or "not run (time budget)"})
                    continue
                inputs = gy = None
                try:
                    inputs = make_inputs(config, config.batch, length, variant, device)
                    gy = torch.randn(config.batch, config.d_inner, length, device=device
                                     ).to(DTYPES[config.dtype])
                    if variant == "head_views":  # y's gradient arrives in y's (u's) layout
                        gy = gy.transpose(1, 2).contiguous().transpose(1, 2)

                    def call(inputs=inputs, backend=backend, variant=variant):
                        return ssm.selective_scan(**scan_args(inputs, variant),
                                                  backend=backend, **scan_kwargs(variant))

                    for mode, step in steps_for(call, list(inputs.values()), gy).items():
                        if stopped:
                            results.append({**record, "mode": mode, "status": stopped})
                            continue
                        r = {**record, "mode": mode, "status": "ok",
                             **timed(step, device, config, compiles=backend == "triton")}
                        results.append(r)
                        print(json.dumps(r), flush=True)
                        if r["ms"] > 1e3 * config.max_step_seconds:
                            stopped = f"skipped: L={length} {mode} took {r['ms'] / 1e3:.1f} s"
                except torch.OutOfMemoryError:
                    results.append({**record, "mode": "fwd_bwd", "status": "out of memory"})
                    stopped = f"skipped: out of memory at L={length}"
                finally:
                    del inputs, gy
                    free(device)
    return results


def run_two_modality(config: BenchConfig, device: torch.device, available: list[str],
                     deadline: float, results: list[dict]) -> list[dict]:
    """One call (stacked along the batch) against one call per modality, fwd+bwd."""
    b = config.batch
    cases = {
        f"video {config.video_len} + text {config.text_len}":
            [(b, config.video_len), (b, config.text_len)],
        f"video {config.video_len} + 2 questions x {config.question_len} (head branches)":
            [(b, config.video_len), (2 * b, config.question_len)],
    }
    for case, parts in cases.items():
        for backend in config.backends:
            record = {"case": case, "backend": backend, "variant": "head",
                      "parts": [list(p) for p in parts]}
            if backend not in available:
                results.append({**record, "status": f"unavailable on {device.type}"})
                continue
            if time.perf_counter() > deadline:
                results.append({**record, "status": "not run (time budget)"})
                continue
            try:
                mods = [make_inputs(config, rows, length, "head", device, seed=i)
                        for i, (rows, length) in enumerate(parts)]
                for m in mods[1:]:
                    m["A"] = mods[0]["A"]  # the shared A
                leaves = list({id(t): t for m in mods for t in m.values()}.values())
                gys = [torch.randn(rows, config.d_inner, length, device=device
                                   ).to(DTYPES[config.dtype]) for rows, length in parts]
                longest = max(length for _, length in parts)
                ragged = backend in ssm.RAGGED_BACKENDS
                lengths = torch.cat([torch.full((rows,), length, dtype=torch.int32,
                                                device=device) for rows, length in parts])
                gy_one = torch.cat([F.pad(g, (0, longest - g.shape[-1])) for g in gys])

                def one_call(mods=mods, backend=backend, ragged=ragged, lengths=lengths,
                             longest=longest):
                    stacked = {k: torch.cat([F.pad(m[k], (0, longest - m[k].shape[-1]))
                                             for m in mods]) for k in ("u", "delta", "B", "C")}
                    return ssm.selective_scan(**stacked, A=mods[0]["A"], backend=backend,
                                              lengths=lengths if ragged else None)

                def two_calls_step(mods=mods, backend=backend, gys=gys, leaves=leaves):
                    for t in leaves:
                        t.grad = None
                    ys = [ssm.selective_scan(**m, backend=backend) for m in mods]
                    torch.autograd.backward(ys, gys)

                compiles = backend == "triton"
                one = timed(steps_for(one_call, leaves, gy_one)["fwd_bwd"], device, config,
                            compiles)
                two = timed(two_calls_step, device, config, compiles)
                r = {**record, "status": "ok", "one_call_ms": one["ms"],
                     "two_calls_ms": two["ms"], "one_over_two": one["ms"] / two["ms"],
                     "ragged": ragged}
                results.append(r)
                print(json.dumps(r), flush=True)
            except torch.OutOfMemoryError:
                results.append({**record, "status": "out of memory"})
            finally:
                mods = leaves = gys = gy_one = None
                free(device)
    return results


def run_sweep(config: BenchConfig, device: torch.device, deadline: float,
              results: list[dict]) -> list[dict]:
    from fusion import ssm_triton

    default = ssm_triton.DEFAULT_CONFIG
    try:
        for length in config.sweep_lengths:
            inputs = make_inputs(config, config.batch, length, "head", device)
            gy = torch.randn(config.batch, config.d_inner, length, device=device
                             ).to(DTYPES[config.dtype])
            for values in SWEEP_CONFIGS:
                scan_config = ssm_triton.ScanConfig(*values)
                concrete = ssm_triton.scan_config(length, config.d_inner, config.d_state,
                                                  scan_config, time_unit=True)  # (b, d, L)
                record = {"seq_len": length, "config": dataclasses.asdict(scan_config),
                          "concrete": concrete, "heuristic": values[0] is None}
                if time.perf_counter() > deadline:
                    results.append({**record, "status": "not run (time budget)"})
                    continue
                ssm_triton.DEFAULT_CONFIG = scan_config
                try:
                    def call(inputs=inputs):
                        return ssm.selective_scan(**inputs, backend="triton")

                    r = {**record, **timed(steps_for(call, list(inputs.values()), gy)["fwd_bwd"],
                                           device, config), "status": "ok"}
                except Exception as error:  # a tile size that does not compile or fit
                    r = {**record, "status": f"failed: {type(error).__name__}: "
                                             f"{str(error).splitlines()[0][:200]}"}
                results.append(r)
                print(json.dumps(r), flush=True)
            del inputs, gy
            free(device)
    finally:
        ssm_triton.DEFAULT_CONFIG = default
    return results


# ------------------------------------------------------------------------------ report


def fmt(ms: float | None) -> str:
    return "" if ms is None else f"{ms:,.3f}" if ms < 10 else f"{ms:,.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}x"


def markdown(data: dict) -> str:
    meta, results = data["meta"], data["results"]
    lines = [f"# Selective-scan backends ({meta['device']})", "",
             f"Command: `{meta['command']}`", "",
             f"Batch {meta['batch']}, d_inner {meta['d_inner']}, d_state {meta['d_state']}, "
             f"{meta['dtype']} inputs (A, D, delta_bias fp32); torch {meta['torch']}, "
             f"triton {meta['triton']}, mamba-ssm {meta['mamba_ssm']}; available here: "
             f"{', '.join(meta['available'])}. Median ms per step (CUDA events on the GPU, "
             "after warm-up). "
             "`fwd`: forward with inputs that require grad; `fwd_bwd`: forward + backward. "
             "Goal: triton <= 0.5x mamba_ssm at L <= 256, <= 1x at every L. `GPU ms`: the "
             "GPU's own time a step, its kernels' durations summed (torch.profiler; `gpu_ms`); "
             "`host-bound`: a triton step whose events' time is over 1.5x that, so the host's "
             "Python between launches, not the kernels, set it.", ""]
    if meta.get("stage", "complete") != "complete":
        lines += [f"**Partial results**: the run stopped at stage `{meta['stage']}` after "
                  f"{meta.get('elapsed_s')} s.", ""]

    def record(variant, backend, length, mode):
        return next((r for r in results if (r["variant"], r["backend"], r["seq_len"], r["mode"])
                     == (variant, backend, length, mode)), None)

    def ms(*key):
        r = record(*key)
        if r is None:
            return None, ""
        return (r["ms"], fmt(r["ms"])) if r["status"] == "ok" else (None,
                                                                    r["status"].split(":")[0])

    def gpu(*key):
        r = record(*key)
        return r.get("gpu_ms") if r is not None and r["status"] == "ok" else None

    backends = list(dict.fromkeys(r["backend"] for r in results))
    for variant in dict.fromkeys(r["variant"] for r in results):
        what = {"head": "the Mamba head's call: u, Δ (softplus'd), A, B, C; (b, d, L) tensors",
                "head_views": "the same call in the head's layout: u, Δ transposed (b, L, d), "
                              "B, C slices of one (b, L, 2n) tensor; mamba_ssm's copies to "
                              "(b, d, L) included",
                }.get(variant, "all options: D, z gate, delta_bias, softplus")
        lines += [f"## `{variant}` variant ({what})", "",
                  "| L | mode | " + " | ".join(backends) +
                  " | triton / mamba_ssm | triton / torch | goal met | GPU ms triton | "
                  "GPU ms mamba_ssm | GPU triton / mamba_ssm | goal met, GPU time |",
                  "|---" * (len(backends) + 9) + "|"]
        for length in dict.fromkeys(r["seq_len"] for r in results if r["variant"] == variant):
            for mode in ("fwd", "fwd_bwd"):
                cells = {b: ms(variant, b, length, mode) for b in backends}
                t = cells.get("triton", (None, ""))[0]
                m = cells.get("mamba_ssm", (None, ""))[0]
                limit = 0.5 if length <= 256 else 1.0
                goal = "" if t is None or m is None else "yes" if t <= limit * m else "NO"
                tg, mg = gpu(variant, "triton", length, mode), gpu(variant, "mamba_ssm",
                                                                   length, mode)
                goal_gpu = "" if tg is None or mg is None else "yes" if tg <= limit * mg else "NO"
                if t is not None and tg and t > 1.5 * tg:
                    goal += " (host-bound)"
                lines.append(f"| {length} | {mode} | " + " | ".join(c[1] for c in cells.values())
                             + f" | {ratio(t, m)} | {ratio(t, cells.get('torch', (None,))[0])}"
                             f" | {goal} | {fmt(tg)} | {fmt(mg)} | {ratio(tg, mg)} | {goal_gpu} |")
        lines.append("")
    two = data.get("two_modality") or []
    if two:
        lines += ["## Modalities in one call vs one call per modality (`head` variant, fwd_bwd)",
                  "", "One call stacks the modalities along the batch, padded to the longest "
                  "(triton: with per-row lengths, padded steps skipped); its time includes "
                  "the padding and concatenation.", "",
                  "| case | backend | one call ms | two calls ms | one / two | "
                  "vs mamba_ssm two calls |", "|---|---|---|---|---|---|"]
        for r in two:
            if r["status"] != "ok":
                lines.append(f"| {r['case']} | {r['backend']} | {r['status']} | | | |")
                continue
            base = next((x for x in two if x["case"] == r["case"] and
                         x["backend"] == "mamba_ssm" and x["status"] == "ok"), None)
            best = min(r["one_call_ms"], r["two_calls_ms"])
            lines.append(f"| {r['case']} | {r['backend']} | {fmt(r['one_call_ms'])} | "
                         f"{fmt(r['two_calls_ms'])} | {r['one_over_two']:.2f}x | "
                         f"{ratio(best, base and base['two_calls_ms'])} |")
        lines.append("")
    sweep = data.get("sweep") or []
    if sweep:
        lines += ["## Triton tile sizes (`head` variant, fwd_bwd)", "",
                  "BLOCK_T / BLOCK_D fwd / BLOCK_D bwd / warps fwd / warps bwd; * = the default "
                  "heuristic.", "", "| L | tiles | ms | vs default |", "|---|---|---|---|"]
        for length in dict.fromkeys(r["seq_len"] for r in sweep):
            rows = [r for r in sweep if r["seq_len"] == length]
            default = next((r for r in rows if r["heuristic"] and r["status"] == "ok"), None)
            for r in rows:
                c = r["concrete"]
                tiles = (f"{c['BLOCK_T']} / {c['BLOCK_D_FWD']} / {c['BLOCK_D_BWD']} / "
                         f"{c['WARPS_FWD']} / {c['WARPS_BWD']}{' *' if r['heuristic'] else ''}")
                if r["status"] != "ok":
                    lines.append(f"| {length} | {tiles} | {r['status']} | |")
                else:
                    lines.append(f"| {length} | {tiles} | {fmt(r['ms'])} | "
                                 f"{ratio(r['ms'], default and default['ms'])} |")
        lines.append("")
    return "\n".join(lines)


def version_of(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def set_triton_config(text: str):
    """Make `text` (`staged_fwd=true,block_t=4`) the triton backend's default ScanConfig for
    this process (`fusion.ssm_triton.DEFAULT_CONFIG`, which calls without a config use)."""
    from benchmarks.scan_head_calls import parse_config
    from fusion import ssm_triton

    ssm_triton.DEFAULT_CONFIG = parse_config(ssm_triton, text)
    return ssm_triton.DEFAULT_CONFIG


def main(argv: list[str] | None = None) -> dict:
    config = cli(BenchConfig, args=argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.quick:
        config = dataclasses.replace(
            config, batch=2, d_inner=32, d_state=4, dtype="fp32", lengths=(16, 64),
            full_lengths=(16, 64),
            video_len=16, text_len=64, question_len=32, target_seconds=0.05, warmup=1,
            sweep=False, out=config.out.with_name(config.out.name + "_quick"))
    available = ssm.available_backends(device)
    if config.triton_config:
        set_triton_config(config.triton_config)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else
            platform.processor() or "cpu", "torch": torch.__version__,
            "triton": version_of("triton"), "mamba_ssm": version_of("mamba_ssm"),
            "available": available, "batch": config.batch, "d_inner": config.d_inner,
            "d_state": config.d_state, "dtype": config.dtype, "command": config.command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(meta), flush=True)
    started = time.perf_counter()
    deadline = started + config.max_seconds
    data = {"meta": meta, "results": []}
    config.out.parent.mkdir(parents=True, exist_ok=True)

    def save(stage: str) -> str:
        """Write what has been measured so far (each stage replaces the files): a run cut
        short (time limit, crash, Ctrl-C) still leaves its finished sections."""
        meta["stage"] = stage
        meta["elapsed_s"] = round(time.perf_counter() - started, 1)
        config.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        table = markdown(data)
        config.out.with_suffix(".md").write_text(table)
        return table

    stage = "started"
    try:
        run_lengths(config, device, available, deadline, data["results"])
        save(stage := "lengths done")
        run_two_modality(config, device, available, deadline, data.setdefault("two_modality", []))
        save(stage := "two-modality done")
        if config.sweep and "triton" in available:
            run_sweep(config, device, deadline, data.setdefault("sweep", []))
        stage = "complete"
    except BaseException as error:
        stage = f"interrupted after '{stage}': {type(error).__name__}: {error}"[:300]
        print(stage, flush=True)
        raise
    finally:
        table = save(stage)
        print(table, flush=True)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])

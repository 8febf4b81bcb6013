"""Extraction throughput of the AVION backbones: model alone, decoding alone, and both.

    python benchmarks/extract_backbones.py                  # on the GPU machine (H100)
    python benchmarks/extract_backbones.py --quick          # CPU smoke check, ~1 minute

Why: `make extract` over EK100 (~90 k segments per split pass) is the one expensive stage;
this says whether a run is bound by the model (compare achieved TFLOP/s with the FLOP
count from `FlopCounterMode`) or by decoding (DataLoader workers over EK100-like videos:
1920x1080, 60 fps H.264, segments of a few seconds at random places).

Three measurements per backbone at 16 frames x 224 px, bf16 autocast on CUDA:
- `model`: random clips already on the device; clips/s, achieved TFLOP/s, MFU vs
  `--peak-tflops`, peak memory.
- `decode`: the `ClipDataset` DataLoader alone (decode, resize, crop, normalise); clips/s.
- `end_to_end`: DataLoader feeding the model, as `python -m extract` runs; clips/s.

Results go to `benchmarks/results/extract_backbones.{json,md}` (`--quick` writes
`extract_backbones_quick.*` so a smoke check never overwrites GPU numbers). Synthetic
videos are cached in `--work-dir` and reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extract.backbones import build_backbone, measure_flops  # noqa: E402
from extract.video import ClipDataset  # noqa: E402
from features.config import cli  # noqa: E402


@dataclass
class BenchConfig:
    """Clips/s of the AVION backbones with and without decoding."""

    backbones: tuple[str, ...] = ("vitb", "vitl")
    batch_size: int = 32
    warmup: int = 3
    """untimed model iterations before timing (cuDNN/SDPA autotuning, allocator)"""
    iters: int = 20
    """timed model-alone iterations"""
    decode_clips: int = 1024
    """clips decoded in the decode-only and end-to-end runs"""
    workers: int = 12
    """DataLoader worker processes (one decoder thread each)"""
    tokens: str = "frame"
    dtype: str = "bf16"
    """bf16 (autocast) or fp32"""
    compile: bool = False
    """torch.compile the model first"""
    peak_tflops: float | None = None
    """dense peak of the device for MFU; default 989 (H100 SXM bf16) on CUDA bf16"""
    videos: int = 8
    video_seconds: float = 20.0
    video_fps: float = 60.0
    video_width: int = 1920
    video_height: int = 1080
    segment_seconds: tuple[float, float] = (1.0, 6.0)
    """segment lengths are uniform in this range (EK100's mean is ~3.5 s)"""
    work_dir: Path | None = None
    """where synthetic videos are written (default: a folder under the temp dir)"""
    out: Path | None = None
    """results path without suffix (default benchmarks/results/extract_backbones[_quick])"""
    quick: bool = False
    """CPU smoke check: vit-demo, small videos, a few batches"""
    seed: int = 0


QUICK = {
    "backbones": ("vit-demo",),
    "batch_size": 4,
    "warmup": 1,
    "iters": 2,
    "decode_clips": 16,
    "workers": 2,
    "videos": 2,
    "video_seconds": 6.0,
    "video_fps": 30.0,
    "video_width": 320,
    "video_height": 240,
}


# -------------------------------------------------------------------------- synthetic data


def write_video(path: Path, seconds: float, fps: float, width: int, height: int, seed: int) -> int:
    """An H.264 video with moving texture and noise (decoding cost like real footage)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, 0), 8, 1)
    n = int(round(seconds * fps))
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast", "g": str(int(fps))}
        for i in range(n):
            dy, dx = (i * 2) % 8, (i * 3) % 8
            frame = texture[dy : dy + height, dx : dx + width].copy()
            frame[:: 7 + i % 5] ^= np.uint8(16)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return n


def synthetic_segments(c: BenchConfig, root: Path) -> pd.DataFrame:
    """Videos in the EK100 layout (cached) and random segments over them."""
    lengths, todo = {}, []
    for v in range(c.videos):
        vid = f"P90_{v + 1:02d}"
        path = root / "P90" / "videos" / f"{vid}.MP4"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            todo.append((path, c.video_seconds, c.video_fps, c.video_width, c.video_height, v))
        lengths[vid] = int(round(c.video_seconds * c.video_fps))
    if todo:
        print(f"writing {len(todo)} synthetic videos to {root} ...", flush=True)
        with ProcessPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
            list(pool.map(write_video, *zip(*todo, strict=True)))
    rng = np.random.default_rng(c.seed)
    rows = []
    for i in range(c.decode_clips):
        vid = sorted(lengths)[i % len(lengths)]
        span = int(rng.uniform(*c.segment_seconds) * c.video_fps)
        span = min(span, lengths[vid] - 1)
        start = int(rng.integers(1, lengths[vid] - span + 1))
        rows.append((f"{vid}_{i}", "P90", vid, start, start + span))
    columns = ["narration_id", "participant_id", "video_id", "start_frame", "stop_frame"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------ measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(c: BenchConfig, device: torch.device) -> Any:
    dtype = torch.bfloat16 if c.dtype == "bf16" else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=c.dtype == "bf16")


def bench_model(c: BenchConfig, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    cfg = model.config
    x = torch.randn(c.batch_size, 3, cfg.num_frames, cfg.image_size, cfg.image_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast(c, device):
        for _ in range(c.warmup):
            model(x, c.tokens)
        sync(device)
        start = time.perf_counter()
        for _ in range(c.iters):
            model(x, c.tokens)
        sync(device)
        seconds = time.perf_counter() - start
    clips = c.batch_size * c.iters
    result = {"clips": clips, "seconds": round(seconds, 3), "clips_per_s": clips / seconds}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def loader(c: BenchConfig, data: ClipDataset, device: torch.device) -> DataLoader:
    return DataLoader(
        data,
        batch_size=c.batch_size,
        num_workers=c.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if c.workers else None,
        persistent_workers=False,
    )


def bench_loader(
    c: BenchConfig, data: ClipDataset, device: torch.device, model: torch.nn.Module | None
) -> dict[str, Any]:
    """Clips/s over the whole dataset, timed from the first batch on (worker start-up excluded)."""
    clips, failures, start = 0, 0, None
    with torch.inference_mode(), autocast(c, device):
        for batch, _, errors in loader(c, data, device):
            if start is None:
                start = time.perf_counter()
                first = len(errors)
            else:
                clips += len(errors)
            failures += sum(bool(e) for e in errors)
            if model is not None:
                model(batch.to(device, non_blocking=True), c.tokens)
        sync(device)
    seconds = time.perf_counter() - (start or time.perf_counter())
    return {
        "clips": clips,
        "seconds": round(seconds, 3),
        "clips_per_s": clips / seconds if seconds > 0 else float("nan"),
        "untimed_first_batch": first if start is not None else 0,
        "failures": failures,
    }


def environment(device: torch.device) -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "av": av.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "git_rev": rev,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(c: BenchConfig) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = c.peak_tflops
    if peak is None and device.type == "cuda" and c.dtype == "bf16":
        peak = 989.0
    work = c.work_dir or Path(tempfile.gettempdir()) / (
        f"mambavl_bench_videos_{c.video_width}x{c.video_height}_{c.video_fps:g}fps"
    )
    segments = synthetic_segments(c, work)
    results = []
    for name in c.backbones:
        model = build_backbone(name).to(device).eval()
        cfg = model.config
        flops = measure_flops(model)
        if c.compile:
            model = torch.compile(model)
        entry: dict[str, Any] = {
            "backbone": name,
            "frames": cfg.num_frames,
            "size": cfg.image_size,
            "tokens": c.tokens,
            "dtype": c.dtype,
            "batch_size": c.batch_size,
            "gflops_per_clip": round(flops / 1e9, 1),
        }
        print(f"[{name}] model alone ...", flush=True)
        entry["model"] = bench_model(c, model, device)
        tflops = flops * entry["model"]["clips_per_s"] / 1e12
        entry["model"]["achieved_tflops"] = round(tflops, 2)
        if peak:
            entry["model"]["mfu"] = round(tflops / peak, 3)
        data = ClipDataset(segments, work, size=cfg.image_size, num_frames=cfg.num_frames)
        print(f"[{name}] decoding alone ({c.workers} workers) ...", flush=True)
        entry["decode"] = bench_loader(c, data, device, None)
        print(f"[{name}] decoding + model ...", flush=True)
        entry["end_to_end"] = bench_loader(c, data, device, model)
        results.append(entry)
        print(json.dumps(entry), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(c).items()},
        "peak_tflops": peak,
        "environment": environment(device),
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Extraction throughput: AVION backbones",
        "",
        f"{env['device']}, torch {env['torch']}, PyAV {env['av']}, {env['cpus']} CPUs, "
        f"git {env['git_rev']}, {env['time']}. "
        f"Decoding: {report['config']['workers']} DataLoader workers over synthetic "
        f"{report['config']['video_width']}x{report['config']['video_height']} "
        f"{report['config']['video_fps']:g} fps H.264. FLOPs from `FlopCounterMode` "
        "(2 per multiply-add).",
        "",
        "| backbone | clip | batch | GFLOPs/clip | model clips/s | TFLOP/s | MFU "
        "| decode clips/s | end-to-end clips/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        m = r["model"]
        mfu = f"{m['mfu']:.1%}" if "mfu" in m else "-"
        lines.append(
            f"| {r['backbone']} | {r['frames']}x{r['size']} {r['dtype']} | {r['batch_size']} "
            f"| {r['gflops_per_clip']} | {m['clips_per_s']:.1f} | {m['achieved_tflops']} "
            f"| {mfu} | {r['decode']['clips_per_s']:.1f} | {r['end_to_end']['clips_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> dict[str, Any]:
    c = cli(BenchConfig, args=args)
    if c.quick:
        c = dataclasses.replace(c, **QUICK)
    out = c.out or ROOT / "benchmarks" / "results" / (
        "extract_backbones_quick" if c.quick else "extract_backbones"
    )
    report = run(c)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()

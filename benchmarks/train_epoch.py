"""Seconds per training epoch of each fusion head on EK100-sized features (GPU).

    python benchmarks/train_epoch.py                       # H100: all heads, EK100 sizes
    python benchmarks/train_epoch.py --heads mamba --backends torch mamba_ssm
    python benchmarks/train_epoch.py --quick               # CPU smoke check

Why: the training issue's goal is that a 100-epoch run on EK100-sized cached features takes
minutes, so an epoch must take seconds. This runs the real `fusion.train.train` (GPU-resident
split, shuffled batching on the device, bf16 autocast, AdamW, validation with the EK100
metrics, checkpoints; MLflow tracking off) on random tensors of the real shapes (67,217 training and
9,668 validation clips; video 16 x 1024; two questions of 32 x 768) generated on the device in
place of the feature store. Reported per head (and scan backend for Mamba): the epoch's
seconds (`epoch_seconds`: training and validation, the run history's field; mean of the
epochs after the first, which holds compilation and allocator warm-up), the part of them
spent validating (`val_seconds`: scoring the validation split and its metrics, the history's
field, mean over the same epochs), and the peak GPU memory.

Outside the epochs' own seconds: writing each epoch's checkpoint ("checkpoint s/epoch",
timed by `fusion.train`: last.pt, and best.pt when the epoch improved) and the one-time rest
("setup s": loading, building, the end of the run). The 100-epoch estimate is
100 x (steady epoch + checkpoint) + setup.

Results go to `benchmarks/results/train_epoch.{json,md}` (`--quick`: `train_epoch_quick.*`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sweep_throughput import SHAPES_ENV, device_name, random_features  # noqa: E402
from features.config import cli  # noqa: E402


@dataclass
class EpochBenchConfig:
    """Training-epoch time of each head on EK100-shaped random features."""

    heads: tuple[str, ...] = ("mamba", "mlp", "transformer_6x4", "transformer_12x12")
    backends: tuple[str, ...] = ("auto",)
    """Scan backends of the Mamba head (auto, torch, mamba_ssm, ...)."""
    epochs: int = 3
    train_clips: int = 67217
    val_clips: int = 9668
    video_shape: tuple[int, int] = (16, 1024)
    text_shape: tuple[int, int, int] = (2, 32, 768)
    batch_size: int = 128
    compile: bool = False
    """torch.compile the heads (TrainConfig.compile)."""
    cuda_graphs: bool = False
    """Replay full-batch steps as CUDA graphs (TrainConfig.cuda_graphs)."""
    quick: bool = False
    """CPU smoke check: a few hundred clips, small widths, 2 epochs."""
    out: Path | None = None


QUICK = {"epochs": 2, "train_clips": 256, "val_clips": 64, "video_shape": (16, 32),
         "text_shape": (2, 8, 32), "batch_size": 64}


def bench_one(c: EpochBenchConfig, fusion: str, backend: str, folder: Path) -> dict[str, Any]:
    import torch

    import fusion.train as fusion_train

    fusion_train.load_features = random_features
    head = fusion_train.HeadConfig(d_model=48 if c.quick else None,
                                   backend=backend if fusion == "mamba" else None)
    config = fusion_train.TrainConfig(
        fusion=fusion, head=head, epochs=c.epochs, batch_size=c.batch_size, backbone="random",
        out=folder / "runs", run_name=f"{fusion}-{backend}", experiment="train-epoch",
        device="auto", track=False, compile=c.compile,
        cuda_graphs=c.cuda_graphs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = fusion_train.train(config)
    wall = time.perf_counter() - started
    history = torch.load(Path(result["folder"]) / "last.pt", weights_only=True)["state"]["history"]
    steady_records = history[1:] or history[:1]
    steady = [r["epoch_seconds"] for r in steady_records]
    validating = [r["val_seconds"] for r in steady_records]
    per_save = result["checkpoint_seconds"] / len(history)
    setup = wall - sum(r["epoch_seconds"] for r in history) - result["checkpoint_seconds"]
    return {
        "head": fusion + (" (compiled)" if c.compile else "")
        + (" (CUDA graph)" if c.cuda_graphs else ""),
        "backend": backend if fusion == "mamba" else "-",
        "epoch_seconds": round(sum(steady) / len(steady), 3),
        "val_seconds": round(sum(validating) / len(validating), 3),
        "first_epoch_seconds": round(history[0]["epoch_seconds"], 3),
        "run_seconds": round(wall, 2),
        "checkpoint_seconds_per_epoch": round(per_save, 3),
        "setup_seconds": round(setup, 2),
        "100_epochs_minutes_estimate": round(
            (100 * (sum(steady) / len(steady) + per_save) + setup) / 60, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available() else 0.0,
    }


def main(argv: list[str] | None = None) -> Path:
    c = cli(EpochBenchConfig, args=argv)
    if c.quick:
        c = dataclasses.replace(c, **QUICK)
    shapes = {k: getattr(c, k) for k in ("train_clips", "val_clips", "video_shape", "text_shape")}
    os.environ[SHAPES_ENV] = json.dumps(shapes)
    out = c.out or ROOT / "benchmarks" / "results" / ("train_epoch_quick" if c.quick
                                                        else "train_epoch")
    rows: list[dict[str, Any]] = []
    report = {"device": device_name(), "config": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in dataclasses.asdict(c).items()},
              "command": "python benchmarks/train_epoch.py " + " ".join(argv or sys.argv[1:]),
              "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in c.heads:
            for backend in (c.backends if fusion == "mamba" else ("auto",)):
                rows.append(bench_one(c, fusion, backend, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                write_report(report, c, out)  # after every row: a cut-off run keeps its rows
    return out


def write_report(report: dict[str, Any], c: EpochBenchConfig, out: Path) -> None:
    rows = report["rows"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Training epoch time on {report['device']}", "",
             f"`{report['command']}`; {c.train_clips} train / {c.val_clips} val clips, video "
             f"{c.video_shape}, text {c.text_shape}, batch {c.batch_size}, bf16 autocast on CUDA.",
             "", "| head | scan backend | s/epoch (train + val) | val s | first epoch s "
             "| checkpoint s/epoch | setup s | 100 epochs (min, est.) | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['head']} | {r['backend']} | {r['epoch_seconds']} | {r['val_seconds']} | "
              f"{r['first_epoch_seconds']} | {r['checkpoint_seconds_per_epoch']} | "
              f"{r['setup_seconds']} | "
              f"{r['100_epochs_minutes_estimate']} | {r['peak_memory_gib']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

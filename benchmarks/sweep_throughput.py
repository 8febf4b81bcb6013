"""Sweep throughput: trials per hour of a Mamba-head sweep, one trial at a time vs several.

    python benchmarks/sweep_throughput.py                   # on the GPU machine (H100)
    python benchmarks/sweep_throughput.py --parallel 4      # only this setting's row
    python benchmarks/sweep_throughput.py --quick           # CPU smoke check, ~1 minute

Why: a small fusion head leaves an H100 mostly idle (kernel launches, Python, validation),
so `python -m sweeps --parallel K` keeps K trials in flight on one GPU as K processes. This
measures what that buys on EK100-sized features: random tensors with the real shapes
(67,217 training and 9,668 validation clips; video 16 x 1024; two questions of 32 x 768),
generated on the device inside each trial in place of the feature store (`train_random`),
then the real `fusion.train.train`, the real sweep loop and Optuna/MLflow bookkeeping.

The head's shape is fixed (d_model, d_state, expand, depth, batch size: `BenchConfig`) so
every trial costs the same and only the learning-rate-like knobs are sampled. Reported per
setting: wall-clock trials/hour (process start included), steady-state trials/hour (first
trial start to last trial end), mean seconds per trial and per epoch, peak GPU memory per
process, and the speed-up over one trial at a time.

Results go to `benchmarks/results/sweep_throughput.{json,md}` (`--quick` writes
`sweep_throughput_quick.*`); a run with some `--parallel` values updates only those rows.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402

SHAPES_ENV = "SWEEP_BENCH_SHAPES"


@dataclass
class BenchConfig:
    """Trials/hour of a Mamba sweep with K trials in flight on one GPU."""

    parallel: tuple[int, ...] = (1, 2, 4)
    trials_per_process: int = 1
    """Each of the K processes runs this many trials (K x this per setting)."""
    epochs: int = 20
    train_clips: int = 67217
    val_clips: int = 9668
    video_shape: tuple[int, int] = (16, 1024)
    text_shape: tuple[int, int, int] = (2, 32, 768)
    """questions x tokens x width"""
    batch_size: int = 128
    d_model: int = 1024
    d_state: int = 16
    expand: int = 2
    depth: int = 1
    quick: bool = False
    """CPU smoke check: tiny shapes, 2 epochs, K in (1, 2)."""
    out: Path | None = None
    """results path without suffix (default benchmarks/results/sweep_throughput[_quick])"""
    work_dir: Path | None = None
    """study, MLflow store and trial folders (default: a temporary folder)"""


QUICK = {"parallel": (1, 2), "trials_per_process": 1, "epochs": 2, "train_clips": 256,
         "val_clips": 64, "video_shape": (4, 32), "text_shape": (2, 8, 32), "batch_size": 32,
         "d_model": 32, "d_state": 8, "depth": 1}


# --- random features in place of the store (runs inside each worker process) ----------------

def random_tensors(n: int, video_shape: Any, text_shape: Any, device: Any,
                   generator: Any) -> tuple[dict, dict, Any, Any]:
    """n EK100-shaped random clips on `device` (fp16 like the stores on CUDA): inputs, masks
    (questions ragged), verb and noun labels over 97 x 300."""
    import torch

    frames, width = video_shape
    questions, tokens, text_width = text_shape
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    inputs = {"video": torch.randn(n, frames, width, device=device, dtype=dtype,
                                   generator=generator)}
    masks = {"video": torch.ones(n, frames, dtype=torch.bool, device=device)}
    for q in ("verb_question", "noun_question")[:questions]:
        inputs[q] = torch.randn(n, tokens, text_width, device=device, dtype=dtype,
                                generator=generator)
        length = torch.randint(tokens // 4, tokens + 1, (n, 1), device=device,
                               generator=generator)
        masks[q] = torch.arange(tokens, device=device) < length
    verb, noun = (torch.randint(0, c, (n,), device=device, generator=generator)
                  for c in (97, 300))
    return inputs, masks, verb, noun


def random_features(config: Any, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """EK100-shaped random splits on `device` in place of the stores (`random_tensors`)."""
    import torch

    from fusion.data import FeatureSplit

    shapes = json.loads(os.environ[SHAPES_ENV])
    generator = torch.Generator(device).manual_seed(config.seed)

    def split(n: int) -> FeatureSplit:
        inputs, masks, verb, noun = random_tensors(n, shapes["video_shape"],
                                                   shapes["text_shape"], device, generator)
        return FeatureSplit([f"r{i}" for i in range(n)], inputs, masks, verb=verb, noun=noun)

    train, val = split(shapes["train_clips"]), split(shapes["val_clips"])
    info = {"num_verbs": 97, "num_nouns": 300, "dataset": "random-ek100-shapes",
            "metric_extra": {}, "manifests": {},
            "profile_shapes": {k: tuple(v.shape[1:]) for k, v in train.inputs.items()}}
    return train, val, info


def train_random(config: Any, on_epoch: Any = None) -> dict[str, Any]:
    """fusion.train.train on random features; records peak GPU memory in the run folder."""
    import torch

    import fusion.train as fusion_train

    fusion_train.load_features = random_features
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = fusion_train.train(config, on_epoch=on_epoch)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    Path(result["folder"], "bench.json").write_text(json.dumps({"peak_memory_bytes": peak}))
    return result


# --- driver --------------------------------------------------------------------------------

def space_file(c: BenchConfig, folder: Path) -> Path:
    """The Mamba space with the cost-determining knobs pinned to one value each."""
    fixed = {"batch_size": c.batch_size, "d_model": c.d_model, "d_state": c.d_state,
             "expand": c.expand, "depth": c.depth}
    lines = ["heads:", "  mamba:", "    params:",
             "      peak_lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}",
             "      ssm_peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
             "      weight_decay: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}",
             "      label_smoothing: {type: float, low: 0.0, high: 0.3}"]
    for name, value in fixed.items():
        field = name if name == "batch_size" else f"head.{name}"
        lines.append(f"      {name}: {{type: categorical, choices: [{value}], field: {field}}}")
    path = folder / "bench_space.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_setting(c: BenchConfig, parallel: int, folder: Path) -> dict[str, Any]:
    import optuna
    import pandas as pd

    trials = parallel * c.trials_per_process
    study = f"bench-p{parallel}"
    storage = f"sqlite:///{folder / 'bench.db'}"
    cmd = [sys.executable, "-m", "sweeps", "--fusion", "mamba", "--preset", "mambavl-vitl",
           "--backbone", "random", "--study", study, "--trials", str(trials),
           "--epochs", str(c.epochs), "--parallel", str(parallel), "--storage", storage,
           "--out", str(folder / "runs"), "--tracking-uri", f"sqlite:///{folder / 'mlruns.db'}",
           "--experiment", "sweep-throughput", "--pruner", "none",
           "--space", str(space_file(c, folder)), "--no-summary",
           "--train-fn", "benchmarks.sweep_throughput:train_random"]
    shapes = {k: getattr(c, k) for k in ("train_clips", "val_clips", "video_shape",
                                           "text_shape")}
    env = {**os.environ, SHAPES_ENV: json.dumps(shapes),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - started

    done = optuna.load_study(study_name=study, storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    span = (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in done)).total_seconds()
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    epoch_seconds, peaks = [], []
    for t in done:
        run = Path(t.user_attrs["run_folder"])
        if (run / "history.csv").exists():
            epoch_seconds += pd.read_csv(run / "history.csv")["epoch_seconds"].tolist()
        if (run / "bench.json").exists():
            peaks.append(json.loads((run / "bench.json").read_text())["peak_memory_bytes"])
    return {
        "parallel": parallel, "trials": len(done), "epochs": c.epochs,
        "wall_seconds": round(wall, 2),
        "trials_per_hour_wall": round(len(done) * 3600 / wall, 2),
        "trials_per_hour_steady": round(len(done) * 3600 / span, 2),
        "mean_trial_seconds": round(sum(per_trial) / len(per_trial), 2),
        "mean_epoch_seconds": round(sum(epoch_seconds) / max(len(epoch_seconds), 1), 3),
        "peak_memory_gib_per_process": round(max(peaks, default=0) / 2**30, 2),
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = sorted(report["results"], key=lambda r: r["parallel"])
    base = next((r for r in rows if r["parallel"] == 1), None)
    lines = [
        "# Sweep throughput: Mamba head, trials in flight on one device",
        "",
        f"Device: {report['device']}. Features: random, {report['config']['train_clips']} "
        f"train / {report['config']['val_clips']} val clips, video "
        f"{tuple(report['config']['video_shape'])}, questions "
        f"{tuple(report['config']['text_shape'])}. Head: d_model {report['config']['d_model']}, "
        f"d_state {report['config']['d_state']}, expand {report['config']['expand']}, depth "
        f"{report['config']['depth']}, batch {report['config']['batch_size']}.",
        "",
        "| in flight | trials | epochs | s/epoch | s/trial | trials/h (steady) "
        "| trials/h (wall) | speed-up | peak GiB/process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = (f"{r['trials_per_hour_steady'] / base['trials_per_hour_steady']:.2f}x"
                   if base else "n/a")
        lines.append(
            f"| {r['parallel']} | {r['trials']} | {r['epochs']} | {r['mean_epoch_seconds']} "
            f"| {r['mean_trial_seconds']} | {r['trials_per_hour_steady']} "
            f"| {r['trials_per_hour_wall']} | {speedup} | {r['peak_memory_gib_per_process']} |")
    lines += ["", "Steady: first trial start to last trial end (excludes process start-up). "
              "Wall: whole `python -m sweeps` command. Speed-up is steady vs 1 in flight.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    c = cli(BenchConfig, args=argv)
    if c.quick:
        c = BenchConfig(**{**asdict(c), **QUICK})
    out = c.out or ROOT / "benchmarks" / "results" / (
        "sweep_throughput_quick" if c.quick else "sweep_throughput")
    previous = (json.loads(out.with_suffix(".json").read_text())
                if out.with_suffix(".json").exists() else {})
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        folder = c.work_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = [run_setting(c, k, folder) for k in c.parallel]
    for r in results:
        print(json.dumps(r))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()}
    same = {k: v for k, v in config.items() if k not in ("parallel", "out", "work_dir")}
    old = previous.get("config", {})
    comparable = previous.get("device") == device_name() and all(
        json.dumps(old.get(k)) == json.dumps(v) for k, v in same.items())
    kept = [r for r in previous.get("results", [])
            if comparable and r["parallel"] not in c.parallel]
    report = {"device": device_name(), "config": config, "results": kept + results}
    write_report(report, out)
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()

"""Read throughput of the feature store: random batches, whole-split loads, shard streaming.

    python benchmarks/features_read.py                 # EK100-val-sized frame tokens
    python benchmarks/features_read.py --clips 67217 --batches 400 \
        --out benchmarks/results/features_read_train     # EK100 train size (2.2 GB)
    python benchmarks/features_read.py --quick         # CPU smoke check, seconds

Why: heads train for hundreds of epochs on cached features, so reads must never be the
bottleneck. A store of random float16 frame tokens with the real shape (16 x 1024 per clip,
ViT-L) is written with `features.store`, then read:
- `random_batch_store`: `FeatureStore.read` of random batches of 128 rows (the raw
  memory-mapped shard path), clips/s;
- `random_batch_zarr`: the same batches through zarr itself (`array.oindex`), the
  baseline the raw path avoids;
- `load_cpu` / `load_cuda`: `FeatureStore.load(device)` of the whole split;
- `stream`: `iter_shards(prefetch=2)` over the whole split.
Reads run with the files in the page cache (the store was just written; a second pass of
each measurement is timed), i.e. the steady state of a training run; cold-disk numbers
depend on the disk. Results: `benchmarks/results/features_read{,_quick}.{json,md}`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402
from features.store import ArraySpec, FeatureStore, make_manifest, open_writer  # noqa: E402


@dataclass
class BenchConfig:
    """Feature-store read throughput on random EK100-shaped frame tokens."""

    clips: int = 9668
    """Rows in the store (EK100 validation: 9,668; train: 67,217)."""
    tokens: int = 16
    width: int = 1024
    shard_rows: int = 256
    batch: int = 128
    batches: int = 200
    """Random batches timed per measurement."""
    work_dir: Path | None = None
    """Where the store is written (default: a temp folder, removed afterwards)."""
    quick: bool = False
    """Small store and few batches: a smoke check (writes features_read_quick.*)."""
    out: Path | None = None


def timed(fn: Any, repeat: int = 2) -> float:
    """Seconds of the last of `repeat` runs (the first warms the page cache)."""
    seconds = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds


def write_store(path: Path, c: BenchConfig) -> float:
    ids = [f"P{i // 1000:02d}_{i % 1000:03d}" for i in range(c.clips)]
    writer = open_writer(
        path, ids, {"tokens": ArraySpec((c.tokens, c.width))}, make_manifest(bench=True),
        "video", c.shard_rows,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for shard in writer.pending_shards():
        lo, hi = writer.shard_range(shard)
        data = rng.standard_normal((hi - lo, c.tokens, c.width), dtype=np.float32)
        writer.write_shard(shard, {"tokens": data.astype(np.float16)})
    return time.perf_counter() - start


def run(c: BenchConfig) -> dict[str, Any]:
    if c.quick:
        c = dataclasses.replace(c, clips=min(c.clips, 2048), batches=min(c.batches, 20))
    work = Path(tempfile.mkdtemp(dir=c.work_dir))
    path = work / "video-bench.zarr"
    row_mb = c.tokens * c.width * 2 / 2**20
    results: dict[str, Any] = {}
    try:
        write_s = write_store(path, c)
        results["write"] = {"clips_per_s": c.clips / write_s, "seconds": write_s}
        store = FeatureStore(path)
        rng = np.random.default_rng(1)
        batches = [rng.choice(c.clips, c.batch, replace=False) for _ in range(c.batches)]
        clips = c.batch * c.batches

        def store_batches() -> None:
            for index in batches:
                store.read(index, ["tokens"])

        array = store.group["tokens"]

        def zarr_batches() -> None:
            for index in batches:
                order = np.sort(index)
                array.oindex[order]

        for name, fn, n in (
            ("random_batch_store", store_batches, clips),
            ("random_batch_zarr", zarr_batches, clips),
            ("load_cpu", lambda: store.load("cpu"), c.clips),
            ("stream", lambda: sum(len(s.narration_ids) for s in store.iter_shards()), c.clips),
        ):
            seconds = timed(fn)
            results[name] = {"clips_per_s": n / seconds, "MB_per_s": n * row_mb / seconds}
            print(name, json.dumps(results[name]), flush=True)
        if torch.cuda.is_available():
            seconds = timed(lambda: store.load("cuda"))
            results["load_cuda"] = {
                "clips_per_s": c.clips / seconds,
                "MB_per_s": c.clips * row_mb / seconds,
            }
            print("load_cuda", json.dumps(results["load_cuda"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(c).items()
        },
        "store_mb": c.clips * row_mb,
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    lines = [
        "# Feature store read throughput",
        "",
        f"{c['clips']} clips x {c['tokens']} x {c['width']} float16 ({report['store_mb']:.0f} MB), "
        f"shards of {c['shard_rows']}, random batches of {c['batch']} rows; page cache warm.",
        f"Host: {report['host']['platform']}, {report['host']['cpus']} CPUs, "
        f"GPU {report['host']['gpu']}, torch {report['host']['torch']}; {report['created']}.",
        "",
        "| measurement | clips/s | MB/s |",
        "|---|---:|---:|",
    ]
    for name, r in report["results"].items():
        mb = f"{r['MB_per_s']:.0f}" if "MB_per_s" in r else ""
        label = "write (incl. drawing the random data)" if name == "write" else name
        lines.append(f"| {label} | {r['clips_per_s']:,.0f} | {mb} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    c = cli(BenchConfig, args=argv)
    report = run(c)
    out = c.out or ROOT / "benchmarks" / "results" / (
        "features_read_quick" if c.quick else "features_read"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

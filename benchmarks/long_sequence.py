"""A training epoch on long token sequences streamed from Zarr, per head, against length L.

    # the H200 run (one call, 227 s; benchmarks/results/long_sequence_h200.md):
    python benchmarks/long_sequence.py --lengths 16 256 1024 3137 --clips 1024 \
        --max-seconds 520 --out benchmarks/results/long_sequence_h200
    # the default 4096 clips take longer; split lengths or heads over calls with --store DIR
    # (stores kept and reused) and join the JSONs:
    python benchmarks/long_sequence.py --merge a.json b.json --out benchmarks/results/long_sequence
    # CPU smoke run (not a speed figure), about 50 s on 2 busy cores:
    python benchmarks/long_sequence.py --quick --out benchmarks/results/long_sequence_cpu_quick

Why (issue 18): the paper's efficiency claim is that Mamba fusion scales linearly with the
number of tokens and Transformer fusion quadratically; `fusion_heads.py` measures one step on
device-resident tensors, this measures it end to end: a training epoch whose features are read
from a real feature store through the harness's streamed path.

What runs, per sequence length L and head (mamba with its default scan backend, mlp,
transformer_6x4, transformer_12x12):
- stores: written with `features.store.open_writer` into `<store>/long-seq/features/...` beside
  annotations from `extract.synthetic` (N train clips, `--val-clips` validation clips, 8 verb /
  12 noun classes). The video store at each L is written on its own (`video-bench-L<L>.zarr`,
  row shape (L, D) float16, shards sized as `extract video` sizes them); the text store holds
  two questions of 32 x 768 tokens with masks, as `extract text` writes them. Token layout:
  L = 1 + 16 x 196 = 3137 is AVION ViT-B/16's `cls+patch` store (`extract video --tokens
  cls+patch`: the class token, then frame-major patch tokens; `--backbone vitl`: 1 + 16 x 256
  = 4097 x 1024), L = 16 is its `frame` store, and lengths in between stand for a token-strided
  subsample of `cls+patch`. Values are random (one random shard repeated: content does not
  change the speed), so a store at each L is written rather than one strided at read time,
  which `StreamedSplit` does not do. Stores are deleted after their L unless `--store DIR`.
- end to end: `fusion.train.train` (stream="always", track=False, progress="quiet", its
  defaults otherwise: AdamW, bf16 autocast and CUDA graphs on CUDA), `--epochs` epochs; clips/s
  is train clips / the last epoch's `epoch_seconds`, which includes validating the small
  validation split. Peak GPU memory of that run in MiB.
- breakdown: a serial, instrumented pass over the same `StreamedSplit` (its window reads,
  `StreamedSplit.read_window`, the host part: Zarr shards memory-mapped into host tensors), the
  host-to-device copy of each window, and the step (forward, backward, optimizer: the step
  function `fusion.train` uses, CUDA graph included), each timed with CUDA synchronisation.
  Without the prefetch thread, so read + h2d + step is more than the end-to-end epoch when the
  reader overlaps the step; the first `--warmup-steps` steps (warm-up, compilation, graph
  capture) are not timed. It runs before the end-to-end run, so that run finds the kernels compiled.
Reads come from the page cache (the store was just written), the steady state of a run whose
split fits in host memory; a cold disk is slower. Points that run out of memory or exceed
`--max-epoch-seconds` are recorded with that status and the head's longer lengths are skipped;
points past `--max-seconds` are recorded as not run. Results are rewritten after every point.

Runtime measured on one H200 (16 host cores): the whole 1024-clip run above, four lengths
and four heads, 227 s. At L = 3137 the host's store read is the largest share of Mamba's and
the MLP's serial time (58 %, 81 %), the step of the Transformers' (66 %, 81 %): the stream is
the next lever for the linear-time heads (on the 2-core CPU machine 84 % of a store read was
its NaN/inf check, `_check_finite`; not profiled on the GPU host). The
default 4096 clips make the L = 3137 store 19.7 GB (4096 x 3137 x 768 fp16); `--max-seconds`
(default 560) records the points it cannot reach as not run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extract.backbones import backbone_config  # noqa: E402
from extract.run import auto_shard_rows  # noqa: E402
from extract.synthetic import (  # noqa: E402
    SyntheticConfig,
    plan_segments,
    plan_videos,
    write_annotations,
)
from features.annotations import load_split as load_annotations  # noqa: E402
from features.config import cli  # noqa: E402
from features.errors import HarnessError  # noqa: E402
from features.store import ArraySpec, make_manifest, open_writer, store_path  # noqa: E402

HEADS = ("mamba", "mlp", "transformer_6x4", "transformer_12x12")
TEXT_STORE = "bench-text"


@dataclass
class LongSeqConfig:
    """Streamed training epoch of every fusion head against video length L (issue 18)."""

    heads: tuple[str, ...] = HEADS
    backbone: Literal["vitb", "vitl"] = "vitb"
    """AVION backbone whose `cls+patch` layout (length and width) the stores take."""
    lengths: tuple[int, ...] | None = None
    """Video tokens per clip (default: 16 64 256 1024 and the backbone's full cls+patch)."""
    clips: int = 4096
    """Train clips (a multiple of --val-clips)."""
    val_clips: int = 64
    batch: int = 32
    epochs: int = 1
    """Epochs of the end-to-end run; clips/s is from the last."""
    video_dim: int | None = None
    """Video width (default: the backbone's)."""
    text_dim: int = 768
    question_len: int = 32
    d_model: int | None = None
    """Head width (default: each head's own, from the video width)."""
    warmup_steps: int = 4
    """Steps of the instrumented pass left untimed (allocator, autotuning, graph capture)."""
    device: str = "auto"
    threads: int | None = None
    """torch CPU threads (default: torch's choice; --quick: 1, tiny ops on a shared machine)."""
    store: Path | None = None
    """Folder for the dataset and stores, kept and reused (default: a temp folder, removed)."""
    max_epoch_seconds: float = 300.0
    """A serial pass slower than this ends the head's series (longer L skipped)."""
    max_seconds: float = 560.0
    """Whole-run budget; points past it are recorded as not run."""
    out: Path = ROOT / "benchmarks" / "results" / "long_sequence"
    """Output stem: .json, .md and .png."""
    merge: tuple[Path, ...] = ()
    """Merge these result JSONs (same settings, other lengths or heads) into --out; runs nothing."""
    quick: bool = False
    """CPU smoke run: 64 clips, L in 16 64 256, widths 32/16, batch 8, tiny heads."""
    command: str = field(default_factory=lambda: " ".join(["python", *sys.argv]))


QUICK = {"clips": 64, "val_clips": 16, "lengths": (16, 64, 256), "video_dim": 32,
         "text_dim": 16, "question_len": 8, "batch": 8, "d_model": 24, "device": "cpu",
         "warmup_steps": 1, "threads": 1,
         "max_seconds": 120.0}


def layout(config: LongSeqConfig) -> tuple[int, int, str]:
    """Full cls+patch length, video width and a description of the token layout."""
    bb = backbone_config(config.backbone)
    full = 1 + bb.num_frames * bb.patches_per_frame
    width = config.video_dim or bb.width
    text = (f"AVION {config.backbone} `cls+patch` ({full} = 1 + {bb.num_frames} x "
            f"{bb.patches_per_frame} tokens); L={bb.num_frames} is the `frame` layout, other "
            f"L stand for a token-strided cls+patch; width {width}")
    return full, width, text


# ---------------------------------------------------------------------------- the dataset


def write_dataset(config: LongSeqConfig, data: Path) -> dict[str, list[str]]:
    """EK100-format annotations (N train, val_clips validation segments) and the text stores;
    returns each split's narration ids in annotation order."""
    if config.clips % config.val_clips:
        raise HarnessError(f"--clips {config.clips} is not a multiple of --val-clips "
                           f"{config.val_clips}: pick multiples (e.g. 4096 and 64)")
    videos = config.clips // config.val_clips
    synthetic = SyntheticConfig(out=data, videos=videos + 1, videos_per_participant=videos,
                                val_videos=1, test_videos=0,
                                segments_per_video=config.val_clips, workers=1)
    plan = plan_videos(synthetic)
    segments, lengths = plan_segments(synthetic, plan, np.random.default_rng(0))
    write_annotations(synthetic, plan, segments, lengths)
    ids = {split: load_annotations(data / "annotations", split).segments["narration_id"]
           .astype(str).tolist() for split in ("train", "validation")}
    rng = np.random.default_rng(1)
    q, d = config.question_len, config.text_dim
    for split, rows in ids.items():
        mask = np.arange(q) < rng.integers(q // 2, q + 1, size=(len(rows), 1))
        tokens = rng.standard_normal((len(rows), q, d), dtype=np.float32).astype(np.float16)
        tokens[~mask] = 0
        arrays = {"verb_tokens": tokens, "verb_mask": mask, "noun_tokens": tokens[::-1].copy(),
                  "noun_mask": mask[::-1].copy()}
        write_store(store_path(data / "features", data.name, split, "text", TEXT_STORE), rows,
                    arrays, "text", split)
    return ids


def write_store(path: Path, ids: list[str], arrays: dict[str, np.ndarray], kind: str,
                split: str, **manifest: Any) -> None:
    """A complete store of `arrays` (a block of rows repeated when shorter than `ids`);
    an existing complete store of the same settings is reused as it is."""
    specs = {k: ArraySpec(v.shape[1:], str(v.dtype)) for k, v in arrays.items()}
    row_bytes = sum(int(np.prod(s.row_shape)) * np.dtype(s.dtype).itemsize
                    for s in specs.values())
    writer = open_writer(path, ids, specs,
                         make_manifest(extractor="benchmarks/long_sequence.py (random values)",
                                       split=split, **manifest), kind,
                         shard_rows=auto_shard_rows(row_bytes, None))
    for shard in writer.pending_shards():
        start, stop = writer.shard_range(shard)
        block = {k: v[np.arange(start, stop) % len(v)] for k, v in arrays.items()}
        writer.write_shard(shard, block)


def write_video(config: LongSeqConfig, data: Path, ids: dict[str, list[str]], length: int,
                width: int) -> float:
    """Both splits' video stores at `length` tokens; seconds it took."""
    started = time.perf_counter()
    rows = auto_shard_rows(length * width * 2, None)
    block = np.random.default_rng(length).standard_normal(
        (min(rows, config.clips), length, width), dtype=np.float32).astype(np.float16)
    for split, split_ids in ids.items():
        write_store(video_path(data, split, length), split_ids, {"tokens": block}, "video",
                    split, tokens="cls+patch (benchmark)", token_shape=[length, width],
                    clip={"task": "recognition"})
    return time.perf_counter() - started


def video_path(data: Path, split: str, length: int) -> Path:
    return store_path(data / "features", data.name, split, "video", f"bench-L{length}")


# ------------------------------------------------------------------------- the measurements


def train_config(config: LongSeqConfig, data: Path, head: str, length: int, runs: Path):
    from fusion.train import HeadConfig, TrainConfig

    return TrainConfig(fusion=head, data=data, backbone="bench", video_store=f"bench-L{length}",
                       text_store=TEXT_STORE, stream="always", track=False, progress="quiet",
                       epochs=config.epochs, batch_size=config.batch, out=runs,
                       run_name=f"{head}-L{length}", restart=True, device=config.device,
                       head=HeadConfig(d_model=config.d_model))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def breakdown(train_cfg: Any, warmup_steps: int) -> dict[str, Any]:
    """Serial pass over the streamed split: seconds in window reads (host), host-to-device
    copies and steps, CUDA-synchronised; the first `warmup_steps` steps untimed."""
    import functools

    from fusion.data import FeatureSplit, StreamedSplit, load_features
    from fusion.graphs import GraphedTrainStep
    from fusion.train import build_training, graph_safe, resolve_device, train_step

    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    split, _, info = load_features(train_cfg, device)
    if not isinstance(split, StreamedSplit):
        raise HarnessError("the train split was not streamed: fusion.data ignored stream=always")
    steps = math.ceil(len(split) / train_cfg.batch_size)
    model, optimizer, scheduler = build_training(train_cfg, split.dims, info, steps, device)
    amp = train_cfg.amp and device.type == "cuda"
    if train_cfg.cuda_graphs and device.type == "cuda" and graph_safe(train_cfg):
        step = GraphedTrainStep(model, optimizer, scheduler, train_cfg, amp)
    else:
        step = functools.partial(train_step, model, optimizer=optimizer, scheduler=scheduler,
                                 config=train_cfg, amp=amp)
    model.train()
    generator = torch.Generator().manual_seed(0)
    seconds = {"read": 0.0, "h2d": 0.0, "step": 0.0}
    clips = timed_clips = steps_done = 0
    try:
        for start in range(0, len(split), split.window_rows):
            stop = min(start + split.window_rows, len(split))
            tick = time.perf_counter()
            inputs, masks = split.read_window(start, stop)
            seconds["read"] += time.perf_counter() - tick
            tick = time.perf_counter()
            inputs = {k: v.to(device) for k, v in inputs.items()}
            masks = {k: v.to(device) for k, v in masks.items()}
            sync(device)
            seconds["h2d"] += time.perf_counter() - tick
            clips += stop - start
            window = FeatureSplit(split.narration_ids[start:stop], inputs, masks,
                                  split.verb[start:stop], split.noun[start:stop])
            for batch in window.batches(train_cfg.batch_size, generator):
                tick = time.perf_counter()
                step(batch)
                sync(device)
                if steps_done >= warmup_steps:
                    seconds["step"] += time.perf_counter() - tick
                    timed_clips += len(batch.index)
                steps_done += 1
    finally:
        del split, model, optimizer, scheduler, step
        release(device)
    per_clip = {"read": seconds["read"] / clips, "h2d": seconds["h2d"] / clips,
                "step": seconds["step"] / max(timed_clips, 1)}
    total = sum(per_clip.values())
    return {"serial_clips_per_s": 1.0 / total if total else None,
            **{f"{k}_ms_per_clip": 1e3 * v for k, v in per_clip.items()},
            **{f"{k}_pct": 100.0 * v / total if total else None for k, v in per_clip.items()},
            "timed_steps": max(steps_done - warmup_steps, 0)}


def end_to_end(config: LongSeqConfig, train_cfg: Any) -> dict[str, Any]:
    """`fusion.train.train` on the streamed split: the last epoch's clips/s and peak memory."""
    from fusion.train import resolve_device, train

    device = resolve_device(train_cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        result = train(train_cfg)
    finally:
        release(device)
    wall = time.perf_counter() - started
    history = torch.load(Path(result["folder"]) / "last.pt", weights_only=True,
                         map_location="cpu")["state"]["history"]
    epoch = history[-1]["epoch_seconds"]
    return {"clips_per_s": config.clips / epoch, "epoch_seconds": epoch,
            "run_seconds": wall,
            "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda" else None}


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def scan_backend(device: torch.device) -> str:
    """The Mamba head's default (`auto`) scan backend on `device`."""
    from fusion.ssm import resolve_backend

    return resolve_backend("auto", device)


def run(config: LongSeqConfig, out: Path) -> dict[str, Any]:
    from fusion.train import resolve_device

    device = resolve_device(config.device)
    full, width, token_layout = layout(config)
    lengths = config.lengths or (16, 64, 256, 1024, full)
    meta = {
        "title": "CPU smoke run, not a speed figure" if device.type == "cpu" else
        "Streamed training epoch against sequence length",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "dtype": "bf16 autocast, fp16 features" if device.type == "cuda" else "fp32",
        "batch": config.batch, "clips": config.clips, "val_clips": config.val_clips,
        "video_dim": width, "text_dim": config.text_dim, "question_len": config.question_len,
        "d_model": config.d_model, "token_layout": token_layout, "epochs": config.epochs,
        "mamba_backend": scan_backend(device), "lengths": list(lengths),
        "command": config.command, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "store_write_seconds": {},
    }
    results: list[dict[str, Any]] = []
    data_root = config.store or Path(tempfile.mkdtemp(prefix="long-seq-"))
    data = data_root / "long-seq"
    deadline = time.perf_counter() + config.max_seconds
    stopped: dict[str, str] = {}
    try:
        ids = write_dataset(config, data)
        for length in lengths:
            pending = [h for h in config.heads if h not in stopped]
            if pending and time.perf_counter() < deadline:
                meta["store_write_seconds"][str(length)] = round(
                    write_video(config, data, ids, length, width), 2)
            for head in config.heads:
                record = {"head": head, "backend": meta["mamba_backend"] if head == "mamba"
                          else None, "seq_len": length, "batch": config.batch,
                          "clips": config.clips}
                if head in stopped or time.perf_counter() > deadline:
                    record["status"] = stopped.get(head, "not run (time budget)")
                else:
                    started = time.perf_counter()
                    record |= measure(config, data, head, length, data_root / "runs")
                    record["point_seconds"] = round(time.perf_counter() - started, 2)
                    if record["status"] != "ok":
                        stopped[head] = f"skipped: {record['status']} at L={length}"
                results.append(record)
                print(json.dumps(record), flush=True)
                write_outputs({"meta": meta, "results": results}, out, figure=False)
            write_outputs({"meta": meta, "results": results}, out)
            if config.store is None:
                for split in ids:
                    shutil.rmtree(video_path(data, split, length), ignore_errors=True)
    finally:
        if config.store is None:
            shutil.rmtree(data_root, ignore_errors=True)
    return {"meta": meta, "results": results}


def measure(config: LongSeqConfig, data: Path, head: str, length: int, runs: Path
            ) -> dict[str, Any]:
    train_cfg = train_config(config, data, head, length, runs)
    try:
        parts = breakdown(train_cfg, config.warmup_steps)
        estimate = config.clips / parts["serial_clips_per_s"]
        if estimate > config.max_epoch_seconds:
            return {**parts, "status": f"too slow (serial epoch ~{estimate:.0f} s)"}
        return {**parts, **end_to_end(config, train_cfg), "status": "ok"}
    except (torch.OutOfMemoryError, RuntimeError) as error:
        # a CUDA-graph capture that runs out of memory raises a plain RuntimeError
        if not isinstance(error, torch.OutOfMemoryError) and "out of memory" not in str(error):
            raise
        from fusion.train import resolve_device

        release(resolve_device(train_cfg.device))
        return {"status": "out of memory"}


# ------------------------------------------------------------------------------- reporting


def fmt(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    meta, results = data["meta"], data["results"]
    lines = [f"# Long-sequence streamed training epoch: {meta['title']}", "",
             f"Device: {meta['device']}; torch {meta['torch']}; {meta['dtype']}; batch "
             f"{meta['batch']}; {meta['clips']} train clips (+{meta['val_clips']} validation, "
             f"validated once per epoch); video L x {meta['video_dim']}, questions 2 x "
             f"{meta['question_len']} x {meta['text_dim']}; Mamba scan "
             f"`{meta['mamba_backend']}`.", "",
             f"Tokens: {meta['token_layout']}.", "",
             f"Command: `{meta['command']}`", "",
             "clips/s: `fusion.train` epoch streamed from the store (stream=always; last epoch, "
             "validation included). read / h2d / step: shares of a serial instrumented pass "
             "over the same windows (store read on the host, host-to-device copy, "
             "forward+backward+optimizer), whose own rate is 'serial clips/s'.", ""]
    for head in dict.fromkeys(r["head"] for r in results):
        rows = [r for r in results if r["head"] == head]
        backend = rows[0].get("backend")
        lines += [f"## {head}" + (f" (scan: {backend})" if backend else ""), "",
                  "| L | clips/s | serial clips/s | read % | h2d % | step % | peak MiB | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['seq_len']} | {fmt(r.get('clips_per_s'))} | "
                         f"{fmt(r.get('serial_clips_per_s'))} | {fmt(r.get('read_pct'))} | "
                         f"{fmt(r.get('h2d_pct'))} | {fmt(r.get('step_pct'))} | "
                         f"{fmt(r.get('peak_mem_mib'), 0)} | {r['status']} |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    meta, results = data["meta"], data["results"]
    fig, ax = plt.subplots(figsize=(8, 5.2))
    heads = list(dict.fromkeys(r["head"] for r in results))
    for i, head in enumerate(heads):
        rows = [r for r in results if r["head"] == head]
        label = head + (f" [{rows[0]['backend']} scan]" if rows[0].get("backend") else "")
        ok = [r for r in rows if r["status"] == "ok"]
        if ok:
            ax.plot([r["seq_len"] for r in ok], [r["clips_per_s"] for r in ok], marker="o",
                    color=f"C{i}", label=label)
        for r in rows:
            if r["status"] != "ok":  # marked at the top: the point exists, its value does not
                top = 0.96 - 0.06 * i
                ax.plot(r["seq_len"], top, marker="x", markersize=8, markeredgewidth=2,
                        color=f"C{i}", transform=ax.get_xaxis_transform(), clip_on=False,
                        label=None if ok else label)
                ax.annotate(r["status"].split(" (")[0].split(":")[0], (r["seq_len"], top),
                            xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                            xytext=(-7, 0), ha="right", va="center", fontsize=7,
                            color=f"C{i}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["seq_len"] for r in results}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    if not any(r["status"] == "ok" for r in results):  # log axes need a range to draw
        ax.set_ylim(1, 10)
        ax.text(0.5, 0.5, "no point measured", transform=ax.transAxes, ha="center")
    ax.set_xlabel("video tokens per clip L (+ 2 x question tokens)")
    ax.set_ylabel("training throughput (clips/s, streamed epoch)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{meta['title']}\n{meta['device']}, {meta['dtype']}, batch {meta['batch']}, "
                 f"{meta['clips']} clips, width {meta['video_dim']}; x: out of memory, too "
                 "slow or not run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(data: dict[str, Any], out: Path, figure: bool = True) -> None:
    """JSON and Markdown (after every point: a cut-off run keeps its rows); the PNG too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    if figure:
        plot(data, out.with_suffix(".png"))


SETTINGS = ("device", "torch", "dtype", "batch", "clips", "val_clips", "video_dim", "text_dim",
            "question_len", "d_model", "epochs", "mamba_backend")


def merge(paths: tuple[Path, ...], out: Path) -> dict[str, Any]:
    """Results of several runs of the same settings (other lengths or heads) in one file."""
    files = []
    for path in paths:
        if not path.exists():
            raise HarnessError(f"{path}: no such result file; run the benchmark with "
                               f"--out {path.with_suffix('')} first")
        files.append(json.loads(path.read_text()))
    meta = dict(files[0]["meta"])
    for path, other in zip(paths[1:], files[1:], strict=True):
        differ = [k for k in SETTINGS if other["meta"].get(k) != meta.get(k)]
        if differ:
            raise HarnessError(f"{path}: settings {differ} differ from {paths[0]}; merge only "
                               "runs of the same settings")
    meta["command"] = " ; ".join(f["meta"]["command"] for f in files)
    meta["lengths"] = sorted({n for f in files for n in f["meta"]["lengths"]})
    meta["store_write_seconds"] = {k: v for f in files
                                   for k, v in f["meta"]["store_write_seconds"].items()}
    results = sorted((r for f in files for r in f["results"]),
                     key=lambda r: (HEADS.index(r["head"]) if r["head"] in HEADS else 99,
                                    r["seq_len"]))
    data = {"meta": meta, "results": results}
    write_outputs(data, out)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = cli(LongSeqConfig, args=argv)
    if config.merge:
        return merge(config.merge, config.out)
    if config.quick:
        default = LongSeqConfig()  # flags given on the command line win over QUICK's
        config = dataclasses.replace(config, **{k: v for k, v in QUICK.items()
                                                if getattr(config, k) == getattr(default, k)})
    unknown = [h for h in config.heads if h not in HEADS]
    if unknown:
        raise HarnessError(f"--heads {' '.join(unknown)}: unknown; pick from {' '.join(HEADS)}")
    if config.threads:
        torch.set_num_threads(config.threads)
    data = run(config, config.out)
    print(markdown(data))
    return data


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

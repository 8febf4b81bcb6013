"""Extraction drivers: video clips and question texts of one split into a feature store.

    python -m extract video --preset vitl --annotations A --split validation --videos V
    python -m extract clips --preset vitb --data DIR --split validation --limit 5 --json
    python -m extract text --questions Q.jsonl --text-model roberta-base --split validation
    python -m extract tiny-roberta --out DIR    # random-init RoBERTa for tests and the demo

Why it is built this way: a backbone pass over EK100 takes hours, so the driver must
survive being killed and being spread over GPUs without coordination. Work is cut into
the store's shards; each process takes the pending shards `k % world_size == rank` and
writes each shard whole, marking it done last (see `features.store`). Batches never cross
a shard boundary and always start at its first row, so a row is computed in the same batch
whatever the interruption or the number of processes: a resumed or multi-process store is
bitwise equal to an uninterrupted one on CPU.

Failures (unreadable or missing videos, segments outside their video: see
`extract.video`) become zero rows with their error in the store; `<store stem>.failures.json`
next to the store lists them and the command exits 1 at the end unless `--allow-missing`.
Training leaves such rows out. `--retry-failed` (video) re-extracts only the failed rows of
a complete store, e.g. after restoring missing videos: the shards holding them are
rewritten whole, other rows copied back bitwise, and the report is updated. (Text
extraction records no failures: a question always embeds.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from features.annotations import load_split
from features.authors_init import authors_reinit as reinit
from features.config import cli, to_dict
from features.errors import HarnessError
from features.store import (
    DEFAULT_SHARD_ROWS,
    ArraySpec,
    FeatureStore,
    StoreError,
    StoreWriter,
    make_manifest,
    open_writer,
    store_path,
    write_failure_report,
)

SHARD_BYTES = 256 << 20  # cap for automatic shard sizes (patch tokens are ~6 MB a clip)


# ------------------------------------------------------------------------------- configs


@dataclass
class PreprocessOptions:
    """What the backbone sees: a preprocessing preset and single-field overrides (shared by
    `extract video` and its dry run `extract clips`, so both plan the same frames)."""

    preprocess: Literal["avion", "ours-v1"] | None = None
    """Preprocessing preset (default: avion for vitb/vitl, ours-v1 otherwise); see extract.video."""
    timeline: Literal["avion-30fps", "native"] | None = None
    """Override the preset's frame timeline."""
    resize: Literal["fused", "torchvision", "antialias"] | None = None
    """Override the preset's resize and crop."""
    scaler: Literal["bilinear", "bicubic"] | None = None
    """Override the FFmpeg scaler of the fused resize."""
    norm: Literal["avion", "clip"] | None = None
    """Override the preset's mean/std (AVION's or CLIP's, on 0-255)."""
    precision: Literal["fp16", "bf16"] | None = None
    """Override the preset's CUDA autocast dtype (AVION evaluates in fp16)."""
    fps: float | None = None
    """Native fps of rgb_frames folders (the avion-30fps timeline needs it for them)."""


@dataclass
class VideoConfig(PreprocessOptions):
    """Extract video features of one EK100 split into a feature store (resumable)."""

    annotations: Path = Path("data/demo/annotations")
    """Folder with the EK100 annotation CSVs; rows are stored in the split file's order."""
    split: str = "validation"
    videos: Path = Path("data/demo/videos")
    """Video root: `<root>/<participant>/videos/<video_id>.MP4` or rgb_frames folders."""
    layout: Literal["video", "rgb_frames", "avion-chunks"] = "video"
    """avion-chunks: AVION's 15 s chunks `<root>/<P>/<vid>.MP4/0.MP4` (detected under --videos)."""
    task: Literal["recognition", "anticipation"] = "recognition"
    backbone: str = "vit-demo"
    """Registered backbone (`extract.backbones.list_backbones()`): vitb, vitl, vit-demo, ..."""
    checkpoint: Path | None = None
    """AVION checkpoint (vitb/vitl need one: see `python -m extract.backbones --backbone vitb`)."""
    random_init: bool = False
    """Extract with seeded random weights on purpose (the manifest says weights: random-init)."""
    trust_pickle: bool = False
    """fully unpickle --checkpoint and .pkl annotations (runs their code: trusted files only)"""
    tokens: Literal["cls", "frame", "patch", "cls+patch"] = "frame"
    num_frames: int = 16
    size: int | None = None
    """Crop size (default: the backbone's image size)."""
    root: Path = Path("data/demo/features")
    dataset: str = "demo"
    """Store at `<root>/<dataset>/<split>/video-<name>.zarr` unless --out."""
    name: str | None = None
    """Store name (default: backbone, plus `-<tokens>` unless frame, `-anticipation`)."""
    out: Path | None = None
    batch_size: int = 32
    workers: int = 8
    """DataLoader processes decoding while the model runs (0: decode in this process)."""
    shard_rows: int | None = None
    """Clips per shard (default: 256, fewer when a shard would pass 256 MB)."""
    device: str = "auto"
    """auto: cuda (the LOCAL_RANK GPU) when available, else cpu."""
    amp: bool = True
    """Autocast on CUDA in the preprocessing's precision (CPU runs in float32)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    limit: int | None = None
    """Only the first N segments of the split (smoke tests)."""
    rank: int | None = None
    """This process's rank (default: $RANK from torchrun, else 0)."""
    world_size: int | None = None
    """Number of processes (default: $WORLD_SIZE, else 1)."""
    allow_missing: bool = False
    """Exit 0 even when clips failed (they stay zeros, listed in the failure report)."""
    retry_failed: bool = False
    """Re-extract only the clips recorded as failures in this complete store (same settings);
    their shards are rewritten, every other row kept bitwise."""
    overwrite: bool = False
    progress: bool = True


@dataclass
class TextConfig:
    """Embed the verb and noun questions of a questions JSONL with a RoBERTa-style model."""

    questions: Path = Path("data/demo/questions/validation.jsonl")
    text_model: str = "roberta-base"
    """Hugging Face name or local folder (AutoTokenizer/AutoModel.from_pretrained)."""
    max_length: int = 32
    """Tokens per question, special tokens included; longer questions are truncated (the
    authors' code: 40)."""
    readout: Literal["last-hidden", "embeddings", "pooler"] = "last-hidden"
    """last-hidden: the encoder's last hidden state; embeddings: the embedding layer's output
    (word + position + token type, then LayerNorm), the only part of RoBERTa the authors'
    Mamba path uses; pooler: the model's pooler output, tanh(dense(last hidden state of
    token 0)), stored as one token per question (what the authors' MLP and Transformer
    baselines read). All in eval mode (no dropout)."""
    init: Literal["pretrained", "authors-random"] = "pretrained"
    """authors-random: the loaded weights re-initialised as the authors' model does after
    loading RoBERTa (`authors_reinit`), seeded by --seed."""
    seed: int = 0
    """Seed of --init authors-random (same seed, same table)."""
    padding: Literal["masked", "max-length"] = "masked"
    """Both pad to --max-length. masked: the model gets the attention mask and padded
    positions are stored as zeros; max-length: the authors' way, no attention mask, every
    position (pads included) goes through the model and is stored. `*_mask` marks the real
    tokens either way: a head with `pool_padding` ignores it, so pads enter its mean."""
    annotations: Path | None = None
    """If given, rows follow this annotation folder's split file (aligned to video stores);
    else the questions file's order."""
    split: str = "validation"
    root: Path = Path("data/demo/features")
    dataset: str = "demo"
    name: str | None = None
    """Store name (default: model folder name, the questions' generator and mask, then a
    suffix per non-default choice: `text_suffix`)."""
    out: Path | None = None
    batch_size: int = 128
    shard_rows: int | None = None
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    rank: int | None = None
    world_size: int | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class TinyRobertaConfig:
    """Write a tiny random-init RoBERTa (config, weights, BPE tokenizer) for tests and demos."""

    out: Path = Path("data/demo/tiny-roberta")
    questions: tuple[Path, ...] = ()
    """Questions JSONL files whose text trains the tokenizer (default: a built-in corpus)."""
    hidden_size: int = 32
    layers: int = 2
    heads: int = 2
    vocab_size: int = 400
    seed: int = 0


@dataclass
class ClipsConfig(PreprocessOptions):
    """Dry run: print the frames each clip of a split reads; no backbone is built or run."""

    data: Path | None = None
    """Dataset root holding `annotations/` and `videos/` (sets both)."""
    annotations: Path = Path("data/demo/annotations")
    videos: Path = Path("data/demo/videos")
    split: str = "validation"
    layout: Literal["video", "rgb_frames", "avion-chunks"] = "video"
    """avion-chunks is detected when --videos holds AVION's chunked copy."""
    task: Literal["recognition", "anticipation"] = "recognition"
    backbone: str = "vit-demo"
    """Its preprocessing preset is the default (avion for vitb/vitl)."""
    num_frames: int = 16
    limit: int | None = None
    """Only the first N segments."""
    json: bool = False
    """One JSON object per line: narration_id, sources, fps, frame_ids (0-based), ..."""
    trust_pickle: bool = False


VIDEO_PRESETS = {
    "demo": VideoConfig(  # the demo's backbone is random on purpose, preprocessed as before
        backbone="vit-demo", batch_size=8, workers=2, root=Path("data/demo/features"),
        random_init=True, preprocess="ours-v1",
    ),
    "vitb": VideoConfig(
        annotations=Path("data/ek100/annotations"),
        videos=Path("data/ek100/videos"),
        root=Path("data/ek100/features"),
        dataset="ek100",
        backbone="vitb",
        batch_size=64,
    ),
    "vitl": VideoConfig(
        annotations=Path("data/ek100/annotations"),
        videos=Path("data/ek100/videos"),
        root=Path("data/ek100/features"),
        dataset="ek100",
        backbone="vitl",
        batch_size=32,
    ),
}
CLIPS_PRESETS = {
    name: ClipsConfig(annotations=v.annotations, videos=v.videos, backbone=v.backbone,
                      preprocess=v.preprocess)
    for name, v in VIDEO_PRESETS.items()
}
TEXT_PRESETS = {
    "demo": TextConfig(
        text_model="data/demo/tiny-roberta",
        annotations=Path("data/demo/annotations"),
        root=Path("data/demo/features"),
        batch_size=64,
    ),
    "roberta": TextConfig(
        annotations=Path("data/ek100/annotations"),
        root=Path("data/ek100/features"),
        dataset="ek100",
        questions=Path("data/ek100/questions/validation.jsonl"),
    ),
}


# ------------------------------------------------------------------------------- helpers


def distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) from the flags, else torchrun's environment, else (0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world:
        raise SystemExit(f"rank {rank} is outside world size {world}")
    return rank, world


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(device)


def auto_shard_rows(row_bytes: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    return max(1, min(DEFAULT_SHARD_ROWS, SHARD_BYTES // max(row_bytes, 1)))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_batches(writer: StoreWriter, shards: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches that start at each shard's first row and never cross a shard."""
    batches = []
    for shard in shards:
        start, stop = writer.shard_range(shard)
        batches += [
            list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)
        ]
    return batches


Prefill = Callable[[int], tuple[dict[str, np.ndarray], list[str], int]]
"""shard -> (its arrays, its errors, how many of its rows are kept rather than computed)."""


def retry_plan(path: Path, writer: StoreWriter, rank: int, world: int, batch_size: int
               ) -> tuple[list[int], list[list[int]], Prefill]:
    """Shards of this rank holding failed rows, batches of those rows, and the shards' stored
    rows to write back around them (bitwise), for `--retry-failed`."""
    store = FeatureStore(path)
    if not store.complete:
        raise StoreError(f"{path}: --retry-failed needs a complete store "
                         f"({int((~store.done).sum())} of {store.num_shards} shards not written "
                         "or damaged); run the same command without --retry-failed first")
    failed: dict[int, list[int]] = {}
    for row in np.flatnonzero(~store.valid).tolist():
        if (row // writer.shard_rows) % world == rank:
            failed.setdefault(row // writer.shard_rows, []).append(row)
    batches = [rows[i : i + batch_size] for rows in failed.values()
               for i in range(0, len(rows), batch_size)]

    def prefill(shard: int) -> tuple[dict[str, np.ndarray], list[str], int]:
        start, stop = writer.shard_range(shard)
        arrays = {k: np.array(v) for k, v in store.read(slice(start, stop)).items()}
        return arrays, store.errors[start:stop].tolist(), stop - start - len(failed[shard])

    return sorted(failed), batches, prefill


def run_shards(
    writer: StoreWriter,
    shards: Sequence[int],
    batches: Iterator[tuple[list[int], dict[str, np.ndarray], list[str]]],
    progress: tqdm,
    prefill: Prefill | None = None,
) -> None:
    """Collect computed rows per shard and write each full shard in a background thread.

    A shard starts as zeros, or as `prefill(shard)` (its stored rows, for retries).
    """
    buffers: dict[int, tuple[dict[str, np.ndarray], list[str], list[int]]] = {}
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as pool:
        for rows, data, errors in batches:
            shard = rows[0] // writer.shard_rows
            start, stop = writer.shard_range(shard)
            if shard not in buffers and prefill is not None:
                arrays, kept_errors, kept = prefill(shard)
                buffers[shard] = (arrays, kept_errors, [kept])
            if shard not in buffers:
                arrays = {
                    name: np.zeros((stop - start, *spec.row_shape), dtype=spec.dtype)
                    for name, spec in writer.arrays.items()
                }
                buffers[shard] = (arrays, [""] * (stop - start), [0])
            arrays, shard_errors, count = buffers[shard]
            local = np.asarray(rows) - start
            for name, value in data.items():
                arrays[name][local] = value
            for i, error in zip(local, errors, strict=True):
                shard_errors[i] = error
            count[0] += len(rows)
            progress.update(len(rows))
            if count[0] == stop - start:
                del buffers[shard]
                pending.append(pool.submit(writer.write_shard, shard, arrays, shard_errors))
                if len(pending) > 2:  # bound memory: at most two shards queued
                    pending.pop(0).result()
            for done in [f for f in pending if f.done()]:
                done.result()  # surface write errors early
        for future in pending:
            future.result()
    if buffers:
        raise RuntimeError(f"shards {sorted(buffers)} were not completed")


def finish(path: Path, rank: int, allow_missing: bool, elapsed: float, computed: int) -> int:
    """Write the failure report next to the store, print a summary; the exit status."""
    store = FeatureStore(path)
    report_path = write_failure_report(store)  # atomic: ranks may finish together
    failures = store.failures()
    rate = computed / elapsed if elapsed > 0 else 0.0
    state = "complete" if store.complete else f"{int(store.done.sum())}/{store.num_shards} shards"
    print(
        f"[rank {rank}] {path}: {computed} clips computed in {elapsed:.1f} s ({rate:.1f}/s); "
        f"store {state}; {len(failures)} failed; manifest {store.manifest_hash[:12]}",
        file=sys.stderr,
    )
    if failures:
        listing = "\n".join(f"  {k}: {v}" for k, v in list(failures.items())[:50])
        more = f"\n  ... and {len(failures) - 50} more" if len(failures) > 50 else ""
        print(
            f"{len(failures)} clips failed (report: {report_path}):\n{listing}{more}",
            file=sys.stderr,
        )
        if not allow_missing:
            return 1
    return 0


def _progress(total: int, enabled: bool, rank: int) -> tqdm:
    return tqdm(
        total=total,
        unit="clip",
        desc=f"rank {rank}",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.05,
    )


def _setup(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- video


NORMS = {"avion": "AVION", "clip": "CLIP"}


def video_preprocess(config: VideoConfig | ClipsConfig) -> Any:
    """The `extract.video.Preprocess` of a config: its preset (default from the backbone)
    with the fields it overrides."""
    from extract.backbones import default_preprocess
    from extract.video import AVION_MEAN, AVION_STD, PRESETS, preprocess_preset

    name = config.preprocess or default_preprocess(config.backbone)
    overrides: dict[str, Any] = dict(timeline=config.timeline, resize=config.resize,
                                     scaler=config.scaler, precision=config.precision)
    if config.norm is not None:
        mean, std = ((AVION_MEAN, AVION_STD) if config.norm == "avion"
                     else (PRESETS["ours-v1"].mean, PRESETS["ours-v1"].std))
        if (mean, std) != (PRESETS[name].mean, PRESETS[name].std):
            base = preprocess_preset(name, **overrides)
            return dataclasses.replace(base, name=f"{base.name}+norm={config.norm}",
                                       mean=mean, std=std)
    return preprocess_preset(name, **overrides)


def video_layout(config: VideoConfig | ClipsConfig, videos: Path) -> str:
    """`--layout`, or `avion-chunks` when `videos` holds AVION's chunked copy."""
    from extract.avion_layout import is_avion_chunks

    return "avion-chunks" if config.layout == "video" and is_avion_chunks(videos) else config.layout


def check_weights(config: VideoConfig) -> str:
    """`checkpoint` or `random-init`; refuses AVION's architectures without weights, since
    features of a random ViT-B/L look like real ones and silently poison every result."""
    from extract.backbones import AVION_CHECKPOINTS, is_pretrained_architecture

    if config.checkpoint is not None and config.random_init:
        raise HarnessError("--checkpoint and --random-init contradict each other: pass one")
    if config.checkpoint is not None:
        return "checkpoint"
    if is_pretrained_architecture(config.backbone) and not config.random_init:
        raise HarnessError(
            f"backbone {config.backbone} needs AVION's weights: pass --checkpoint with AVION's "
            f"EK100 fine-tuned {AVION_CHECKPOINTS[config.backbone]} (AVION docs/MODEL_ZOO.md); "
            "or --random-init to extract random features on purpose"
        )
    return "random-init"


def video_store_name(config: VideoConfig) -> str:
    if config.name:
        return config.name
    name = config.backbone
    if config.tokens != "frame":
        name += f"-{config.tokens}"
    if config.task != "recognition":
        name += f"-{config.task}"
    return name


def _video_dataset(config: VideoConfig, segments: Any, size: int, preprocess: Any) -> Any:
    from extract.video import ClipDataset

    return ClipDataset(
        segments,
        config.videos,
        layout=video_layout(config, config.videos),
        task=config.task,
        num_frames=config.num_frames,
        size=size,
        preprocess=preprocess,
        fps=config.fps,
        on_error="mark",
        threads=1,
    )


def extract_video(config: VideoConfig) -> int:
    """Extract (or resume) one split's video store; returns the exit status."""
    from extract.backbones import build_backbone, state_dict_sha256

    if config.retry_failed and config.overwrite:
        raise SystemExit("--retry-failed keeps the store's good rows; --overwrite discards "
                         "them: pass one of the two")
    weights = check_weights(config)
    preprocess = video_preprocess(config)
    _setup(config.threads)
    rank, world = distributed(config.rank, config.world_size)
    device = resolve_device(config.device)
    split = load_split(config.annotations, config.split, config.trust_pickle)
    segments = split.segments if config.limit is None else split.segments.iloc[: config.limit]
    overrides = {"image_size": config.size} if config.size else {}
    model = build_backbone(config.backbone, config.checkpoint, config.num_frames,
                           trust_pickle=config.trust_pickle, **overrides)
    model.eval().to(device)
    try:
        dataset = _video_dataset(config, segments, model.config.image_size, preprocess)
    except ValueError as error:
        raise HarnessError(f"{split_file(config.annotations, config.split)}: {error}") from None
    length, width = model.num_tokens(config.tokens), model.width
    shard_rows = auto_shard_rows(length * width * 2, config.shard_rows)
    amp = config.amp and device.type == "cuda"
    autocast = torch.float16 if preprocess.precision == "fp16" else torch.bfloat16
    report = getattr(model, "load_report", None)
    manifest = make_manifest(
        modality="video",
        extractor="python -m extract video",
        dataset=config.dataset,
        split=config.split,
        sources={
            "annotations_file": str(split_file(config.annotations, config.split)),
            "videos": str(config.videos),
            "checkpoint": str(config.checkpoint) if config.checkpoint else None,
        },
        annotations_sha256=file_sha256(split_file(config.annotations, config.split)),
        limit=config.limit,
        backbone={
            "name": config.backbone,
            "config": dataclasses.asdict(model.config),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        checkpoint_sha256=report.sha256 if report else None,
        weights=weights,
        weights_sha256=state_dict_sha256(model),
        preprocess=preprocess.to_dict(),
        frames=config.num_frames,
        resolution=model.config.image_size,
        crop=dataset.manifest()["crop"],
        normalisation=dataset.manifest()["normalisation"],
        clip=dataset.manifest(),
        tokens=config.tokens,
        token_shape=[length, width],
        dtype="float16",
        compute={"device_type": device.type, "autocast": str(autocast)[6:] if amp else None},
        batch_size=config.batch_size,
    )
    path = config.out or store_path(
        config.root, config.dataset, config.split, "video", video_store_name(config)
    )
    if config.retry_failed and not (Path(path) / "zarr.json").exists():
        raise StoreError(f"{path}: no store to retry failed clips in; run without "
                         "--retry-failed to extract it")
    writer = open_writer(  # a retry must use the settings that made the store: checked here
        path,
        segments["narration_id"].tolist(),
        {"tokens": ArraySpec((length, width))},
        manifest,
        kind="video",
        shard_rows=shard_rows,
        overwrite=config.overwrite and rank == 0,
    )
    prefill = None
    if config.retry_failed:
        shards, batches, prefill = retry_plan(Path(path), writer, rank, world, config.batch_size)
    else:
        shards = writer.pending_shards(rank, world)
        batches = shard_batches(writer, shards, config.batch_size)
    total = sum(len(b) for b in batches)
    done = int(writer.done().sum())
    print(
        f"[rank {rank}/{world}] {path}: {writer.rows} clips, {writer.num_shards} shards of "
        f"{shard_rows}; {done} done; this process: {len(shards)} shards, {total} clips"
        + (" (retrying failed clips)" if config.retry_failed else ""),
        file=sys.stderr,
    )
    started = time.perf_counter()
    if batches:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=config.workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if config.workers else None,
        )

        def compute() -> Iterator[tuple[list[int], dict[str, np.ndarray], list[str]]]:
            for rows, (clips, _, errors) in zip(batches, loader, strict=True):
                with (
                    torch.inference_mode(),
                    torch.autocast(device.type, dtype=autocast, enabled=amp),
                ):
                    out = model.forward_features(clips.to(device, non_blocking=True), config.tokens)
                out = out.float().cpu().numpy().astype(np.float16)
                failed = np.asarray([bool(e) for e in errors])
                out[failed] = 0  # a failed clip is zeros, never features of a blank input
                yield rows, {"tokens": out}, list(errors)

        with _progress(total, config.progress, rank) as progress:
            run_shards(writer, shards, compute(), progress, prefill)
    return finish(Path(path), rank, config.allow_missing, time.perf_counter() - started, total)


def plan_clips(config: ClipsConfig) -> int:
    """Print each clip's frames (`extract clips`); 1 if some clips cannot be read."""
    from extract.backbones import backbone_config
    from extract.video import ClipDataset, VideoError

    annotations, videos = config.annotations, config.videos
    if config.data is not None:
        annotations, videos = config.data / "annotations", config.data / "videos"
    preprocess = video_preprocess(config)
    split = load_split(annotations, config.split, config.trust_pickle)
    segments = split.segments if config.limit is None else split.segments.iloc[: config.limit]
    try:
        dataset = ClipDataset(segments, videos, layout=video_layout(config, videos),
                              task=config.task,
                              num_frames=config.num_frames,
                              size=backbone_config(config.backbone).image_size,
                              preprocess=preprocess, fps=config.fps)
    except ValueError as error:
        raise HarnessError(f"{split_file(annotations, config.split)}: {error}") from None
    failed = 0
    for i in range(len(dataset)):
        try:
            record = dataset.clip_plan(i).to_dict()
        except VideoError as error:
            failed += 1
            record = {"narration_id": dataset.rows[i][0], "sources": [str(dataset.source(i))],
                      "error": str(error)}
        if config.json:
            print(json.dumps(record), flush=True)
        elif "error" in record:
            print(f"{record['narration_id']}: error: {record['error']}")
        else:
            print(f"{record['narration_id']}: {record['fps']} fps frames {record['frame_ids']} "
                  f"from {', '.join(record['sources'])}")
    if failed:
        print(f"{failed} of {len(dataset)} clips cannot be read", file=sys.stderr)
    return 1 if failed else 0


def split_file(annotations: Path, split: str) -> Path:
    from features.annotations import split_path

    return split_path(annotations, split)


# ----------------------------------------------------------------------------------- text


def read_questions(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


DEFAULT_MAX_LENGTH = TextConfig.max_length


def text_suffix(readout: str, init: str, seed: int, max_length: int, padding: str) -> str:
    """Store-name suffix naming each non-default text choice ("" for the defaults, so stores
    made before these choices existed keep their names); `fusion.data` uses it too."""
    parts = {"embeddings": ["emb"], "pooler": ["pooler"]}.get(readout, [])
    parts += [f"authorsrandom-s{seed}"] if init == "authors-random" else []
    parts += [f"len{max_length}"] if max_length != DEFAULT_MAX_LENGTH else []
    parts += ["nomask"] if padding == "max-length" else []
    return "".join(f"-{part}" for part in parts)


PROTOCOL_TEXT_SEED = 0
"""Seed of the authors-random table a protocol's default text store holds."""


def protocol_text_options(protocol: Any, fusion: str = "mamba") -> dict[str, Any]:
    """`TextConfig` values of the text store the `fusion` head reads under a
    `fusion.protocols.Protocol`: its readout for that head (`text_readout_for`), init and
    question length; padding `max-length` (pads through the model) iff the protocol pools
    pads (the authors' code gives the model no attention mask on either path)."""
    return {"readout": protocol.text_readout_for(fusion), "init": protocol.text_init,
            "seed": PROTOCOL_TEXT_SEED, "max_length": protocol.question_length,
            "padding": "max-length" if protocol.pool_padding else "masked"}


def text_store_name(config: TextConfig, records: list[dict[str, Any]]) -> str:
    if config.name:
        return config.name
    name = Path(config.text_model.rstrip("/")).name
    first = records[0] if records else {}
    for key in ("generator", "mask"):
        if first.get(key):
            name += f"-{first[key]}"
    return name + text_suffix(config.readout, config.init, config.seed, config.max_length,
                              config.padding)


def order_questions(
    records: list[dict[str, Any]], config: TextConfig
) -> tuple[list[dict[str, Any]], str | None]:
    """The question records in the annotation split's order (if given), checked complete."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        nid = str(record["narration_id"])
        if nid in by_id:
            raise SystemExit(f"{config.questions}: narration id {nid!r} appears twice")
        by_id[nid] = record
    if config.annotations is None:
        return records, None
    path = split_file(config.annotations, config.split)
    ids = load_split(config.annotations, config.split).segments["narration_id"].tolist()
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(
            f"{config.questions}: no questions for {len(missing)} segments of {path}: "
            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}"
        )
    return [by_id[i] for i in ids], str(path)


def authors_reinit(model: torch.nn.Module, seed: int) -> None:
    """The authors' re-initialisation of the loaded text model (`features.authors_init`),
    seeded by --seed: the same seed gives the same table on any device."""
    reinit(model, seed=seed)


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


READOUT_LAYERS = {
    "last-hidden": "last_hidden_state",
    "embeddings": "embeddings (word + position + token type, LayerNorm)",
    "pooler": "pooler_output (tanh(dense(last_hidden_state[:, 0]))), one token",
}
"""The manifest's `layer` of each readout."""
PADDED_POSITIONS = {  # (padding, pooler readout) -> the manifest's `padded_positions`
    ("max-length", False): "model output, no attention mask",
    ("masked", False): "zeros, attention mask given",
    ("max-length", True): "model input, no attention mask (one pooled token stored)",
    ("masked", True): "attention mask given (one pooled token stored)",
}


def check_readout(model: torch.nn.Module, config: TextConfig, missing: Any) -> None:
    """Refuse a readout the loaded model cannot give: no `embeddings` layer, no pooler, or
    a pooler whose weights the checkpoint lacks under `--init pretrained` (they would be
    random without anyone choosing it)."""
    kind = f"{config.text_model} ({type(model).__name__})"
    if config.readout == "embeddings" and not hasattr(model, "embeddings"):
        raise HarnessError(f"--readout embeddings: {kind} has no embedding layer `embeddings`; "
                           "use --readout last-hidden")
    if config.readout != "pooler":
        return
    if getattr(model, "pooler", None) is None:
        raise HarnessError(f"--readout pooler: {kind} has no pooling layer (`pooler`); use "
                           "--readout last-hidden")
    absent = sorted(k for k in missing if k.startswith("pooler."))
    if absent and config.init == "pretrained":
        raise HarnessError(f"--readout pooler: {config.text_model} has no pooler weights "
                           f"({', '.join(absent)}), so they would be random; use --readout "
                           "last-hidden, or --init authors-random on purpose")


def extract_text(config: TextConfig) -> int:
    """Embed (or resume) the questions of one split into a text store."""
    from transformers import AutoModel, AutoTokenizer

    _setup(config.threads)
    rank, world = distributed(config.rank, config.world_size)
    device = resolve_device(config.device)
    records, annotations_file = order_questions(read_questions(config.questions), config)
    tokenizer = AutoTokenizer.from_pretrained(config.text_model)
    model, loading = AutoModel.from_pretrained(config.text_model, output_loading_info=True)
    model = model.eval()
    check_readout(model, config, loading["missing_keys"])
    if config.init == "authors-random":
        authors_reinit(model, config.seed)
        if rank == 0:
            print(f"note: --init authors-random: {config.text_model}'s pretrained weights are "
                  f"replaced by the authors' random re-initialisation (seed {config.seed}), on "
                  "purpose", file=sys.stderr)
    model = model.to(device)
    hidden = int(model.config.hidden_size)
    length = config.max_length
    tokens = 1 if config.readout == "pooler" else length  # stored tokens per question
    shard_rows = auto_shard_rows(2 * tokens * (hidden * 2 + 1), config.shard_rows)
    amp = config.amp and device.type == "cuda"
    first = records[0] if records else {}
    manifest = make_manifest(
        modality="text",
        extractor="python -m extract text",
        dataset=config.dataset,
        split=config.split,
        sources={
            "questions_file": str(config.questions),
            "annotations_file": annotations_file,
            "text_model": config.text_model,
        },
        questions_sha256=file_sha256(config.questions),
        generator=first.get("generator"),
        mask=first.get("mask"),
        # whether the questions' predictions are in-sample (predictions generators only:
        # template stores' manifests, and so their hashes, stay as they were)
        **{k: first[k] for k in ("predictions_in_sample",) if k in first},
        row_order="annotations" if annotations_file else "questions file",
        text_model=Path(config.text_model.rstrip("/")).name,
        text_model_type=model.config.model_type,
        text_model_weights_sha256=weights_sha256(model),
        tokenizer=type(tokenizer).__name__,
        max_length=length,
        padding=config.padding,
        padded_positions=PADDED_POSITIONS[config.padding, config.readout == "pooler"],
        readout=config.readout,
        layer=READOUT_LAYERS[config.readout],
        text_init=config.init,
        text_init_seed=config.seed if config.init == "authors-random" else None,
        questions=["verb", "noun"],
        token_shape=[tokens, hidden],
        dtype="float16",
        compute={"device_type": device.type, "autocast": "bfloat16" if amp else None},
        batch_size=config.batch_size,
    )
    path = config.out or store_path(
        config.root, config.dataset, config.split, "text", text_store_name(config, records)
    )
    arrays = {}
    for question in ("verb", "noun"):
        arrays[f"{question}_tokens"] = ArraySpec((tokens, hidden))
        arrays[f"{question}_mask"] = ArraySpec((tokens,), "bool")
    writer = open_writer(
        path,
        [str(r["narration_id"]) for r in records],
        arrays,
        manifest,
        kind="text",
        shard_rows=shard_rows,
        overwrite=config.overwrite and rank == 0,
    )
    shards = writer.pending_shards(rank, world)
    batches = shard_batches(writer, shards, config.batch_size)
    total = sum(len(b) for b in batches)
    truncated = [0]

    def embed(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        full = tokenizer(texts, truncation=False)["input_ids"]
        truncated[0] += sum(len(ids) > length for ids in full)
        encoded = tokenizer(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        ).to(device)
        mask = encoded["attention_mask"].bool()
        # max-length: input ids alone, as the authors' model gets them (no attention mask)
        inputs = dict(encoded) if config.padding == "masked" else {"input_ids": encoded.input_ids}
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
            if config.readout == "embeddings":
                states = model.embeddings(input_ids=encoded.input_ids)
            elif config.readout == "pooler":  # one token, always real
                states = model(**inputs).pooler_output[:, None]
                mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
            else:
                states = model(**inputs).last_hidden_state
        states = states.float()
        if config.padding == "masked" and config.readout != "pooler":
            states = states.masked_fill(~mask[..., None], 0)
        return states.cpu().numpy().astype(np.float16), mask.cpu().numpy()

    def compute() -> Iterator[tuple[list[int], dict[str, np.ndarray], list[str]]]:
        for rows in batches:
            data = {}
            for question in ("verb", "noun"):
                texts = [str(records[i][f"{question}_question"]) for i in rows]
                data[f"{question}_tokens"], data[f"{question}_mask"] = embed(texts)
            yield rows, data, [""] * len(rows)

    started = time.perf_counter()
    if batches:
        with _progress(total, config.progress, rank) as progress:
            run_shards(writer, shards, compute(), progress)
    if truncated[0]:
        print(f"warning: {truncated[0]} questions truncated to {length} tokens", file=sys.stderr)
    return finish(Path(path), rank, False, time.perf_counter() - started, total)


# ------------------------------------------------------------------------------ tiny model


DEFAULT_CORPUS = (
    "What is the person doing with the <mask>?",
    "Which object does the person take here?",
    "Which action does the person perform on the knife, which belongs to the cutlery?",
    'In the narration "open the cupboard", what is happening to the door?',
)


def build_tiny_roberta(config: TinyRobertaConfig) -> Path:
    """A RoBERTa config + seeded random weights + a byte-level BPE tokenizer, saved to disk.

    Loadable with `AutoTokenizer`/`AutoModel.from_pretrained(out)`, so tests and the demo
    exercise the same code path as `roberta-base` without downloading anything.
    """
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    corpus = list(DEFAULT_CORPUS)
    for path in config.questions:
        for record in read_questions(path):
            corpus += [str(record["verb_question"]), str(record["noun_question"])]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus,
        vocab_size=config.vocab_size,
        min_frequency=1,
        special_tokens=specials,
        show_progress=False,
    )
    bpe.post_processor = RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    model_config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden_size,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RobertaModel(model_config)
    config.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(config.out)
    model.save_pretrained(config.out)
    (config.out / "tiny_roberta_config.json").write_text(json.dumps(to_dict(config), indent=2))
    return config.out


# ------------------------------------------------------------------------------------ CLI


COMMANDS: dict[str, tuple[type, dict[str, Any], Callable[[Any], int]]] = {
    "video": (VideoConfig, VIDEO_PRESETS, extract_video),
    "clips": (ClipsConfig, CLIPS_PRESETS, plan_clips),
    "text": (TextConfig, TEXT_PRESETS, extract_text),
    "tiny-roberta": (TinyRobertaConfig, {}, lambda c: print(build_tiny_roberta(c)) or 0),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = " | ".join(COMMANDS)
        print(f"usage: python -m extract {{{names}}} [--preset NAME] [flags] (--help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    config_type, presets, run = COMMANDS[argv[0]]
    config = cli(config_type, presets or None, argv[1:])
    return run(config)

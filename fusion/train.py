"""Train a fusion head on cached features and track it in MLflow.

    python -m fusion.train --preset mambavl-vitl --epochs 50 --batch-size 256
    python -m fusion.train --preset mambavl-vitl --protocol authors --head.route-questions False

Protocols (`fusion.protocols`: `authors`, `paper`, `clean`, default `clean`) name the recipe
and the head structure. A config is built in three layers, each over the one before:
1. the protocol: its recipe fields become the defaults (`protocol_config`), and its head
   structure is what the Mamba head gets for every `head.*` option left unset (None);
2. the preset: the fields it changes from `TrainConfig()`'s defaults (data, backbone, scale;
   the demo presets also their own LRs and label smoothing, which then win);
3. the flags: any field, so an ablation flips one field of a protocol.
The run records the result, field by field, and names the fields that differ from its
protocol (`deviations`) in its MLflow tags.

The loop is deliberately plain (nanoGPT-style): features live on the device, each epoch
is a shuffled pass, validation runs after every epoch with the EK100 metrics, and two
checkpoints (`last.pt`, `best.pt`) carry model, optimizer, scheduler and RNG state. Run
the same command again after a crash and it resumes from `last.pt`, reaching the same
result as an uninterrupted run (bitwise on CPU).

A run folder knows its settings: `fingerprint.json` holds the config fields that change
results (all but `NOT_RESULT_FIELDS`), and a rerun whose fingerprint differs stops before
any work, naming the fields, unless `--resume` (continue with the new settings, recorded
in `fingerprint.json` and as an MLflow tag) or `--restart` (delete the outputs, start over)
says what to do. An flock on `run.lock` keeps a second process out of the folder; the kernel
releases it when its holder dies, so a killed run never blocks the next one. Checkpoints
hold only tensors, numbers, strings and plain containers and load with `weights_only=True`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import functools
import json
import math
import os
import pickle
import shutil
import socket
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from features import errors
from features.config import save_config, to_dict
from fusion import tracking
from fusion.console import Console, Progress, final_json, run_header, summary
from fusion.data import Batch, FeatureSplit, StreamedSplit, features_used, load_features
from fusion.graphs import GraphedForward, GraphedTrainStep
from fusion.heads import build_head, protocol_head
from fusion.heads.base import HeadConfigError
from fusion.metrics import HEADLINE_METRIC, metrics_for
from fusion.optim import build_authors_scheduler, build_optimizer, build_scheduler, param_groups
from fusion.predictions import save_predictions
from fusion.profile import count_params
from fusion.protocols import CLEAN, PROTOCOLS, ProtocolName, get_protocol

Task = Literal["recognition", "anticipation"]
Fusion = Literal["mamba", "mlp", "transformer_6x4", "transformer_12x12"]


@dataclass
class HeadConfig:
    """Fusion head options; `None` keeps the head's own default."""

    d_model: int | None = None
    d_state: int | None = None
    expand: int | None = None
    d_conv: int | None = None
    depth: int | None = None
    dropout: float | None = None
    shared_A: bool | None = None  # noqa: N815 - the paper's name for the matrix
    backend: str | None = None
    """Mamba head's selective-scan backend: auto, torch, mamba_ssm, triton (`fusion.ssm`)."""
    # Mamba head structure; None: the protocol's (`fusion.protocols.Protocol` says what each is)
    block: Literal["prenorm-residual", "bare"] | None = None
    video_proj: Literal["mlp", "none"] | None = None
    text_proj: Literal["mlp", "relu3"] | None = None
    proj_kernel: int | None = None
    route_questions: bool | None = None
    pool_padding: bool | None = None
    init: Literal["mamba", "authors"] | None = None

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainConfig:
    """Train one fusion head on a video store and a text store."""

    fusion: Fusion = "mamba"
    protocol: ProtocolName = "clean"
    """Recipe and head structure: authors, paper or clean (`fusion.protocols`); on the command
    line it sets the defaults of the fields it governs, which flags still override."""
    head: HeadConfig = field(default_factory=HeadConfig)
    task: Task = "recognition"
    data: Path = Path("data/demo")
    """Dataset folder: `annotations/` and `features/<dataset>/<split>/{video,text}-<name>.zarr`."""
    dataset: str | None = None
    """Store dataset folder under `features/` (default: the data folder's name)."""
    backbone: str = "demo"
    """Backbone tag; the video store is `video-<backbone>[-anticipation].zarr`."""
    video_store: str | None = None
    """Video store name, when not the backbone's."""
    text_model: str = "tiny-roberta"
    question_mask: str = "paper"
    text_store: str | None = None
    """Text store name (default: `<text_model>-<template|predictions>-<question_mask>`)."""
    train_split: str = "train"
    val_split: str = "validation"
    stream: Literal["auto", "never", "always"] = "auto"
    """Stream features from the stores instead of loading splits onto the device (`auto`:
    when a split would take over 60 % of free GPU memory)."""
    questions: Literal["both", "none"] = "both"
    """`none` trains on video alone (the "backbone alone" rows)."""
    video: Literal["tokens", "none"] = "tokens"
    """`none` trains on the questions alone (no video store is read): with the video-alone
    and both-sources runs, it says how much of a score the questions carry by themselves."""
    epochs: int = 100
    # the recipe: `clean`'s values; `--protocol` sets others (`fusion.protocols.Protocol`)
    batch_size: int = CLEAN.batch_size
    optimizer: Literal["adamw", "sgd"] = CLEAN.optimizer
    schedule: Literal["warmup-cosine", "authors"] = CLEAN.schedule
    start_lr: float = CLEAN.start_lr
    peak_lr: float = CLEAN.peak_lr
    ssm_peak_lr: float = CLEAN.ssm_peak_lr
    final_lr: float = CLEAN.final_lr
    warmup_epochs: float = CLEAN.warmup_epochs
    weight_decay: float = CLEAN.weight_decay
    decay_exclusions: bool = CLEAN.decay_exclusions
    """No weight decay on 1-D parameters, biases, A_log and D."""
    a_log_lr: Literal["ssm", "base"] = CLEAN.a_log_lr
    """The learning-rate group of the Mamba head's A_log."""
    label_smoothing: float = CLEAN.label_smoothing
    mixup_alpha: float = CLEAN.mixup_alpha
    """Mixup of the video features with the reversed batch, λ ~ Beta(α, α) per batch, soft
    targets (0: off)."""
    precision: Literal["bf16", "fp16"] = CLEAN.precision
    """Autocast dtype on CUDA; fp16 runs with a gradient scaler."""
    grad_clip: float = CLEAN.grad_clip
    selection: Literal["best-epoch", "running-max"] = CLEAN.selection
    """Reported `best_*` metrics: those of the best epoch on the headline metric, or each
    metric's own maximum over epochs (the authors' EPICValMeter)."""
    seed: int = 0
    early_stop_metric: str | None = None
    """Validation metric that selects `best.pt` and early stopping (default: the task's
    EK100 headline metric, action_top1 for recognition, action_recall5 for anticipation)."""
    patience: int = 0
    """Stop after this many epochs without improvement (0: never)."""
    device: str = "auto"
    amp: bool = True
    """Autocast on CUDA in `precision` (ignored on CPU)."""
    compile: bool = False
    """torch.compile the head's forward (fuses its small elementwise kernels on GPU)."""
    cuda_graphs: bool = True
    """On CUDA, replay each full-batch step as one CUDA graph (`fusion.graphs`): small heads
    are launch-bound without it (MLP epoch 3.9 s -> 1.2 s on the H100). Only AdamW steps in
    bf16 without mixup are captured; other steps run eagerly."""
    out: Path = Path("runs")
    run_name: str | None = None
    """Folder under `out` (default:
    fusion-backbone-task[-protocol][-video|-questions][-unsharedA]-s<seed>); reruns
    with the same settings resume there."""
    resume: bool = False
    """Continue the run in the folder although settings that change results differ (the
    changes are recorded in its `fingerprint.json` and as an MLflow tag)."""
    restart: bool = False
    """Delete the run folder's checkpoints and outputs and train from scratch."""
    experiment: str = "mambavl"
    tracking_uri: str | None = None
    """Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db."""
    dataset_name: str | None = None
    """Printed in every table caption (`synthetic-demo` or `ek100`); default from the data."""
    parent_run_id: str | None = None
    """MLflow parent run (sweeps nest their trials under it)."""
    tags: tuple[str, ...] = ()
    """Extra MLflow tags as key=value."""
    track: bool = True
    """Record the run in MLflow (off: checkpoints and history.csv only, e.g. benchmarks)."""
    progress: Progress = "auto"
    """Per-step output (`fusion.console`): a tqdm bar; lines for log files (the header, one
    line per epoch, and a progress line every ~10 % of an epoch that runs over 30 s); or
    quiet (no header, steps or epoch lines; the final line only). auto: a bar when stderr
    is a terminal, lines otherwise."""
    json: bool = False
    """Print each epoch's record as a JSON line (stderr) and the result as JSON (stdout)
    instead of the human epoch lines and summary."""


PRESETS: dict[str, TrainConfig] = {
    # the synthetic dataset on 2 CPU cores: small heads, a few seconds per epoch
    **{
        "demo" if fusion == "mamba" else f"demo-{fusion}": TrainConfig(
            fusion=fusion, epochs=20, batch_size=32, peak_lr=1e-3, ssm_peak_lr=3e-3,
            warmup_epochs=2, label_smoothing=0.0, video_store="vit-demo",
            head=HeadConfig(d_model=48 if fusion == "transformer_12x12" else 64,
                            d_state=8 if fusion == "mamba" else None),
        )
        for fusion in ("mamba", "mlp", "transformer_6x4", "transformer_12x12")
    },
    **{
        f"mambavl-{backbone}": TrainConfig(
            fusion="mamba", backbone=backbone, text_model="roberta-base", data=Path("data/ek100")
        )
        for backbone in ("vitb", "vitl", "orvit")
    },
    **{
        f"{fusion}-{backbone}": TrainConfig(
            fusion=fusion, backbone=backbone, text_model="roberta-base", data=Path("data/ek100")
        )
        for fusion in ("mlp", "transformer_6x4", "transformer_12x12")
        for backbone in ("vitb", "vitl", "orvit")
    },
}


def protocol_config(name: str, **changes: Any) -> TrainConfig:
    """`TrainConfig` with the recipe of protocol `name` (then `changes`); the head structure
    follows from `protocol` when the head is built."""
    return dataclasses.replace(TrainConfig(protocol=name),
                               **(get_protocol(name).train_fields() | changes))


def overlay(base: TrainConfig, preset: TrainConfig) -> TrainConfig:
    """`base` with the fields that `preset` changes from `TrainConfig()`'s defaults."""
    default = TrainConfig()
    top = {f.name: getattr(preset, f.name) for f in dataclasses.fields(TrainConfig)
           if f.name != "head" and getattr(preset, f.name) != getattr(default, f.name)}
    head = {f.name: getattr(preset.head, f.name) for f in dataclasses.fields(HeadConfig)
            if getattr(preset.head, f.name) != getattr(default.head, f.name)}
    return dataclasses.replace(base, head=dataclasses.replace(base.head, **head), **top)


def deviations(config: TrainConfig) -> dict[str, Any]:
    """Recipe fields and head options whose value is not the protocol's (a preset's or a
    flag's): what makes a run an ablation of its protocol."""
    protocol = get_protocol(config.protocol)
    out = {k: getattr(config, k) for k, v in protocol.train_fields().items()
           if getattr(config, k) != v}
    if config.fusion == "mamba":
        out |= {f"head.{k}": getattr(config.head, k)
                for k, v in protocol.head_options("mamba").items()
                if getattr(config.head, k) not in (None, v)}
    return out


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The command line's config: protocol, then preset, then flags (module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--preset", choices=sorted(PRESETS))
    peek.add_argument("--protocol", choices=sorted(PROTOCOLS), default=CLEAN.name)
    known, rest = peek.parse_known_args(args)
    default = protocol_config(known.protocol)
    if known.preset:
        default = overlay(default, PRESETS[known.preset])
    description = (f"{TrainConfig.__doc__}\n\n--preset NAME: {', '.join(sorted(PRESETS))}\n"
                   f"--protocol NAME: {', '.join(PROTOCOLS)} (default clean)")
    return tyro.cli(TrainConfig, args=rest, default=default, description=description)


# Config fields that do not change what is trained: where outputs go, how the run is
# tracked, and which device/kernels compute the same maths. Every other field is in a run
# folder's fingerprint, and a rerun that changes one of them is refused (see `open_run`).
NOT_RESULT_FIELDS = frozenset({
    "out", "run_name", "resume", "restart",  # where the run lives, how to continue it
    "experiment", "tracking_uri", "track", "parent_run_id", "tags", "dataset_name",  # records
    "device", "compile", "cuda_graphs", "head.backend",  # execution: same maths, other kernels
    "progress", "json",  # what the console prints
})
LOCK_FILE, FINGERPRINT_FILE = "run.lock", "fingerprint.json"
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "rng", "state", "config"})
# what `--restart` deletes (never run.lock: the holder keeps its lock on that file)
RUN_OUTPUTS = ("last.pt", "last.tmp", "best.pt", "best.tmp", "predictions_best.npz",
               "history.csv", "per_class_accuracy.csv", "training_curves.png",
               "verb_confusion.png", "noun_confusion.png", "config.json", FINGERPRINT_FILE,
               tracking.RUN_FILE)


class RunFolderError(errors.HarnessError):
    """A run folder cannot be used as asked: in use, other settings, unreadable checkpoint."""


def resolve_device(name: str) -> torch.device:
    """`features.errors.resolve_device`: a missing GPU is a one-line error before any work."""
    return errors.resolve_device(name)


def run_dir(config: TrainConfig) -> Path:
    alone = {"video": "-video", "questions": "-questions"}  # one source only: its own folder
    one_source = alone.get(features_used(config), "")
    unshared = "-unsharedA" if config.head.shared_A is False else ""  # the ablation's own folder
    protocol = "" if config.protocol == "clean" else f"-{config.protocol}"
    name = config.run_name or (f"{config.fusion}-{config.backbone}-{config.task}{protocol}"
                               f"{one_source}{unshared}-s{config.seed}")
    return config.out / name


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config dict (`to_dict`) that change results, as JSON values."""
    fields = tracking.flatten("", config, {})
    return json.loads(json.dumps({k: v for k, v in sorted(fields.items())
                                  if k not in NOT_RESULT_FIELDS}))


class RunLock:
    """An flock on the folder's `run.lock`, which names its holder (pid, host, start time)
    for the refusal; the kernel drops the lock when the holder exits or is killed."""

    def __init__(self, folder: Path) -> None:
        self.path, self.fd = folder / LOCK_FILE, -1

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is in use by {holder or 'another process'}: wait for it "
                "to finish, or train under another --run-name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # releases the flock


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint this harness wrote, loaded with `weights_only=True`: anything else in
    the file is refused, never unpickled."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError,
            zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else "unreadable"
        raise RunFolderError(f"{path}: not a checkpoint fusion.train wrote; refused without "
                             f"unpickling it ({reason}); move it away or rerun with --restart"
                             ) from None


def setting_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """Fields whose value differs. A field missing from `old` (added to the harness after
    that folder was made) at its default is no change: the default is what the run did."""
    missing = "(unset)"
    default = fingerprint(to_dict(TrainConfig()))
    old = {**{k: v for k, v in default.items() if k not in old and new.get(k) == v}, **old}
    return {k: [old.get(k, missing), new.get(k, missing)]
            for k in sorted(old.keys() | new.keys()) if old.get(k, missing) != new.get(k, missing)}


def _write_fingerprint(folder: Path, fields: dict[str, Any], changes: list[dict]) -> None:
    record = {"fields": fields, "changes": changes}
    (folder / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def open_run(config: TrainConfig, folder: Path,
             device: torch.device) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint to resume (None: start fresh) and a note of changed settings ("" if
    none). Called with the folder's lock held, before any work; refuses a rerun whose
    settings differ unless `--resume` or `--restart`."""
    if config.track and tracking.close_orphan_run(folder):
        print(f"{folder}: its MLflow run was left RUNNING by a process that is gone; marked "
              "KILLED", file=sys.stderr)
    if config.restart:
        for name in RUN_OUTPUTS:
            (folder / name).unlink(missing_ok=True)
        print(f"restarting {folder}: its checkpoints and outputs are deleted", file=sys.stderr)
    new = fingerprint(to_dict(config))
    last = folder / "last.pt"
    checkpoint = load_checkpoint(last, device) if last.exists() else None
    if checkpoint is not None and not (isinstance(checkpoint, dict)
                                       and checkpoint.keys() >= CHECKPOINT_KEYS):
        missing = sorted(CHECKPOINT_KEYS - set(checkpoint if isinstance(checkpoint, dict) else {}))
        raise RunFolderError(f"{last}: not a fusion.train checkpoint (no {missing}); "
                             "move it away or rerun with --restart")
    if checkpoint is None:  # nothing trained yet: this run's settings are the folder's
        _write_fingerprint(folder, new, [])
        save_config(config, folder / "config.json")
        return None, ""
    record_path = folder / FINGERPRINT_FILE
    try:  # a folder from before fingerprints: the settings its checkpoint saved
        record = (json.loads(record_path.read_text()) if record_path.exists()
                  else {"fields": fingerprint(checkpoint["config"]), "changes": []})
        old = record["fields"]
    except (ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"{record_path}: unreadable ({errors.one_line(error)}); rerun "
                             "with --restart, or train under another --run-name") from None
    changed = setting_changes(old, new)
    if not changed:
        return checkpoint, ""
    note = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    if not config.resume:
        raise RunFolderError(
            f"{folder} was trained with other settings ({note}): rerun with --resume to "
            "continue it with the new settings (recorded), --run-name NAME for a new run, or "
            "--restart to delete its checkpoints and start over")
    epoch = checkpoint["state"]["epoch"]
    _write_fingerprint(folder, new, [*record["changes"], {"after_epoch": epoch,
                                                          "changed": changed}])
    save_config(config, folder / "config.json")  # the settings the run goes on with
    print(f"resuming {folder} with changed settings after epoch {epoch}: {note}",
          file=sys.stderr)
    return checkpoint, f"after epoch {epoch}: {note}"


def autocast_dtype(config: TrainConfig) -> torch.dtype:
    return torch.float16 if config.precision == "fp16" else torch.bfloat16


@torch.no_grad()
def predict(model: torch.nn.Module, split: FeatureSplit, batch_size: int, amp: bool,
            dtype: torch.dtype = torch.bfloat16, graphed: GraphedForward | None = None,
            on_device: bool = False) -> dict:
    """Softmax-free scores (logits) for every row of `split`, in order: numpy, or float32
    tensors on the model's device (`on_device`: what the EK100 metrics' device paths take;
    training's validation uses them, 5 ms instead of a host pass of ~0.1 s an epoch).

    Batches of 2 x `batch_size` rows; `graphed` (built for that size) replays them as a
    CUDA graph. The batches' scores stay on the device and go to the host once per head at
    the end: a copy per batch would wait for each batch's forward pass."""
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {"verb": [], "noun": []}
    for batch in split.batches(batch_size * 2):
        if graphed is not None:
            out = graphed(batch.inputs, batch.masks)
        else:
            with torch.autocast(split.verb.device.type, dtype, enabled=amp):
                out = model(batch.inputs, batch.masks)
        for head, parts in scores.items():
            parts.append(out[head].float())
    joined = {head: torch.cat(parts) for head, parts in scores.items()}
    return joined if on_device else {head: t.cpu().numpy() for head, t in joined.items()}


def build_training(config: TrainConfig, dims: dict[str, int], data_info: dict[str, Any],
                   steps_per_epoch: int, device: torch.device) -> tuple[Any, Any, Any]:
    """The head (the protocol's structure under the head options set), the optimizer with the
    SSM block's own LR group, and the protocol's schedule (`fusion.optim`)."""
    name, options = head_choice(config)
    try:
        model = build_head(name, modality_dims=dims, num_verbs=data_info["num_verbs"],
                           num_nouns=data_info["num_nouns"], **options).to(device)
    except TypeError as error:  # e.g. --head.d-state given to the MLP head
        raise HeadConfigError(f"fusion head {name!r} rejects the head options "
                              f"{options}: {error}") from error
    groups = param_groups(model, config.peak_lr, config.ssm_peak_lr, config.weight_decay,
                          getattr(model, "ssm_prefixes", ()), config.decay_exclusions,
                          config.a_log_lr)
    cuda = device.type == "cuda"
    optimizer = build_optimizer(groups, config.optimizer, fused=cuda,
                                capturable=cuda and config.cuda_graphs)
    if config.schedule == "authors":
        scheduler = build_authors_scheduler(optimizer, steps_per_epoch, config.epochs,
                                            config.warmup_epochs, config.start_lr,
                                            config.peak_lr, config.final_lr)
    else:
        scheduler = build_scheduler(
            optimizer, steps_per_epoch * config.epochs,
            round(config.warmup_epochs * steps_per_epoch),
            config.start_lr / config.peak_lr, config.final_lr / config.peak_lr,
        )
    return model, optimizer, scheduler


def head_choice(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The registered head `--fusion` names under the protocol (`--fusion mlp|transformer_*`
    under authors/paper: the authors' baselines, `fusion.heads.authors`) and its constructor
    options: the protocol's structure, then the head options set."""
    try:
        name, structure = protocol_head(config.protocol, config.fusion)
    except ValueError as error:
        raise errors.HarnessError(str(error)) from None
    return name, structure | config.head.kwargs()


def head_options(config: TrainConfig) -> dict[str, Any]:
    """The head's constructor options (`head_choice`)."""
    return head_choice(config)[1]


def graph_safe(config: TrainConfig) -> bool:
    """Whether a step can be captured as a CUDA graph: AdamW (capturable) in bf16 without
    mixup. SGD's update takes its LR as a number, fp16's scaler syncs with the host, and
    mixup draws a new λ each step, which a replayed graph would keep constant."""
    return config.optimizer == "adamw" and config.precision == "bf16" and not config.mixup_alpha


def mix_video(batch: Batch, alpha: float) -> tuple[Batch, float]:
    """Mixup of the video features: λ ~ Beta(α, α) per batch (the global torch RNG, saved in
    checkpoints), each clip mixed with the clip at the mirrored batch position; the questions
    are not mixed. PySlowFast's `MixUp._mix_batch` (facebookresearch/SlowFast
    `slowfast/datasets/mixup.py`) does this to the frames, which the authors' `train_net.py`
    applies to `inputs[0]`; their own `mixup` module is only stored compiled (not verified).
    Their CutMix half (SWITCH_PROB 0.5, a pixel box) has no counterpart on cached frame
    tokens, so every batch is mixed up."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    video, mask = batch.inputs["video"], batch.masks.get("video")
    masks = dict(batch.masks)
    if mask is not None:  # padded video tokens are zeros, and a token of either clip is real
        video = video * mask[..., None].to(video.dtype)
        masks["video"] = mask | mask.flip(0)
    mixed = video * lam + video.flip(0) * (1.0 - lam)
    return dataclasses.replace(batch, inputs={**batch.inputs, "video": mixed}, masks=masks), lam


def soft_cross_entropy(logits: Tensor, labels: Tensor, lam: float, smoothing: float) -> Tensor:
    """Cross-entropy with mixed, smoothed targets (PySlowFast's `mixup_target` targets; the
    authors' ViT-B config trains with `soft_cross_entropy`)."""
    classes = logits.shape[-1]
    off = smoothing / classes
    target = torch.full_like(logits, off).scatter_(1, labels[:, None], 1.0 - smoothing + off)
    target = target * lam + target.flip(0) * (1.0 - lam)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def label_loss(out: dict[str, Tensor], verb: Tensor, noun: Tensor, smoothing: float) -> Tensor:
    """Verb + noun cross-entropy on float32 logits."""
    return (F.cross_entropy(out["verb"].float(), verb, label_smoothing=smoothing)
            + F.cross_entropy(out["noun"].float(), noun, label_smoothing=smoothing))


@functools.cache
def compiled_label_loss() -> Callable[..., Tensor]:
    """`label_loss` through torch.compile, for `--compile` runs: eager, the two smoothed
    cross-entropies are dozens of small aten kernels a step outside the compiled head
    (log-softmax, NLL, the smoothing sums and means, their backward); compiled, the H200's
    graphed EK100 step launched 44 fewer and took 3.60 ms instead of 3.68 (issue 18)."""
    return torch.compile(label_loss)


def step_loss(model: torch.nn.Module, batch: Batch, config: TrainConfig, amp: bool) -> Tensor:
    """Verb + noun cross-entropy of one batch (autocast's weight cache off: CUDA-graph safe);
    with `mixup_alpha`, of the mixed batch against mixed soft targets."""
    lam = None
    if config.mixup_alpha > 0:
        batch, lam = mix_video(batch, config.mixup_alpha)
    with torch.autocast(batch.verb.device.type, autocast_dtype(config), enabled=amp,
                        cache_enabled=False):
        out = model(batch.inputs, batch.masks)
        if lam is not None:
            return (soft_cross_entropy(out["verb"].float(), batch.verb, lam,
                                       config.label_smoothing)
                    + soft_cross_entropy(out["noun"].float(), batch.noun, lam,
                                         config.label_smoothing))
        loss = compiled_label_loss() if config.compile else label_loss
        return loss(out, batch.verb, batch.noun, config.label_smoothing)


def train_step(model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig,
               amp: bool, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss (no host sync)."""
    loss = step_loss(model, batch, config, amp)
    optimizer.zero_grad(set_to_none=True)
    apply_gradients(model, loss, optimizer, config, scaler)
    scheduler.step()
    return loss.detach()


def apply_gradients(model: torch.nn.Module, loss: Tensor, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward, gradient clipping and the optimizer update (the caller zeroes gradients);
    with an fp16 `scaler`, on scaled gradients, unscaled before clipping. With fused AdamW
    (CUDA) and no scaler, the clipping factor goes into the update itself (`_clip_in_step`)."""
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if config.grad_clip > 0 and scaler is None and _fused_adam(optimizer):
        _clip_in_step(model, optimizer, config.grad_clip)
    elif config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Every group runs PyTorch's fused Adam(W) kernel, which divides the gradients by the
    optimizer's `grad_scale` tensor as it reads them (the hook `torch.amp.GradScaler` uses)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        g.get("fused") for g in optimizer.param_groups)


def _clip_in_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  max_norm: float) -> None:
    """Gradient-norm clipping done by the fused AdamW kernel: `clip_grad_norm_`'s factor
    max_norm / (norm + 1e-6), at most 1, becomes the optimizer's `grad_scale` divisor, so no
    pass multiplies every gradient in place (one multi-tensor kernel a step fewer; equal
    updates up to float rounding, `tests/fusion/test_train.py`). `.grad` keeps the unclipped
    gradients."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)


def _rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "shuffle": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())  # the checkpoint may be mapped to the GPU
    generator.set_state(state["shuffle"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


EpochCallback = Callable[[int, dict[str, float]], None]


def train(config: TrainConfig, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train (or resume) one run; returns the final metrics and paths.

    `on_epoch(epoch, metrics)` runs after each epoch's checkpoint is written; an exception
    it raises (e.g. `optuna.TrialPruned`) ends the run cleanly and propagates.
    """
    if config.resume and config.restart:
        raise errors.HarnessError("--resume and --restart exclude each other: pick one")
    head_options(config)  # a head the protocol does not define stops before any work
    if "video" not in features_used(config) and config.mixup_alpha > 0:  # no input: refused
        raise errors.HarnessError(
            f"--mixup-alpha {config.mixup_alpha} mixes the video features, and --video none "
            "leaves none: pass --mixup-alpha 0 for a questions-only run")
    device = resolve_device(config.device)  # before any work: a missing GPU leaves no folder
    folder = run_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(folder):
        checkpoint, changed = open_run(config, folder, device)
        if checkpoint is not None and not changed and complete(config, folder, checkpoint):
            return already_trained(config, folder, checkpoint["state"])
        return _train(config, folder, device, checkpoint, changed, on_epoch)


def complete(config: TrainConfig, folder: Path, checkpoint: dict[str, Any]) -> bool:
    """The run in `folder` ended (all epochs, or stopped early) and was closed (`history.csv`
    is written when a run ends): a rerun has nothing to train."""
    state = checkpoint["state"]
    stale = state["epoch"] - 1 - state["best_epoch"] if state["best_epoch"] >= 0 else 0
    stopped = config.patience > 0 and stale >= config.patience
    return (state["epoch"] >= config.epochs or stopped) and (folder / "history.csv").exists()


def already_trained(config: TrainConfig, folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A finished run's result, from its checkpoint: no features loaded, MLflow untouched."""
    if config.progress != "quiet":
        print(f"{folder}: complete ({state['epoch']} of {config.epochs} epochs): nothing to "
              "train (--restart trains it again)", file=sys.stderr)
    best = selected_metrics(state["history"], state["best_epoch"], config.selection)
    return {"run_id": state["run_id"], "folder": str(folder), "best": best,
            "epochs_run": state["epoch"], "checkpoint_seconds": 0.0}


def _train(config: TrainConfig, folder: Path, device: torch.device,
           checkpoint: dict[str, Any] | None, changed: str,
           on_epoch: EpochCallback | None) -> dict[str, Any]:
    amp = config.amp and device.type == "cuda"
    console = Console.create(config.progress, config.epochs, config.json)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_split, val_split, data_info = load_features(config, device)
    extra = data_info.get("metric_extra", {})

    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    model, optimizer, scheduler = build_training(config, train_split.dims, data_info,
                                                 steps_per_epoch, device)
    dtype = autocast_dtype(config)
    scaler = torch.amp.GradScaler("cuda") if amp and config.precision == "fp16" else None

    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "history": [], "run_id": None}
    last = folder / "last.pt"
    if checkpoint is not None:
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError) as error:  # shapes changed under --resume
            raise RunFolderError(f"{last}: does not fit this model ("
                                 f"{errors.one_line(error)[:300]}); rerun with --restart, or "
                                 "train under another --run-name") from None
        scheduler.load_state_dict(checkpoint["scheduler"])
        if changed:  # --resume with new settings: the new LRs and decay, not the saved ones
            for group, new in zip(optimizer.param_groups, fresh, strict=True):
                group.update({k: new[k] for k in ("initial_lr", "peak_lr", "weight_decay")})
            scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs,
                                           scheduler.lr_lambdas, strict=True):
                group["lr"] = base * factor(scheduler.last_epoch)
        _set_rng_state(checkpoint["rng"], generator)
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]

    forward = torch.compile(model) if config.compile else model  # shares model's weights
    evaluate = None
    if config.cuda_graphs and device.type == "cuda" and graph_safe(config):
        step = GraphedTrainStep(forward, optimizer, scheduler, config, amp)
        evaluate = GraphedForward(forward, config.batch_size * 2, amp, dtype)
    else:
        step = functools.partial(train_step, forward, optimizer=optimizer, scheduler=scheduler,
                                 config=config, amp=amp, scaler=scaler)
    if config.track:
        run = tracking.start_run(config, state["run_id"], data_info, model, folder)
        state["run_id"] = run.info.run_id
        if changed:
            tracking.set_tags({f"settings_changed.epoch{state['epoch']}": changed[:5000]})
        tracking.set_tags({"protocol": config.protocol,
                           "protocol.deviations": json.dumps(deviations(config))[:5000],
                           "features": features_used(config)})  # video, questions or both
    console.header(*run_header(
        config, device=device, folder=folder, head=head_choice(config)[0],
        params=count_params(model), train_clips=len(train_split), val_clips=len(val_split),
        data_info=data_info, deviations=deviations(config), steps_per_epoch=steps_per_epoch,
        resumed_after=state["epoch"], graphs=isinstance(step, GraphedTrainStep),
        streamed=isinstance(train_split, StreamedSplit), run_id=state["run_id"],
        tracking_uri=tracking.tracking_uri(config.tracking_uri) if config.track else None))
    metric_name = config.early_stop_metric or HEADLINE_METRIC[config.task]
    shown = list(dict.fromkeys([HEADLINE_METRIC[config.task], metric_name]))  # best: the last
    stale = state["epoch"] - 1 - state["best_epoch"] if state["best_epoch"] >= 0 else 0
    val_labels = val_split.verb.cpu().numpy(), val_split.noun.cpu().numpy()  # once, not per epoch

    checkpoint_seconds = 0.0  # writing last.pt / best.pt, this invocation (benchmarks)
    # a run that raises ends FAILED (Ctrl-C: KILLED) in MLflow, not left RUNNING
    with tracking.ended_on_error(state["run_id"] if config.track else None):
        for epoch in range(state["epoch"], config.epochs):
            if config.patience and stale >= config.patience:
                console.print(f"early stop: no {metric_name} gain for {stale} epochs")
                break
            model.train()
            started, total_loss, seen = time.perf_counter(), torch.zeros((), device=device), 0
            if isinstance(step, GraphedTrainStep) and isinstance(train_split, FeatureSplit):
                # the same batches, gathered inside the graph
                batches = train_split.row_batches(config.batch_size, generator)
            else:
                batches = train_split.batches(config.batch_size, generator)
            progress = console.steps(batches, epoch + 1, steps_per_epoch)
            for batch in progress:
                loss = step(batch)
                total_loss.add_(loss, alpha=len(batch.index))  # one kernel, no host sync
                seen += len(batch.index)
                progress.update(total_loss, seen)
            progress.close()
            train_loss = float(total_loss) / max(seen, 1)
            validating = time.perf_counter()
            scores = predict(forward, val_split, config.batch_size, amp, dtype, evaluate,
                             on_device=True)
            metrics = metrics_for(config.task, scores["verb"], scores["noun"], *val_labels, **extra)
            ended = time.perf_counter()
            record = {"epoch": epoch + 1, "train_loss": train_loss,
                      "epoch_seconds": ended - started,  # the whole epoch, validation included
                      "val_seconds": ended - validating,  # predict + metrics
                      "lr": float(optimizer.param_groups[0]["lr"]), **metrics}
            state["history"].append(record)
            if config.track:
                tracking.log_epoch(record, step=epoch + 1)
            improved = metrics[metric_name] > state["best"]
            if improved:
                state["best"], state["best_epoch"] = metrics[metric_name], epoch
                save_predictions(folder / "predictions_best.npz", val_split.narration_ids,
                                 scores["verb"], scores["noun"], source={
                                     "run": str(folder), "checkpoint": "best",
                                     "split": config.val_split,
                                     "trained_on": config.train_split,
                                     "in_sample": config.val_split == config.train_split,
                                     "selected_on": config.val_split})
            stale = 0 if improved else stale + 1
            state["epoch"] = epoch + 1
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": _rng_state(generator),
                          "state": state, "config": to_dict(config),
                          "scaler": scaler.state_dict() if scaler is not None else {}}
            saving = time.perf_counter()
            torch.save(checkpoint, folder / "last.tmp")  # serialised once, copied for best.pt
            if improved:
                shutil.copyfile(folder / "last.tmp", folder / "best.tmp")
                (folder / "best.tmp").replace(folder / "best.pt")
            (folder / "last.tmp").replace(last)  # atomic: a kill never leaves a torn checkpoint
            checkpoint_seconds += time.perf_counter() - saving
            console.epoch(record, shown, state["best"], state["best_epoch"] + 1)
            if on_epoch is not None:
                try:
                    on_epoch(epoch + 1, metrics)
                except BaseException:
                    if config.track:
                        tracking.finish_run({}, folder, state["history"], val_split, data_info,
                                            status="KILLED")
                    raise

    best = selected_metrics(state["history"], state["best_epoch"], config.selection)
    final = {f"best_{k}": v for k, v in best.items() if isinstance(v, int | float)}
    if config.track:
        tracking.finish_run(final, folder, state["history"], val_split, data_info)
    else:
        tracking.write_history(folder, state["history"])
    return {"run_id": state["run_id"], "folder": str(folder), "best": best,
            "epochs_run": state["epoch"], "checkpoint_seconds": checkpoint_seconds}


NOT_MAXIMISED = frozenset({"epoch", "train_loss", "epoch_seconds", "val_seconds", "lr"})


def selected_metrics(history: list[dict[str, Any]], best_epoch: int,
                     rule: str) -> dict[str, Any]:
    """The reported metrics. `best-epoch`: the record of the epoch best on the selection
    metric. `running-max`: each validation metric's own maximum over epochs, as the authors'
    `EPICValMeter.log_epoch_stats` reports them (`max_verb_top1_acc`, `max_top1_acc`, ...;
    `Dongzhikang/MambaVL` @ 601b789d48acdf34ada50e9b4f78f219ffc470dc,
    `slowfast/utils/meters.py`): the maxima may come from different epochs, so no one
    checkpoint scores them all; `epoch` stays the best epoch's."""
    if best_epoch < 0:
        return {}
    best = dict(history[best_epoch])
    if rule == "running-max":
        for key, value in best.items():
            if key not in NOT_MAXIMISED and isinstance(value, int | float):
                best[key] = max(r[key] for r in history)
    elif rule != "best-epoch":
        raise ValueError(f"unknown selection {rule!r}; choose best-epoch or running-max")
    return best


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    result = train(config)
    if config.json:
        print(final_json(result))
    else:
        print(summary(result, config.task, config.selection, config.epochs,
                      tracking.tracking_uri(config.tracking_uri) if config.track else None,
                      compact=config.progress == "quiet"))


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

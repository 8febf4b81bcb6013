"""What `python -m fusion.train` prints: a header, per-step progress, one line per epoch, a summary.

Why a module of its own: the same run is watched in a terminal (a tqdm bar that redraws in
place), written to a log file or a pipe (where a bar cannot draw, so a plain progress line
every ~10 % of an epoch), or run as a sweep trial (quiet); the training loop only says what
happened and this module decides how it reads. Numbers are formatted for people:
accuracies in % to one decimal, learning rates in scientific notation (a 1.35e-05 rate is
never printed as 0.0), durations as 12.4s / 3m05s. `--json` swaps the epoch lines and the
summary for JSON (floats to 4 significant digits) for programs that read the output.

Everything goes to stderr except the summary (or the final JSON), which is the command's
result on stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from tqdm import tqdm

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from fusion.train import TrainConfig

Progress = Literal["auto", "bar", "lines", "quiet"]
T = TypeVar("T")

LINES_PER_EPOCH = 10
"""Progress lines per epoch in `lines` mode (one every ~10 % of the steps)."""
LINE_MIN_SECONDS = 30.0
"""...and at most one every this many seconds: a short epoch's own line is enough, and a log
shows a sign of life at least this often during long ones."""
BAR_LOSS_SECONDS = 0.5
"""How often the bar's running loss is read from the device (each read is a host sync)."""
SIGNIFICANT = 4
"""Significant digits of the floats in `--json` output."""

# the headline metrics of each task, shown in the summary
SUMMARY_METRICS = {
    "recognition": ("action_top1", "verb_top1", "noun_top1", "action_top5"),
    "anticipation": ("action_recall5", "verb_recall5", "noun_recall5"),
}


def percent(fraction: float) -> str:
    """An accuracy (a fraction in [0, 1]) in % to one decimal: 0.41234 -> '41.2'."""
    return f"{100 * fraction:.1f}"


def sci(value: float) -> str:
    """A learning rate in scientific notation: 1.35e-05, never rounded to 0."""
    return f"{value:.2e}"


def loss_text(value: float) -> str:
    """A loss to 3 significant digits, trailing zeros kept so a log's column lines up
    (2.31, 4.90, 0.0123, 112), without losing small values."""
    return f"{value:#.3g}".rstrip(".")


def duration(seconds: float) -> str:
    """12.4s, 3m05s or 2h07m: short and unambiguous in a log."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def metric_label(name: str) -> str:
    """A metric key as people read it: action_top1 -> 'action@1', action_recall5 ->
    'action R@5', tail_noun_top1 -> 'tail noun@1'; other keys unchanged."""
    for suffix, label in (("_top", "@"), ("_recall", " R@")):
        stem, found, k = name.rpartition(suffix)
        if found and k.isdigit():
            return f"{stem.replace('_', ' ')}{label}{k}"
    return name


def rounded(value: Any, digits: int = SIGNIFICANT) -> Any:
    """Floats to `digits` significant digits (so 1.35e-05 stays 1.35e-05); others as given."""
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        return float(f"{value:.{digits}g}")
    return value


def json_line(record: dict[str, Any]) -> str:
    return json.dumps({k: rounded(v) for k, v in record.items()})


def epoch_line(record: dict[str, Any], epochs: int, shown: Sequence[str], best: float,
               best_epoch: int) -> str:
    """`epoch  7/100  loss 2.31  action@1 41.2  best 41.9 @ 5  lr 1.35e-05  12.4s`.

    `shown`: the metric keys to print (the headline first; the selection metric last, which
    `best` and `best_epoch` (1-based) refer to). The epoch number is padded to the width of
    `epochs` and percentages to 4 characters, so a log's columns line up.
    """
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}",
             f"loss {loss_text(record['train_loss'])}"]
    parts += [f"{metric_label(k)} {percent(record[k]):>4}" for k in shown if k in record]
    if best_epoch > 0:
        parts.append(f"best {percent(best):>4} @ {best_epoch:<{width}}")
    parts += [f"lr {sci(record['lr'])}", duration(record["epoch_seconds"])]
    return "  ".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_header(config: TrainConfig, *, device: torch.device, folder: Path, head: str,
               params: int, train_clips: int, val_clips: int, data_info: dict[str, Any],
               deviations: dict[str, Any], steps_per_epoch: int, resumed_after: int,
               graphs: bool, streamed: bool, run_id: str | None,
               tracking_uri: str | None) -> tuple[str, list[tuple[str, str]]]:
    """The title and rows printed before the first epoch: what trains, on what, where."""
    import torch

    from fusion.data import features_used, text_store_name, video_store_name

    if device.type == "cuda":
        where = f"{device} {torch.cuda.get_device_name(device)}"
        precision = (f"{config.precision} autocast" + (" + grad scaler"
                                                       if config.precision == "fp16" else "")
                     if config.amp else "fp32")
    else:
        where, precision = f"{device} ({torch.get_num_threads()} threads)", "fp32"
    execution = [where, precision, *(["torch.compile"] if config.compile else []),
                 *(["CUDA graphs"] if graphs else [])]
    used = features_used(config)
    stores = [*([f"video {video_store_name(config)}"] if "video" in used else []),
              *([f"questions {text_store_name(config)}"] if "questions" in used else [])]
    data = (f"{config.data} ({data_info.get('dataset', config.data.name)}): "
            f"{train_clips:,} {config.train_split} clips, {val_clips:,} {config.val_split} clips")
    excluded = {k: v for k, v in data_info.get("excluded", {}).items() if v}
    if excluded:
        data += "; failed extraction, left out: " + ", ".join(f"{k} {v:,}"
                                                             for k, v in excluded.items())
    if streamed:
        data += "; streamed from the stores"
    changed = " ".join(f"{k}={_number(v)}" for k, v in deviations.items())
    lrs = f"lr {sci(config.peak_lr)}" + (f" (SSM {sci(config.ssm_peak_lr)})"
                                         if config.fusion == "mamba" else "")
    if resumed_after >= config.epochs:
        state = f"complete ({resumed_after} of {config.epochs} epochs): nothing to train"
    elif resumed_after:
        state = f"resuming after epoch {resumed_after}"
    else:
        state = "new"
    rows = [
        ("device", ", ".join(execution)),
        ("data", data),
        ("features", " + ".join(stores)),
        ("protocol", config.protocol + (f"; changed: {changed}" if changed else "")),
        ("training", f"{config.epochs} epochs x {steps_per_epoch:,} steps of {config.batch_size}"
                     f", {config.optimizer}, {lrs}, {config.schedule}, seed {config.seed}"),
        ("run", f"{folder} ({state})"),
        ("mlflow", f"run {run_id} in {tracking_uri}, experiment {config.experiment}"
         if run_id else "off (--no-track)"),
    ]
    title = (f"fusion.train: {head} head, {params:,} parameters, {config.task}")
    return title, rows


def resolve_mode(progress: Progress, stream: IO[str]) -> Literal["bar", "lines", "quiet"]:
    """`auto`: a bar where `stream` is a terminal, progress lines where it is a file or pipe,
    or a terminal that reports no width (a pty without a size: tqdm would draw nothing)."""
    if progress != "auto":
        return progress
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return "lines"
    try:
        return "bar" if os.get_terminal_size(stream.fileno()).columns > 0 else "lines"
    except (OSError, ValueError):
        return "lines"


@dataclass
class Console:
    """The training run's output. `mode` is resolved (bar, lines or quiet); `json` prints
    epoch records as JSON lines instead of epoch lines."""

    mode: Literal["bar", "lines", "quiet"]
    epochs: int
    json: bool = False
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    min_interval: float = LINE_MIN_SECONDS

    @classmethod
    def create(cls, progress: Progress, epochs: int, json: bool = False,
               stream: IO[str] | None = None) -> Console:
        stream = sys.stderr if stream is None else stream
        return cls(resolve_mode(progress, stream), epochs, json, stream)

    def print(self, text: str) -> None:
        """A line that is part of the run's story (not shown in quiet mode)."""
        if self.mode != "quiet":
            print(text, file=self.stream, flush=True)

    def header(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        """The title, then `name  value` rows aligned on their values."""
        width = max((len(name) for name, _ in rows), default=0)
        self.print("\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)]))
        self.print("")

    def steps(self, batches: Iterable[T], epoch: int, total: int) -> StepProgress[T]:
        """The epoch's batches, with progress drawn as `mode` says; call `update` per step."""
        return StepProgress(self, batches, epoch, total)

    def epoch(self, record: dict[str, Any], shown: Sequence[str], best: float,
              best_epoch: int) -> None:
        """The epoch's line (or its JSON record)."""
        self.print(json_line(record) if self.json
                   else epoch_line(record, self.epochs, shown, best, best_epoch))


class StepProgress(Iterator[T]):
    """One epoch's batches. `bar`: a tqdm bar with the running loss (read every
    `BAR_LOSS_SECONDS`); `lines`: `epoch 3/20  step 200/525  loss 2.41  12.3 step/s  eta 26.0s`
    every ~10 % of the steps, at most every `min_interval` seconds; `quiet`: nothing."""

    def __init__(self, console: Console, batches: Iterable[T], epoch: int, total: int) -> None:
        self.console, self.total, self.epoch = console, total, epoch
        self.desc = f"epoch {epoch:>{len(str(console.epochs))}}/{console.epochs}"
        self.started = self.shown = time.monotonic()
        self.step = 0
        self.every = max(1, math.ceil(total / LINES_PER_EPOCH))
        self.bar: tqdm | None = None
        if console.mode == "bar":
            self.bar = tqdm(batches, total=total, desc=self.desc, leave=False,
                            file=console.stream, dynamic_ncols=True, unit="step")
            self.batches: Iterator[T] = iter(self.bar)
        else:
            self.batches = iter(batches)

    def __next__(self) -> T:
        return next(self.batches)

    def update(self, total_loss: torch.Tensor | float, seen: int) -> None:
        """After a step: `total_loss` summed over the `seen` clips so far (a device tensor is
        read only when a line or the bar's loss is due)."""
        self.step += 1
        now = time.monotonic()
        if self.bar is not None:
            if now - self.shown >= BAR_LOSS_SECONDS:
                self.shown = now
                self.bar.set_postfix_str(f"loss {loss_text(float(total_loss) / max(seen, 1))}")
            return
        if (self.console.mode != "lines" or self.step % self.every or self.step >= self.total
                or now - self.shown < self.console.min_interval):
            return
        self.shown = now
        rate = self.step / max(now - self.started, 1e-9)
        speed = f"{rate:.1f} step/s" if rate >= 1 else f"{1 / rate:.1f} s/step"  # as tqdm
        self.console.print(
            f"{self.desc}  step {self.step}/{self.total}  "
            f"loss {loss_text(float(total_loss) / max(seen, 1))}  {speed}  "
            f"eta {duration((self.total - self.step) / rate)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(result: dict[str, Any], task: str, selection: str, epochs: int,
            tracking_uri: str | None, compact: bool = False) -> str:
    """The run's result for people: the best epoch and its headline validation metrics (%),
    the run folder, the MLflow run. `compact`: one line (quiet mode)."""
    best, run_id, folder = result["best"], result["run_id"], result["folder"]
    if not best:
        return f"no epoch trained (--epochs {epochs}); run folder {folder}"
    metrics = "  ".join(f"{metric_label(k)} {percent(best[k])}"
                        for k in SUMMARY_METRICS.get(task, ()) if k in best)
    stopped = (f", stopped early after {result['epochs_run']}"
               if result["epochs_run"] < epochs else "")
    maxima = ", each metric's maximum over epochs" if selection == "running-max" else ""
    first = f"best epoch {best['epoch']}/{epochs}{stopped} (validation %{maxima}): {metrics}"
    if compact:
        return f"{first}  {folder}" + (f"  mlflow {run_id}" if run_id else "")
    lines = [f"done: {first}", f"  run folder  {folder}"]
    if run_id:
        lines.append(f"  mlflow run  {run_id}  (mlflow ui --backend-store-uri {tracking_uri})")
    return "\n".join(lines)


def final_json(result: dict[str, Any]) -> str:
    """`--json`'s result: run id, folder and the best record's floats (4 significant digits)."""
    return json.dumps({"run_id": result["run_id"], "folder": result["folder"],
                       **{k: rounded(v) for k, v in result["best"].items()
                          if isinstance(v, float)}})

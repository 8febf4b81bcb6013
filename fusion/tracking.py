"""MLflow record of a training run: everything `reports.tables` needs to rebuild a table.

One run per training. Params are the flattened effective config; tags name what the run
is (fusion, backbone, task, dataset, git revision, feature-store manifest hashes) so that
reports can select runs without parsing params; metrics are per-epoch curves plus the
`best_*` values; artifacts hold predictions, per-class accuracy, a verb confusion matrix,
training curves and the best checkpoint.

Start-up: MLflow creates and migrates a fresh sqlite database on first use, and two processes
doing that at once collide (`duplicate column name: step`); `connect` does it under an flock
on `<database>.lock`. The run folder's `run.json` names the run it feeds, so a run left
RUNNING by a killed process is marked KILLED when the folder is next used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.config import to_dict
from fusion.data import features_used

if TYPE_CHECKING:
    import mlflow
    from torch import nn

    from fusion.data import FeatureSplit
    from fusion.train import TrainConfig

DEFAULT_URI = "sqlite:///mlruns.db"
RUN_FILE = "run.json"  # {"run_id", "tracking_uri"} of the MLflow run a run folder feeds


def _mlflow():  # imported on first use: training without tracking needs no MLflow
    import mlflow

    return mlflow


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


@contextlib.contextmanager
def _startup_lock(uri: str) -> Iterator[None]:
    """Hold an flock next to a sqlite tracking database (other stores need none)."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database if uri.startswith("sqlite:") else None
    if not database:
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        yield


def connect(uri: str, experiment: str | None = None) -> None:
    """Point MLflow at `uri` (creating/migrating its database under the start-up lock)."""
    with _startup_lock(uri):
        _mlflow().set_tracking_uri(uri)
        if experiment is not None:
            _mlflow().set_experiment(experiment)
        else:
            _mlflow().MlflowClient(uri).search_experiments(max_results=1)  # opens the store


def close_orphan_run(folder: Path) -> str | None:
    """Mark the folder's MLflow run KILLED if it is still RUNNING: the caller holds the
    folder's lock, so its owner is gone. Returns the run id so marked."""
    record = folder / RUN_FILE
    if not record.exists():
        return None
    try:
        info = json.loads(record.read_text())
        run_id, uri = info["run_id"], info["tracking_uri"]
    except (ValueError, KeyError, TypeError):
        return None  # a torn record names no run we could mark
    connect(uri)
    client = _mlflow().MlflowClient(uri)
    try:
        status = client.get_run(run_id).info.status
    except _mlflow().exceptions.MlflowException:
        return None  # deleted, or another tracking store
    if status != "RUNNING":
        return None
    client.set_terminated(run_id, status="KILLED")
    return run_id


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (`head.d_model`), added to `out`."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = value
    return out


def start_run(
    config: TrainConfig, run_id: str | None, data_info: dict, model: nn.Module, folder: Path
) -> mlflow.ActiveRun:
    """Open (or reopen, when resuming) the run and log params and tags once."""
    uri = tracking_uri(config.tracking_uri)
    connect(uri, config.experiment)
    if run_id is not None:
        run = _mlflow().start_run(run_id=run_id)
        _record(folder, run, uri)
        return run
    tags = {
        "fusion": config.fusion,
        "backbone": config.backbone,
        "task": config.task,
        "text_model": config.text_model,
        "features": features_used(config),
        "dataset": config.dataset_name or data_info.get("dataset", "unknown"),
        "git_revision": git_revision(),
        "backbone_weights": data_info.get("backbone_weights", "unknown"),
        "run_folder": str(folder.resolve()),
        **{f"manifest.{k}": v for k, v in data_info.get("manifests", {}).items()},
        **dict(tag.split("=", 1) for tag in config.tags),
    }
    if config.parent_run_id:
        tags["mlflow.parentRunId"] = config.parent_run_id
    excluded = data_info.get("excluded")
    if excluded:  # rows the loader left out (failed extraction): say how many, per split
        tags.update({k: str(v) for k, v in flatten("excluded", excluded, {}).items()})
    run = _mlflow().start_run(run_name=folder.name, tags=tags)
    _record(folder, run, uri)
    params = flatten("", to_dict(config), {})
    _mlflow().log_params({k: ("None" if v is None else v) for k, v in params.items()})
    from fusion.profile import profile_model

    cost = profile_model(model, data_info["profile_shapes"])
    _mlflow().log_metrics({"params": cost["params"], "flops": cost["flops"]})
    return run


def _record(folder: Path, run: mlflow.ActiveRun, uri: str) -> None:
    (folder / RUN_FILE).write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))


def set_tags(tags: dict[str, str]) -> None:
    _mlflow().set_tags(tags)


@contextlib.contextmanager
def ended_on_error(run_id: str | None) -> Iterator[None]:
    """An exception inside ends run `run_id`, if still active, FAILED (Ctrl-C: KILLED)."""
    try:
        yield
    except BaseException as error:
        active = _mlflow().active_run() if run_id else None
        if active is not None and active.info.run_id == run_id:
            _mlflow().end_run(status="KILLED" if isinstance(error, KeyboardInterrupt)
                              else "FAILED")
        raise


def log_epoch(record: dict[str, Any], step: int) -> None:
    _mlflow().log_metrics(
        {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, int | float)},
        step=step,
    )


def _per_class(split: FeatureSplit, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for name in ("verb", "noun"):
        labels = getattr(split, name).cpu().numpy()
        predicted = scores[name].argmax(1)
        for class_id in np.unique(labels[labels >= 0]):
            hit = predicted[labels == class_id] == class_id
            rows.append({"head": name, "class_id": int(class_id), "count": int(hit.size),
                         "top1": float(hit.mean())})
    return pd.DataFrame(rows)


def _plots(folder: Path, history: list[dict], split: FeatureSplit,
           scores: dict[str, np.ndarray]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(frame["epoch"], frame["train_loss"], label="train loss")
    left.set_xlabel("epoch")
    left.legend()
    for column in [c for c in frame.columns if c.endswith(("top1", "recall5"))][:6]:
        right.plot(frame["epoch"], frame[column], label=column)
    right.set_xlabel("epoch")
    right.legend(fontsize=7)
    fig.tight_layout()
    curves = folder / "training_curves.png"
    fig.savefig(curves, dpi=120)
    plt.close(fig)

    labels = split.verb.cpu().numpy()
    keep = labels >= 0
    num = scores["verb"].shape[1]
    matrix = np.zeros((num, num))
    np.add.at(matrix, (labels[keep], scores["verb"][keep].argmax(1)), 1)
    matrix /= np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted verb")
    ax.set_ylabel("true verb")
    fig.colorbar(image)
    fig.tight_layout()
    confusion = folder / "verb_confusion.png"
    fig.savefig(confusion, dpi=120)
    plt.close(fig)
    return [curves, confusion]


def write_history(folder: Path, history: list[dict]) -> None:
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)


def finish_run(final: dict[str, float], folder: Path, history: list[dict],
               split: FeatureSplit, data_info: dict, status: str = "FINISHED") -> None:
    """Log best metrics and artifacts, then end the run."""
    _mlflow().log_metrics(final)
    predictions = folder / "predictions_best.npz"
    if predictions.exists():
        with np.load(predictions) as data:
            scores = {"verb": data["verb_scores"], "noun": data["noun_scores"]}
        per_class = folder / "per_class_accuracy.csv"
        _per_class(split, scores).to_csv(per_class, index=False)
        for path in [predictions, per_class, *_plots(folder, history, split, scores)]:
            _mlflow().log_artifact(str(path))
    write_history(folder, history)
    for name in ("config.json", "fingerprint.json", "history.csv", "best.pt"):
        if (folder / name).exists():
            _mlflow().log_artifact(str(folder / name))
    _mlflow().end_run(status=status)

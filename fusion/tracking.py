"""MLflow record of a training run: everything `reports.tables` needs to rebuild a table.

One run per training. Params are the flattened effective config; tags name what the run
is (fusion, backbone, task, dataset, git revision, feature-store manifest hashes) so that
reports can select runs without parsing params; metrics are per-epoch curves plus the
`best_*` values; artifacts hold predictions, per-class accuracy, a verb confusion matrix,
training curves and the best checkpoint.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.config import to_dict

if TYPE_CHECKING:
    import mlflow
    from torch import nn

    from fusion.data import FeatureSplit
    from fusion.train import TrainConfig

DEFAULT_URI = "sqlite:///mlruns.db"


def _mlflow():  # imported on first use: training without tracking needs no MLflow
    import mlflow

    return mlflow


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = value
    return out


def start_run(
    config: TrainConfig, run_id: str | None, data_info: dict, model: nn.Module, folder: Path
) -> mlflow.ActiveRun:
    """Open (or reopen, when resuming) the run and log params and tags once."""
    _mlflow().set_tracking_uri(tracking_uri(config.tracking_uri))
    _mlflow().set_experiment(config.experiment)
    if run_id is not None:
        return _mlflow().start_run(run_id=run_id)
    tags = {
        "fusion": config.fusion,
        "backbone": config.backbone,
        "task": config.task,
        "text_model": config.text_model,
        "features": "video" if config.questions == "none" else "video+questions",
        "dataset": config.dataset_name or data_info.get("dataset", "unknown"),
        "git_revision": git_revision(),
        "run_folder": str(folder.resolve()),
        **{f"manifest.{k}": v for k, v in data_info.get("manifests", {}).items()},
        **dict(tag.split("=", 1) for tag in config.tags),
    }
    if config.parent_run_id:
        tags["mlflow.parentRunId"] = config.parent_run_id
    run = _mlflow().start_run(run_name=folder.name, tags=tags)
    params = _flatten("", to_dict(config), {})
    _mlflow().log_params({k: ("None" if v is None else v) for k, v in params.items()})
    from fusion.profile import profile_model

    cost = profile_model(model, data_info["profile_shapes"])
    _mlflow().log_metrics({"params": cost["params"], "flops": cost["flops"]})
    return run


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
    for name in ("config.json", "history.csv", "best.pt"):
        if (folder / name).exists():
            _mlflow().log_artifact(str(folder / name))
    _mlflow().end_run(status=status)

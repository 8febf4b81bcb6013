"""MLflow record of a training run: everything `reports.tables` needs to rebuild a table.

One run per training. Params are the flattened config with every `None`/`auto` replaced by
the value used (`resolved_params`: the device, the headline metric, the head's options, the
store names, the tracking URI), so the UI never shows what the run did not do. Tags name what
the run is (fusion, backbone, task, dataset, git revision, feature-store manifest hashes) and
what its features really are (`feature_tags`, read from the stores' manifests: a store of
random-init or imported features is never tagged like AVION features on EK100), so reports
select runs without parsing params; metrics are per-epoch curves plus the `best_*` values;
artifacts hold predictions, per-class accuracy with class names, verb and noun confusion
matrices, training curves and the best checkpoint.

Artifacts live beside a SQLite tracking database (`<its folder>/mlartifacts`), not in
`./mlruns` of whatever folder the command ran in (MLflow's default): `ensure_experiment`
creates experiments there; an existing experiment keeps its location.

Start-up: MLflow creates and migrates a fresh sqlite database on first use, and two processes
doing that at once collide (`duplicate column name: step`); `connect` does it under an flock
on `<database>.lock`. The run folder's `run.json` names the run it feeds, so a run left
RUNNING by a killed process is marked KILLED when the folder is next used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
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
OUTPUT_FIELDS = ("progress", "json")  # console settings: not logged as params


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


def connect(uri: str, experiment: str | None = None) -> str | None:
    """Point MLflow at `uri` (creating/migrating its database under the start-up lock) and
    make `experiment` the active one (`ensure_experiment`); returns its id."""
    _mlflow()  # configures its loggers on import; then: its INFO lines ("Creating initial
    # MLflow database tables...") would print above the training header; warnings still show
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with _startup_lock(uri):
        _mlflow().set_tracking_uri(uri)
        if experiment is None:
            _mlflow().MlflowClient(uri).search_experiments(max_results=1)  # opens the store
            return None
        experiment_id = ensure_experiment(uri, experiment)
        _mlflow().set_experiment(experiment_id=experiment_id)
        return experiment_id


ARTIFACTS_DIR = "mlartifacts"  # the folder name `mlflow server` uses for its artifact root


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: `<folder of the SQLite database>/mlartifacts`
    (absolute), so runs and their files stay together whatever folder a command ran in;
    None for other stores (their server or MLflow decides)."""
    from sqlalchemy.engine import make_url

    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    return str(Path(database).expanduser().resolve().parent / ARTIFACTS_DIR)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created with `artifact_location(uri)` when missing; an
    existing experiment keeps its own location (its runs' files are there)."""
    client = _mlflow().MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except _mlflow().exceptions.MlflowException:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


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
    """Open (or reopen, when resuming) the run and log params and tags once.

    The run's name is its folder's, unless `config.tags` sets `mlflow.runName` (sweeps name
    their trials `<study>/trial-NNNN`)."""
    uri = tracking_uri(config.tracking_uri)
    connect(uri, config.experiment)
    if run_id is not None:
        run = _mlflow().start_run(run_id=run_id)
        _record(folder, run, uri)
        return run
    features = feature_tags(config, data_info)
    tags = {
        "fusion": config.fusion,
        "backbone": config.backbone,
        "task": config.task,
        "text_model": config.text_model,
        "features": features_used(config),
        "dataset": config.dataset_name or data_info.get("dataset", "unknown"),
        "git_revision": git_revision(),
        "backbone_weights": features.pop("backbone_weights"),
        "run_folder": str(folder.resolve()),
        **features,
        **{f"manifest.{k}": v for k, v in data_info.get("manifests", {}).items()},
        **dict(tag.split("=", 1) for tag in config.tags),
    }
    if config.parent_run_id:
        tags["mlflow.parentRunId"] = config.parent_run_id
    excluded = data_info.get("excluded")
    if excluded:  # rows the loader left out (failed extraction): say how many, per split
        tags.update({k: str(v) for k, v in flatten("excluded", excluded, {}).items()})
    run = _mlflow().start_run(run_name=tags.pop("mlflow.runName", folder.name), tags=tags)
    _record(folder, run, uri)
    _mlflow().log_params(resolved_params(config, data_info, model, folder, uri))
    from fusion.profile import profile_model

    cost = profile_model(model, data_info["profile_shapes"])
    # the clip counts behind every accuracy: the reports' confidence intervals need them
    clips = {k: data_info[k] for k in ("train_clips", "val_clips") if k in data_info}
    _mlflow().log_metrics({"params": cost["params"], "flops": cost["flops"], **clips})
    return run


NOT_APPLICABLE = "n/a"  # a head option the head does not take (d_state of the MLP head)


def resolved_params(config: TrainConfig, data_info: dict, model: nn.Module, folder: Path,
                    uri: str) -> dict[str, Any]:
    """The flattened config with each `None`/`auto` replaced by the value the run used: what
    a reader of the MLflow table needs, where `None` would say nothing. (The run folder's
    `config.json` keeps the options as given, which is what a rerun needs.)"""
    from fusion.data import text_store_name, video_store_name
    from fusion.metrics import HEADLINE_METRIC

    params = flatten("", to_dict(config), {})
    device = next(model.parameters()).device
    used = features_used(config)
    stream = data_info.get("streamed")
    resolved: dict[str, Any] = {
        "device": str(device),
        "amp": config.amp and device.type == "cuda",  # autocast is off on CPU
        "early_stop_metric": config.early_stop_metric or HEADLINE_METRIC[config.task],
        "tracking_uri": uri,
        "run_name": folder.name,
        "dataset": config.dataset or config.data.name,
        "dataset_name": config.dataset_name or data_info.get("dataset", "unknown"),
        "video_store": video_store_name(config) if "video" in used else "none (no video)",
        "text_store": text_store_name(config) if "questions" in used else "none (no questions)",
        "parent_run_id": config.parent_run_id or "none",
        "stream": ("always" if stream else "never") if stream is not None else (
            "never" if config.stream == "auto" and device.type != "cuda"  # auto: CUDA only
            else config.stream),
        **{f"head.{k}": v for k, v in head_params(config, model).items()},
    }
    for name in OUTPUT_FIELDS:  # how the console looks, not what the run did
        params.pop(name, None)
    params.update({k: v for k, v in resolved.items() if k in params})
    return {k: ("None" if v is None else v) for k, v in params.items()}


def head_params(config: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Each `HeadConfig` option as the built head has it: the value set or the protocol's
    (`fusion.train.head_choice`), else the head's own (an attribute of the built head, the
    fixed size of a `transformer_DxH` name, its constructor's default); `auto` backends as
    resolved for the head's device; `n/a` for an option the head does not take."""
    import dataclasses
    import inspect
    import re

    from fusion.train import HeadConfig, head_choice

    name, options = head_choice(config)
    signature = inspect.signature(type(model).__init__).parameters
    fixed = re.search(r"_(\d+)x(\d+)$", name)  # transformer_6x4: depth 6, 4 heads
    device = next(model.parameters()).device
    out: dict[str, Any] = {}
    for field in dataclasses.fields(HeadConfig):
        key = field.name
        attribute = getattr(model, key, None)
        if options.get(key) is not None:
            value = options[key]
        elif key == "depth" and fixed:
            value = int(fixed.group(1))
        elif isinstance(attribute, bool | int | float | str):
            value = attribute
        elif key == "d_model":  # every head's classifiers read d_model features
            value = model.verb_head.in_features
        elif key in signature and signature[key].default is not inspect.Parameter.empty:
            value = signature[key].default
        else:
            value = NOT_APPLICABLE
        if key == "backend" and value == "auto":
            from fusion.ssm import resolve_backend

            value = resolve_backend("auto", device)
        out[key] = value
    return out


def _video_weights(manifest: dict[str, Any]) -> tuple[str, str]:
    """(`backbone_weights`, `features.weights`) of a video store's manifest: what produced
    the features, in the words a table footnote can print."""
    from extract.backbones import is_pretrained_architecture

    if manifest.get("extractor") == "python -m features.import":
        source = (manifest.get("sources") or {}).get("source", "unknown source")
        return "imported", f"imported:{manifest.get('source_format', 'unknown')}:{source}"
    weights = manifest.get("weights")
    if weights == "checkpoint":
        name = (manifest.get("backbone") or {}).get("name", "")
        path = (manifest.get("sources") or {}).get("checkpoint") or "unknown path"
        digest = str(manifest.get("checkpoint_sha256") or "unknown")[:12]
        kind = "avion" if is_pretrained_architecture(name) else "checkpoint"
        return "checkpoint", f"{kind}:{path} sha256:{digest}"
    if weights == "random-init":
        return "random-init", "random-init"
    return "unknown", "unknown (the store's manifest names no weights)"


def _text_weights(manifest: dict[str, Any]) -> str:
    """`features.text_weights` of a text store's manifest: pretrained, or re-initialised."""
    model = manifest.get("text_model", "unknown")
    digest = str(manifest.get("text_model_weights_sha256") or "unknown")[:12]
    if manifest.get("text_init") == "authors-random":
        return f"random-init:{model} (authors' init, seed {manifest.get('text_init_seed')})"
    if manifest.get("extractor") == "python -m features.import":
        return f"imported:{manifest.get('source_format', 'unknown')}"
    if "text_model" not in manifest:
        return "unknown (the store's manifest names no text model)"
    return f"{model} sha256:{digest}"


def feature_tags(config: TrainConfig, data_info: dict) -> dict[str, str]:
    """What the features really are, from the manifests of the training split's stores as
    `fusion.data.load_features` loaded them (`data_info["train_manifests"]`):
    `features.backbone`, `features.weights` (`avion:<checkpoint> sha256:<12>`,
    `checkpoint:...`, `random-init`, `imported:<format>:<source>`), `features.dataset`,
    `features.preprocess`, `features.text_weights`, and `backbone_weights` (checkpoint,
    random-init, imported, unknown; the reports read it). A run that read no store
    (benchmarks' random tensors) says so instead of guessing."""
    manifests: dict[str, dict[str, Any]] = data_info.get("train_manifests", {})
    tags: dict[str, str] = {}
    video = manifests.get("video")
    if "video" not in features_used(config):
        tags |= {"backbone_weights": "none (no video)", "features.weights": "none (no video)",
                 "features.backbone": "none (no video)"}
    elif video is None:
        tags |= {"backbone_weights": "unknown",
                 "features.weights": "unknown (no video store manifest: features not read "
                                     "from a store)",
                 "features.backbone": "unknown"}
    else:
        weights, detail = _video_weights(video)
        preprocess = video.get("preprocess") or {}
        tags |= {"backbone_weights": weights, "features.weights": detail,
                 "features.backbone": str((video.get("backbone") or {}).get("name", "unknown")),
                 "features.preprocess": (f"{preprocess.get('name')} ({preprocess.get('timeline')}"
                                         f", {preprocess.get('resize')})" if preprocess
                                         else "n/a (not extracted from videos)")}
    zeros = {k: v for k, v in data_info.get("zero_rows", {}).items() if v is not None}
    if zeros:  # all-zero clips are placeholders, not what the backbone saw
        tags["features.zero_rows"] = ", ".join(f"{k}={v}" for k, v in zeros.items())
    first = video or manifests.get("text") or {}
    tags["features.dataset"] = str(first.get("dataset", "unknown"))
    if "questions" in features_used(config):
        text = manifests.get("text")
        tags["features.text_weights"] = (_text_weights(text) if text is not None else
                                         "unknown (no text store manifest)")
    return {k: v[:5000] for k, v in tags.items()}


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


HEADS = ("verb", "noun")
TOP_CLASSES = 20  # a confusion matrix over more classes than this shows the most frequent


def class_names(folder: Path, counts: dict[str, int]) -> dict[str, list[str]]:
    """Verb and noun class names from the run's annotations (`EPIC_100_{verb,noun}_classes.csv`
    under `<data>/annotations`, `data` as in the folder's `config.json`); a run without class
    files (benchmarks' random features) or with other class counts gets `class N`."""
    from features.annotations import load_classes

    names = {head: [f"class {i}" for i in range(n)] for head, n in counts.items()}
    try:
        root = Path(json.loads((folder / "config.json").read_text())["data"]) / "annotations"
    except (OSError, ValueError, KeyError, TypeError):
        return names
    for head in names:
        path = root / f"EPIC_100_{head}_classes.csv"
        if path.exists():
            table = load_classes(path)
            if len(table) == counts[head]:
                names[head] = list(table.keys)
    return names


def _labels(split: FeatureSplit, head: str) -> np.ndarray:
    return getattr(split, head).cpu().numpy()


def _per_class(split: FeatureSplit, scores: dict[str, np.ndarray],
               names: dict[str, list[str]]) -> pd.DataFrame:
    """Top-1 accuracy (%) of each class present in the validation split, with its name."""
    rows = []
    for head in HEADS:
        labels = _labels(split, head)
        predicted = scores[head].argmax(1)
        for class_id in np.unique(labels[labels >= 0]):
            hit = predicted[labels == class_id] == class_id
            rows.append({"head": head, "class_id": int(class_id),
                         "class_name": names[head][int(class_id)], "count": int(hit.size),
                         "top1_percent": round(100.0 * float(hit.mean()), 2)})
    return pd.DataFrame(rows, columns=["head", "class_id", "class_name", "count",
                                       "top1_percent"])


def confusion(labels: np.ndarray, predicted: np.ndarray, num: int,
              top: int = TOP_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised confusion (%) over the `top` most frequent true classes (all when
    there are at most `top`): rows and columns are those classes, in frequency order; with
    fewer classes shown than exist, a last column counts predictions of any other class, so
    each row still sums to 100. Returns (matrix, class ids)."""
    keep = labels >= 0
    labels, predicted = labels[keep], predicted[keep]
    frequency = np.bincount(labels, minlength=num)
    present = np.flatnonzero(frequency)
    shown = present[np.argsort(-frequency[present], kind="stable")][:top]
    if len(shown) == num:
        shown = np.arange(num)  # every class: in id order
    column = np.full(num, len(shown), dtype=np.int64)  # any class not shown: "other"
    column[shown] = np.arange(len(shown))
    row = np.full(num, -1, dtype=np.int64)
    row[shown] = np.arange(len(shown))
    matrix = np.zeros((len(shown), len(shown) + (len(shown) < num)))
    rows = row[labels]
    np.add.at(matrix, (rows[rows >= 0], column[predicted[rows >= 0]]), 1)
    matrix = 100.0 * matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    return matrix, shown


def _plots(folder: Path, history: list[dict], split: FeatureSplit,
           scores: dict[str, np.ndarray], names: dict[str, list[str]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(frame["epoch"], frame["train_loss"], label="train loss")
    left.set(title="training loss", xlabel="epoch", ylabel="cross-entropy (verb + noun)")
    for column in [c for c in frame.columns if c.endswith(("top1", "recall5"))][:6]:
        right.plot(frame["epoch"], 100.0 * frame[column], label=column)
    right.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    right.legend(fontsize=7)
    fig.suptitle(f"{folder.name}: training curves")
    fig.tight_layout()
    curves = folder / "training_curves.png"
    fig.savefig(curves, dpi=120)
    plt.close(fig)
    return [curves, *(_confusion_plot(folder, head, split, scores, names) for head in HEADS)]


def _confusion_plot(folder: Path, head: str, split: FeatureSplit,
                    scores: dict[str, np.ndarray], names: dict[str, list[str]]) -> Path:
    """`<head>_confusion.png`: true classes down, predicted across, row-normalised %."""
    import matplotlib.pyplot as plt

    num = scores[head].shape[1]
    labels = _labels(split, head)
    matrix, shown = confusion(labels, scores[head].argmax(1), num)
    ticks = [names[head][i] for i in shown]
    columns = ticks + (["(other)"] if matrix.shape[1] > len(shown) else [])
    subset = (f"the {len(shown)} most frequent of {num} {head} classes" if len(shown) < num
              else f"all {num} {head} classes")
    size = 3 + 0.32 * len(columns)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
    ax.set_xlabel(f"predicted {head}")
    ax.set_ylabel(f"true {head}")
    ax.set_title(f"{head} confusion, validation ({int((labels >= 0).sum())} clips): {subset}\n"
                 "each row: % of that class's clips predicted as each column", fontsize=9)
    fig.colorbar(image, label="% of the true class's clips")
    fig.tight_layout()
    path = folder / f"{head}_confusion.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        names = class_names(folder, {head: scores[head].shape[1] for head in HEADS})
        per_class = folder / "per_class_accuracy.csv"
        _per_class(split, scores, names).to_csv(per_class, index=False)
        for path in [predictions, per_class, *_plots(folder, history, split, scores, names)]:
            _mlflow().log_artifact(str(path))
    write_history(folder, history)
    for name in ("config.json", "fingerprint.json", "history.csv", "best.pt"):
        if (folder / name).exists():
            _mlflow().log_artifact(str(folder / name))
    _mlflow().end_run(status=status)

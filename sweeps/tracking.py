"""MLflow side of a sweep: one parent run per study, the trials' training runs nested in it.

The parent run's id lives in the study's user attributes, so a rerun (or a worker on
another machine) nests its trials under the same parent instead of starting a new one. The
parent holds what a user compares trials by: the best parameters and value, Optuna's
history, parameter-importance and parallel-coordinate plots, and every trial as a CSV.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from features.errors import HarnessError  # noqa: E402
from sweeps.config import SweepConfig  # noqa: E402
from sweeps.console import label  # noqa: E402
from sweeps.study import redact  # noqa: E402

if TYPE_CHECKING:
    from fusion.train import TrainConfig

PARENT_ATTR = "mlflow_parent_run_id"


def _uri(train_config: TrainConfig) -> str:
    from fusion.tracking import tracking_uri

    return tracking_uri(train_config.tracking_uri)


def ensure_parent_run(study: optuna.Study, config: SweepConfig, base: TrainConfig) -> str:
    """The sweep's parent run: reopened when the study names one, else created and named."""
    client = MlflowClient(_uri(base))
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "sweep.target_trials", str(config.trials))
            return run_id
        except mlflow.exceptions.MlflowException:
            print(f"parent run {run_id} not in {_uri(base)}: starting a new one", file=sys.stderr)
    from fusion.tracking import connect

    experiment_id = connect(_uri(base), base.experiment)  # artifacts beside the database
    tags = {
        "sweep": "true", "optuna.study": study.study_name, "fusion": config.fusion,
        "protocol": config.protocol, "task": config.task, "backbone": base.backbone,
        "sweep.metric": config.metric,
        "sweep.target_trials": str(config.trials), "sweep.pruner": config.pruner,
        "sweep.storage": redact(config.storage),
        "mlflow.note.content": (
            f"Optuna sweep `{study.study_name}`: {config.fusion} head under the "
            f"{config.protocol} protocol, {config.task}, "
            f"objective validation {config.metric}. Trials are the nested runs "
            f"`{study.study_name}/trial-NNNN`; compare them in the table (metrics best_*, "
            "tag pruned) or select several and Compare."
        ),
    }
    run = client.create_run(experiment_id, run_name=study.study_name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[
        mlflow.entities.Param(k, str(v)) for k, v in {
            "fusion": config.fusion, "protocol": config.protocol, "task": config.task,
            "backbone": base.backbone, "epochs": base.epochs, "seed": config.seed,
            "pruner": config.pruner,
            "startup_trials": config.startup_trials, "data": str(base.data),
        }.items()
    ])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.json"
        path.write_text(json.dumps(study.user_attrs.get("space", {}), indent=2) + "\n")
        client.log_artifact(run_id, str(path), artifact_path="sweep")
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


# --- trial runs (the training runs fusion.train opens) --------------------------------------

def tag_active_run(tags: dict[str, str]) -> str | None:
    """Tag the training run in progress (a resumed run keeps its first tags otherwise)."""
    run = mlflow.active_run()
    if run is None:
        return None
    mlflow.set_tags(tags)
    return run.info.run_id


def tag_run(train_config: TrainConfig, run_id: str | None, tags: dict[str, str]) -> None:
    if run_id:
        client = MlflowClient(_uri(train_config))
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def end_pruned_run(train_config: TrainConfig, run_id: str | None, epoch: int) -> None:
    """A pruned trial's run ends FINISHED, tagged `pruned=true` and `pruned.epoch`: it did
    what the sweep asked (stop when the pruner says so), unlike a KILLED or FAILED run.
    The trainer ends its run when the pruner's exception passes through (fusion.train:
    KILLED); this sets the outcome after."""
    end_active_runs("FINISHED")  # a trainer that left it open
    if run_id is None:
        return
    client = MlflowClient(_uri(train_config))
    client.set_tag(run_id, "pruned", "true")
    client.set_tag(run_id, "pruned.epoch", str(epoch))
    client.update_run(run_id, status="FINISHED")


def end_active_runs(status: str) -> None:
    """A trial that raised may leave its run open; the next trial needs a clean slate."""
    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)


def close_orphan_runs(train_config: TrainConfig, study: str, root: int, folder: Path) -> None:
    """Runs of an earlier attempt of this trial that no checkpoint will resume: KILLED.

    An attempt killed before its first checkpoint leaves a RUNNING run nobody reopens; the
    attempt with a checkpoint is reopened by fusion.train from the id saved in `last.pt`.
    """
    resumed = _checkpoint_run_id(folder / "last.pt")
    client = MlflowClient(_uri(train_config))
    experiment = client.get_experiment_by_name(train_config.experiment)
    if experiment is None:
        return
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.`optuna.study` = '{study}' and tags.`optuna.trial_root` = "
                       f"'{root}' and attributes.status = 'RUNNING'"),
    )
    for run in runs:
        if run.info.run_id != resumed:
            client.set_terminated(run.info.run_id, status="KILLED")


def _checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run a trial's checkpoint resumes; read with the safe loader only."""
    if not path.exists():
        return None
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise HarnessError(
            f"{path}: holds objects the safe loader refuses (written by an older version?): "
            f"{str(error).splitlines()[0]}; delete {path.parent} to retrain this trial"
        ) from None
    except (RuntimeError, EOFError, OSError):  # truncated or corrupt: resumes nothing
        return None
    state = checkpoint.get("state", {}) if isinstance(checkpoint, dict) else {}
    return state.get("run_id") if isinstance(state, dict) else None


# --- summary -------------------------------------------------------------------------------

def _figure(result: Any) -> plt.Figure:
    axes = np.asarray(result).ravel()
    return axes[0].figure


def _plots(study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's matplotlib plots; a plot that cannot be drawn yet (one trial) is skipped."""
    from optuna.visualization import matplotlib as vis

    made = []
    for name, draw in {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "intermediate_values": vis.plot_intermediate_values,
    }.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = _figure(draw(study))
            figure.set_size_inches(14 if name == "parallel_coordinate" else 10, 6)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=110)
            plt.close(figure)
            made.append(name)
        except Exception as error:  # noqa: BLE001 - plots are a convenience, not the result
            print(f"skipping plot {name}: {error}", file=sys.stderr)
            plt.close("all")
    return made


def log_summary(study: optuna.Study, run_id: str, config: SweepConfig,
                base: TrainConfig) -> dict[str, Any] | None:
    """Best params/value, plots and the trial table on the parent run; ends it when done."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not complete:
        return None
    best = study.best_trial
    summary = {
        "study": study.study_name, "metric": config.metric, "best_value": best.value,
        "best_trial": best.number, "best_index": label(best), "best_params": best.params,
        "best_run_id": best.user_attrs.get("mlflow_run_id"),
        "best_run_folder": best.user_attrs.get("run_folder"),
        "finished_trials": len(finished), "target_trials": config.trials,
        "states": {s.name: len(study.get_trials(deepcopy=False, states=(s,)))
                   for s in TrialState},
    }
    client = MlflowClient(_uri(base))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "best.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        summary["plots"] = _plots(study, folder)
        client.log_artifacts(run_id, str(folder), artifact_path="sweep")
    client.log_metric(run_id, "best_value", float(best.value), step=len(finished))
    client.log_metric(run_id, "finished_trials", len(finished), step=len(finished))
    client.set_tag(run_id, "best.trial", str(best.number))
    if summary["best_run_id"]:
        client.set_tag(run_id, "best.run_id", summary["best_run_id"])
    for key, value in best.params.items():
        client.set_tag(run_id, f"best.{key}", str(value))
    if len(finished) >= config.trials:
        client.set_terminated(run_id, status="FINISHED")
    return summary

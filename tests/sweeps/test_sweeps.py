"""Sweeps: search spaces, kill-and-rerun to an exact trial count, two workers on PostgreSQL.

The process-level tests swap `fusion.train.train` for `fake_train` below (`--train-fn`):
it keeps train()'s contract (run folder, `last.pt`-style resume, a nested MLflow run,
`on_epoch` after each checkpoint, the result dict) at a fraction of a second per epoch, so
what is tested is the sweep's bookkeeping, not the heads.
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from tests.cli import one_error_line  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FUSIONS = ("mamba", "mlp", "transformer_6x4", "transformer_12x12")
PY = sys.executable


# --- a train() stand-in with the same contract ---------------------------------------------

def fake_train(config: Any, on_epoch: Any = None) -> dict[str, Any]:
    """Deterministic metric of the params; resumable; logs one MLflow run like fusion.train.

    `FAKE_KILL_AT=trial-NNNN:E` SIGKILLs the process right after epoch E of that trial.
    """
    import mlflow

    folder = Path(config.out) / config.run_name
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder / "last.json"
    state = (json.loads(state_file.read_text()) if state_file.exists()
             else {"epoch": 0, "history": [], "run_id": None})
    if state["epoch"]:
        with open(folder / "epochs.log", "a") as log:
            log.write(f"resume {state['epoch']}\n")
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_experiment(config.experiment)
    if state["run_id"]:
        run = mlflow.start_run(run_id=state["run_id"])
    else:
        tags = dict(tag.split("=", 1) for tag in config.tags)
        if config.parent_run_id:
            tags["mlflow.parentRunId"] = config.parent_run_id
        run = mlflow.start_run(run_name=tags.pop("mlflow.runName", folder.name), tags=tags)
    state["run_id"] = run.info.run_id
    if config.progress != "quiet":  # fusion.train's epoch lines, which `quiet` leaves out
        print(f"TRAINING OUTPUT of {folder.name}", file=sys.stderr)
    quality = 1.0 - abs(math.log10(config.peak_lr) + 3.0) / 3.0
    for epoch in range(state["epoch"], config.epochs):
        time.sleep(float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05")))
        value = quality * (epoch + 1) / config.epochs
        state["epoch"], state["history"] = epoch + 1, [*state["history"], value]
        tmp = folder / "last.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
        with open(folder / "epochs.log", "a") as log:
            log.write(f"epoch {epoch + 1}\n")
        mlflow.log_metric(config.early_stop_metric, value, step=epoch + 1)
        if on_epoch is not None:
            try:
                on_epoch(epoch + 1, {config.early_stop_metric: value})
            except BaseException:
                mlflow.end_run(status="KILLED")
                raise
        if os.environ.get("FAKE_KILL_AT") == f"{folder.name}:{epoch + 1}":  # a lost machine
            os.kill(os.getpid(), signal.SIGKILL)
    mlflow.end_run()
    best = max(range(len(state["history"])), key=state["history"].__getitem__)
    return {"run_id": state["run_id"], "folder": str(folder), "epochs_run": state["epoch"],
            "best": {"epoch": best + 1, config.early_stop_metric: state["history"][best]}}


def sweep_cmd(tmp: Path, storage: str, *extra: str, trials: int = 4, epochs: int = 3,
              grace: int = 2, train_fn: str = "tests.sweeps.test_sweeps:fake_train") -> list[str]:
    return [PY, "-m", "sweeps", "--fusion", "mamba", "--preset", "demo", "--study", "t",
            "--trials", str(trials), "--epochs", str(epochs), "--storage", storage,
            "--out", str(tmp / "runs"), "--tracking-uri", f"sqlite:///{tmp / 'mlruns.db'}",
            "--experiment", "sweep-test", "--pruner", "none", "--startup-trials", "2",
            "--heartbeat", "1", "--grace", str(grace), "--train-fn", train_fn, *extra]


def sweep_config(tmp: Path, storage: str, trials: int = 4, epochs: int = 3, **extra: Any) -> Any:
    """The same sweep as `sweep_cmd`, to run in this process (saves an interpreter start)."""
    from sweeps.config import SweepConfig

    options: dict[str, Any] = dict(
        fusion="mamba", preset="demo", study="t", trials=trials, epochs=epochs,
        storage=storage, out=tmp / "runs", tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}",
        experiment="sweep-test", pruner="none", startup_trials=2, heartbeat=1, grace=2,
        train_fn="tests.sweeps.test_sweeps:fake_train")
    return SweepConfig(**{**options, **extra})


def env(epoch_seconds: float) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "FAKE_EPOCH_SECONDS": str(epoch_seconds), "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1"}


def load(storage: str) -> Any:
    from sweeps.study import storage_url

    return optuna.load_study(study_name="t", storage=storage_url(storage))


def wait_until(storage: str, condition: Any, proc: subprocess.Popen,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before the test could stop it"
        try:
            study = load(storage)
            if condition(study.get_trials(deepcopy=False)):
                return
        except KeyError:  # study not created yet
            pass
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def check_study(storage: str, out: Path, trials: int, epochs: int) -> list[Any]:
    """Exactly `trials` finished trials, each trained once to the end in its own folder."""
    from sweeps.study import root_number

    study = load(storage)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    roots = [root_number(t) for t in done]
    assert len(set(roots)) == trials, "a trial was counted twice"
    folders = sorted(p.name for p in (out / "t").glob("trial-*"))
    assert folders == sorted(f"trial-{r:04d}" for r in roots), "a folder without a trial"
    for root in roots:
        log = (out / "t" / f"trial-{root:04d}" / "epochs.log").read_text().split("\n")
        assert [x for x in log if x.startswith("epoch")] == [
            f"epoch {e}" for e in range(1, epochs + 1)], f"trial-{root:04d} retrained epochs"
    return done


def check_mlflow(tmp: Path, trials: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1, "a rerun must reuse the sweep's parent run"
    parent = parents[0]
    assert parent.data.tags["optuna.study"] == "t" and parent.data.tags["fusion"] == "mamba"
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "t"  # the study's name
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # a SIGKILL between a trial's MLflow start and its first checkpoint (possible under load)
    # leaves that run open and the retry opens another: only the finished ones are the trials'
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(finished) == trials and len(children) - trials <= 2
    children = finished
    assert all(r.data.tags["optuna.study"] == "t" and "optuna.trial" in r.data.tags
               for r in children)
    assert sorted(r.info.run_name for r in children) == sorted(
        f"t/trial-{int(r.data.tags['optuna.trial_root']):04d}" for r in children)
    # artifacts beside the database, not in ./mlruns of the folder the sweep ran in
    assert experiment.artifact_location.removeprefix("file://") == str(
        (tmp / "mlartifacts").resolve())
    assert (tmp / "mlartifacts").is_dir()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    for name in ("best.json", "trials.csv", "optimization_history.png",
                 "param_importances.png", "parallel_coordinate.png"):
        assert f"sweep/{name}" in artifacts
    best = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "sweep/best.json", str(tmp))).read_text())
    assert best["finished_trials"] == trials and best["best_run_id"] in {
        r.info.run_id for r in children}
    assert parent.data.metrics["best_value"] == pytest.approx(best["best_value"])


# --- search spaces -------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", FUSIONS)
def test_space_sets_real_config_fields(fusion: str) -> None:
    from sweeps.config import SweepConfig
    from sweeps.space import apply, in_space, load_space
    from sweeps.study import base_train_config

    space = load_space(fusion)
    names = {p.name for p in space.params}
    assert {"peak_lr", "weight_decay", "warmup_fraction", "batch_size", "label_smoothing",
            "dropout", "d_model"} <= names
    if fusion == "mamba":
        assert {"ssm_peak_lr", "d_state", "expand", "depth"} <= names
    base = base_train_config(SweepConfig(fusion=fusion, preset="demo", epochs=10))
    trial = optuna.trial.FixedTrial({**{p.name: p.choices[-1] if p.choices else p.high
                                        for p in space.params}})
    config = apply(base, space, space.suggest(trial))
    assert config.fusion == fusion and config.epochs == 10
    assert config.warmup_epochs == pytest.approx(1.0)  # 0.1 of 10 epochs
    assert config.head.d_model == space.params[[p.name for p in space.params].index(
        "d_model")].choices[-1]
    full = {p.name: (p.choices[0] if p.choices else p.low) for p in space.params}
    assert in_space(space, {**full, **space.reference})


def test_mamba_reference_is_the_authors_recipe() -> None:
    from reports.paper import CODE_RECIPE
    from sweeps.space import load_space

    code = CODE_RECIPE["avion_recognition"]
    reference = load_space("mamba").reference
    assert reference["peak_lr"] == code["base_lr"]
    assert reference["ssm_peak_lr"] == code["mamba_lr"]
    assert reference["weight_decay"] == code["weight_decay"]
    assert reference["batch_size"] == code["batch_size"]
    assert reference["warmup_fraction"] == code["warmup_epochs"] / code["epochs"]
    assert reference["label_smoothing"] == code["label_smoothing"]
    for key in ("d_state", "expand", "depth"):
        assert reference[key] == CODE_RECIPE["fusion"][key]


BAD_SPACES = {
    "not a TrainConfig field": "heads:\n  mamba:\n    params:\n"
                               "      peak_lrr: {type: float, low: 1, high: 2}\n",
    "cannot read": "heads:\n  mamba: [unclosed\n",
    "expected a mapping": "- just\n- a list\n",
    "no search space for fusion 'mamba'": "heads:\n  mlp:\n    params: {}\n",
    "needs low <= high": "heads:\n  mamba:\n    params:\n"
                         "      peak_lr: {type: float, low: 2, high: 1}\n",
    "is not a number": "heads:\n  mamba:\n    params:\n"
                       "      peak_lr: {type: float, low: small, high: 1}\n",
    "peak_lr: .*log": "heads:\n  mamba:\n    params:\n"
                      "      peak_lr: {type: float, low: 0, high: 1, log: true}\n",
    "must map each name": "heads:\n  mamba:\n    params:\n      - peak_lr\n",
}


@pytest.mark.parametrize("reason", sorted(BAD_SPACES))
def test_bad_space_is_one_error_naming_the_file(tmp_path: Path, reason: str) -> None:
    from features.errors import HarnessError
    from sweeps.space import load_space

    bad = tmp_path / "spaces.yaml"
    bad.write_text(BAD_SPACES[reason])
    with pytest.raises(HarnessError, match=f"--space {bad}: .*{reason}"):
        load_space("mamba", bad)


# --- stop at any moment, rerun the same command ----------------------------------------------

def test_sigkill_and_sigterm_then_rerun_finishes_exact_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-trial (stale heartbeat -> retry), then SIGTERM mid-trial (fail + retry at
    once), then the same sweep finishes with exactly the target, each epoch trained once."""
    from sweeps.launch import sweep

    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    cmd = sweep_cmd(tmp_path, storage, "--enqueue-reference")
    slow = env(0.4)

    def mid_trial(trials: list[Any]) -> bool:
        # a trial after the reference running with an epoch still to train: the kill lands
        # before it can finish (seen under load: trial 1 completed between the poll and the
        # SIGKILL, no stop left). Any such trial, not trial 1 only: under load a poll of the
        # database can outlast one trial's window, and the sweep then ended unstopped (CI)
        return any(t.number >= 1 and t.state == TrialState.RUNNING
                   and 0 < len(t.intermediate_values) < 3 for t in trials)

    first = subprocess.Popen(cmd, cwd=REPO, env=slow, stderr=subprocess.DEVNULL)
    wait_until(storage, mid_trial, first)
    first.send_signal(signal.SIGKILL)
    first.wait()

    second = subprocess.Popen(cmd, cwd=REPO, env=slow, stderr=subprocess.PIPE, text=True)
    from sweeps.study import OWNER_ATTR

    # mid-trial in the SECOND process (under load the first may have reached trial 2 before
    # its SIGKILL: that stale trial must not count, or SIGTERM lands before any handler)
    wait_until(storage, lambda trials: any(
        t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < 3 and t.number >= 2
        and (t.system_attrs.get(OWNER_ATTR) or {}).get("pid") == second.pid
        for t in trials), second)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 130, err[-3000:]
    assert "queued to resume" in err

    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.05")
    summary = sweep(sweep_config(tmp_path, storage, enqueue_reference=True))
    done = check_study(storage, tmp_path / "runs", trials=4, epochs=3)
    study = load(storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2, "one trial per stop"
    retried = [t for t in done if t.system_attrs.get("failed_trial") is not None]
    chains = {n for t in retried for n in t.system_attrs["retry_history"]}
    assert chains == {f.number for f in failed}, "every stopped trial was finished by a retry"
    for trial in retried:  # resumed from its checkpoint, not restarted
        log = Path(trial.user_attrs["run_folder"], "epochs.log").read_text()
        assert "resume" in log
    assert study.trials[0].user_attrs.get("reference") is True
    assert study.trials[0].params["peak_lr"] == pytest.approx(1e-3)
    assert summary["complete"] == 4 and summary["finished_trials"] == 4
    check_mlflow(tmp_path, trials=4)

    sweep(sweep_config(tmp_path, storage, enqueue_reference=True))  # done: a no-op
    assert len(load(storage).trials) == 6


def finished_trials(storage: str) -> list[tuple[dict[str, Any], Any, float | None]]:
    """(params, state, value) of each finished trial, in the order they were run."""
    study = load(storage)
    return [(t.params, t.state, t.value)
            for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]


def killing_train_random(config: Any, on_epoch: Any = None) -> dict[str, Any]:
    """fusion.train.train on tiny random features (benchmarks.sweep_throughput), killed
    like `fake_train` by `FAKE_KILL_AT`."""
    from benchmarks.sweep_throughput import train_random

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if os.environ.get("FAKE_KILL_AT") == f"{config.run_name}:{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)

    return train_random(config, on_epoch=hook)


CPU_SPACE = ("heads:\n  mamba:\n    params:\n"
             "      peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
             "      ssm_peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
             "      d_model: {choices: [16, 32], field: head.d_model}\n"
             "      depth: {type: int, low: 1, high: 2, field: head.depth}\n")
TINY_SHAPES = {"train_clips": 48, "val_clips": 24, "video_shape": [4, 16],
               "text_shape": [2, 6, 8]}


@pytest.mark.parametrize("trainer", ["fake", "fusion.train"])
def test_killed_and_resumed_sweep_equals_an_uninterrupted_one(tmp_path: Path,
                                                              trainer: str) -> None:
    """SIGKILL inside a TPE trial, rerun at once: the interrupted trial is retried first, and
    the finished study holds the same trials (params, order, values) as one never stopped.

    The grace period is long, so the heartbeat cannot be what notices the kill; the rerun
    sees that the process that ran the trial is gone. Every run is the CLI in a fresh
    process with one thread, so the real trainer's numbers are comparable bit for bit."""
    extra: list[str] = []
    options: dict[str, Any] = dict(trials=5, epochs=3, grace=30)
    if trainer == "fusion.train":
        (tmp_path / "space.yaml").write_text(CPU_SPACE)
        extra = ["--space", str(tmp_path / "space.yaml"), "--device", "cpu"]
        options["train_fn"] = "tests.sweeps.test_sweeps:killing_train_random"
    environment = {**env(0), "SWEEP_BENCH_SHAPES": json.dumps(TINY_SHAPES)}

    def run(folder: Path, **more: str) -> int:
        folder.mkdir(exist_ok=True)
        cmd = sweep_cmd(folder, f"sqlite:///{folder / 'sweeps.db'}", *extra, **options)
        done = subprocess.run(cmd, cwd=REPO, env={**environment, **more},
                              stderr=subprocess.PIPE, text=True, timeout=600)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
        return done.returncode

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run(straight) == 0
    assert run(killed, FAKE_KILL_AT="trial-0003:1") == -signal.SIGKILL
    storage = f"sqlite:///{killed / 'sweeps.db'}"
    assert load(storage).trials[3].state == TrialState.RUNNING
    assert run(killed) == 0

    assert finished_trials(storage) == finished_trials(f"sqlite:///{straight / 'sweeps.db'}")
    study = load(storage)
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == [3]
    retry = study.trials[4]
    assert retry.system_attrs["failed_trial"] == 3, "the killed trial ran again before others"
    assert retry.user_attrs["run_folder"].endswith("trial-0003")
    if trainer == "fake":  # resumed from its checkpoint, each epoch trained once
        assert "resume" in Path(retry.user_attrs["run_folder"], "epochs.log").read_text()
        check_study(storage, killed / "runs", trials=5, epochs=3)


def test_interrupted_trials_of_dead_processes_are_queued_once(tmp_path: Path) -> None:
    """A RUNNING trial whose process is alive is left alone; once that process is gone, the
    trial is failed and queued, as is an interrupted trial whose process died before
    queueing it; a second pass queues nothing more."""
    from sweeps.study import (
        INTERRUPTED_ATTR,
        OWNER_ATTR,
        _process_start,
        open_study,
        owner,
        retry_interrupted,
    )

    study = open_study(sweep_config(tmp_path, f"sqlite:///{tmp_path / 'sweeps.db'}"))
    lr = {"peak_lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    sleeper = subprocess.Popen(["sleep", "60"])  # stands for a worker process
    try:
        def stamp(number: int) -> dict[str, Any]:
            return {**owner(number), "pid": sleeper.pid, "start": _process_start(sleeper.pid)}

        running = study.ask(lr)  # trial 0: RUNNING (add_trial cannot make one)
        study._storage.set_trial_system_attr(running._trial_id, OWNER_ATTR, stamp(0))
        study.add_trial(optuna.create_trial(  # trial 1: interrupted, its retry never queued
            state=TrialState.FAIL, params={"peak_lr": 2e-3}, distributions=lr,
            system_attrs={OWNER_ATTR: stamp(1), INTERRUPTED_ATTR: True}))
        retry_interrupted(study, max_retry=3)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.FAIL]
    finally:
        sleeper.kill()
        sleeper.wait()
    retry_interrupted(study, max_retry=3)
    retry_interrupted(study, max_retry=3)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL,
                                         TrialState.WAITING, TrialState.WAITING]
    assert {t.system_attrs["failed_trial"]: t.params for t in trials[2:]} == {
        0: trials[0].params, 1: {"peak_lr": 2e-3}}
    assert trials[0].system_attrs[INTERRUPTED_ATTR] is True


def refusing_train(config: Any, on_epoch: Any = None) -> dict[str, Any]:
    """A train() that refuses its input, as fusion.train does a broken store."""
    from features.errors import HarnessError

    raise HarnessError(f"{config.data}/features: a shard is missing; re-extract the split")


def test_an_expected_error_in_a_trial_stops_the_sweep_and_keeps_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HarnessError inside a trial is not the parameters' fault: the sweep stops with it,
    and once the problem is fixed the same trial (same params) runs first."""
    from features.errors import HarnessError
    from sweeps.launch import sweep

    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0")
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    refusing = sweep_config(tmp_path, storage, trials=2,
                            train_fn="tests.sweeps.test_sweeps:refusing_train")
    with pytest.raises(HarnessError, match="a shard is missing"):
        sweep(refusing)
    trials = load(storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    sweep(sweep_config(tmp_path, storage, trials=2))
    done = check_study(storage, tmp_path / "runs", trials=2, epochs=3)
    assert done[0].params == trials[0].params


# --- errors a user meets: one line, exit 2, nothing left behind ------------------------------

def test_rerun_with_other_training_settings_is_refused(tmp_path: Path) -> None:
    """A study continues only with the training settings its trials' folders were made with
    (fusion.train would refuse each trial's folder otherwise)."""
    from features.errors import HarnessError
    from sweeps.study import open_study

    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    open_study(sweep_config(tmp_path, storage))
    open_study(sweep_config(tmp_path, storage, trials=9, device="cpu"))  # no result changes
    with pytest.raises(HarnessError, match=r"study 't' was started with other settings "
                                           r"\(stored vs now: \{'data': \('data/demo', 'other'\)"):
        open_study(sweep_config(tmp_path, storage, data=Path("other")))


def run_sweep_cli(tmp: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    cmd = sweep_cmd(tmp, f"sqlite:///{tmp / 'sweeps.db'}", **kw)
    return subprocess.run([*cmd, *args], cwd=REPO, env={**env(0), "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=300)


def test_sweep_on_a_missing_gpu_creates_no_trials(tmp_path: Path) -> None:
    line = one_error_line(run_sweep_cli(tmp_path, "--device", "cuda"))
    assert "--device cuda" in line and "--device cpu" in line
    assert not (tmp_path / "sweeps.db").exists(), "the study must not be created"
    assert not (tmp_path / "runs").exists()


def test_sweep_on_missing_stores_names_the_store(tmp_path: Path) -> None:
    data = tmp_path / "nodata"
    line = one_error_line(run_sweep_cli(tmp_path, "--device", "cpu", "--data", str(data),
                                        train_fn="fusion.train:train"))
    assert str(data / "features") in line and "feature store" in line
    assert not (tmp_path / "sweeps.db").exists()


def test_sweep_with_a_bad_space_names_the_file(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("heads:\n  mamba: [unclosed\n")
    line = one_error_line(run_sweep_cli(tmp_path, "--space", str(space)))
    assert f"--space {space}" in line
    assert not (tmp_path / "sweeps.db").exists()


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://x/y",
                                 "postgresql://user:hunter2@127.0.0.1:1/db"])
def test_sweep_with_a_bad_storage_url_names_it(tmp_path: Path, url: str) -> None:
    line = one_error_line(run_sweep_cli(tmp_path, "--storage", url))
    assert "--storage" in line and "cannot open the Optuna storage" in line
    assert "hunter2" not in line


class Payload:
    """Unpickling this runs code: it creates the marker file (harmless, but visible)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_trial_checkpoint_is_loaded_safely(tmp_path: Path) -> None:
    """A retried trial's `last.pt` is read with the safe loader: a pickled payload is
    refused with one error naming the file, and its code does not run."""
    torch = pytest.importorskip("torch")
    from features.errors import HarnessError
    from sweeps.tracking import _checkpoint_run_id

    good = tmp_path / "good" / "last.pt"
    good.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "state": {"run_id": "abc", "epoch": 1}}, good)
    assert _checkpoint_run_id(good) == "abc"

    marker = tmp_path / "marker"
    bad = tmp_path / "bad" / "last.pt"
    bad.parent.mkdir()
    torch.save({"state": {"run_id": "abc"}, "extra": Payload(marker)}, bad)
    with pytest.raises(HarnessError, match=f"{bad}: holds objects the safe loader refuses"):
        _checkpoint_run_id(bad)
    assert not marker.exists(), "the checkpoint's payload ran"


# --- two workers on one PostgreSQL study ---------------------------------------------------

def _pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture
def postgres_url() -> Any:
    """A throwaway PostgreSQL server on loopback (as `nobody` when the test runs as root)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (Debian package postgresql) are not installed")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "nobody", "--"]
    root = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    root.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "30",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off", "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {error.stderr!r} {text[-500:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.launch import sweep

    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.2")
    monkeypatch.setenv("PYTHONPATH", env(0.2)["PYTHONPATH"])
    result = sweep(sweep_config(tmp_path, postgres_url, trials=6, epochs=2, workers=2))
    assert result["complete"] == 6
    done = check_study(postgres_url, tmp_path / "runs", trials=6, epochs=2)
    assert {t.user_attrs["worker"] for t in done} == {0, 1}, "both workers must run trials"
    study = load(postgres_url)
    over = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("over_target") for t in over)  # only lost races, no errors
    check_mlflow(tmp_path, trials=6)


# --- in-process: pruning, summary, GPU placement ---------------------------------------------

@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruning_on_the_per_epoch_metric(tmp_path: Path, pruner: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from sweeps.config import SweepConfig
    from sweeps.launch import sweep

    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = SweepConfig(
        fusion="mamba", preset="demo", study="t", trials=8, epochs=4, pruner=pruner,
        storage=f"sqlite:///{tmp_path / 'sweeps.db'}", out=tmp_path / "runs",
        tracking_uri=uri, experiment="sweep-test", startup_trials=3, prune_warmup=1,
        heartbeat=5, train_fn="tests.sweeps.test_sweeps:fake_train")
    result = sweep(config)
    assert result["complete"] + result["pruned"] == 8 and result["finished_trials"] == 8
    assert result["pruned"] > 0
    study = load(config.storage)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert all(len(t.intermediate_values) < 4 for t in pruned)
    client = MlflowClient(uri)
    for trial in pruned:  # a pruned trial's run ends FINISHED and says it was pruned, when
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["pruned"] == "true"
        assert run.data.tags["pruned.epoch"] == str(len(trial.intermediate_values))
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["pruned"] == "false"
    assert result["best_value"] == pytest.approx(study.best_value)


def test_console_says_trial_k_of_n_its_params_and_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line as a trial starts (k/N, its parameters), one as it ends (its result, the
    best so far); the trials' own output and Optuna's INFO logs only with --verbose."""
    from sweeps.launch import sweep

    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0")
    (tmp_path / "space.yaml").write_text(CPU_SPACE)
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    sweep(sweep_config(tmp_path, storage, trials=3, epochs=2, space=tmp_path / "space.yaml",
                       summary=False))
    err = capsys.readouterr().err
    trials = load(storage).trials
    expected = []
    for k, trial in enumerate(trials, 1):
        p = trial.params
        expected.append(f"trial {k}/3  lr {p['peak_lr']:.1e}  ssm_lr {p['ssm_peak_lr']:.1e}  "
                        f"d_model {p['d_model']}  depth {p['depth']}")
        best = max(range(k), key=lambda i: trials[i].value)
        expected.append(f"trial {k}/3  action@1 {100 * trial.value:.1f}  "
                        f"(best {100 * trials[best].value:.1f}, trial {best + 1})")
    assert [line for line in err.splitlines() if line.startswith("trial ")] == expected
    assert "TRAINING OUTPUT" not in err  # trials train with progress="quiet"
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING

    verbose = tmp_path / "verbose"
    sweep(sweep_config(verbose, f"sqlite:///{verbose / 'sweeps.db'}", trials=1, epochs=1,
                       space=tmp_path / "space.yaml", summary=False, verbose=True,
                       tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}"))  # one migration
    assert "TRAINING OUTPUT of trial-0000" in capsys.readouterr().err
    assert optuna.logging.get_verbosity() == optuna.logging.INFO
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_workers_are_spread_over_visible_gpus() -> None:
    from sweeps.config import SweepConfig
    from sweeps.launch import worker_env

    config = SweepConfig(workers=2, parallel=2)
    gpus = [worker_env(i, config, ["3", "5"])["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert gpus == ["3", "3", "5", "5"]
    cpu = worker_env(0, SweepConfig(workers=3), [])
    assert "CUDA_VISIBLE_DEVICES" not in cpu or cpu["CUDA_VISIBLE_DEVICES"] == os.environ.get(
        "CUDA_VISIBLE_DEVICES")


def test_more_workers_than_gpus_is_refused() -> None:
    from features.errors import HarnessError
    from sweeps.config import SweepConfig
    from sweeps.launch import check_workers

    assert check_workers(SweepConfig(workers=2, parallel=3), ["3", "5"]) == ["3", "5"]
    with pytest.raises(HarnessError, match=r"--workers 3: only 2 GPU\(s\) are visible \(3,5\); "
                                           r"use --workers 2 and --parallel K"):
        check_workers(SweepConfig(workers=3), ["3", "5"])


def test_workers_on_a_missing_gpu_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(run_sweep_cli(tmp_path, "--device", "cuda", "--workers", "2"))
    assert "no CUDA GPU is visible" in line
    assert not (tmp_path / "sweeps.db").exists()


# --- the real trainer ----------------------------------------------------------------------

def _real_train_available() -> bool:
    try:
        for module in ("fusion.profile", "fusion.train"):
            importlib.import_module(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("fusion", FUSIONS)
def test_space_values_build_the_head(fusion: str) -> None:
    """Every knob a space sets is an argument the head accepts (smallest values, tiny dims)."""
    heads = pytest.importorskip("fusion.heads")
    from sweeps.space import load_space

    space = load_space(fusion)
    kwargs = {p.field.removeprefix("head."): (p.choices[0] if p.choices else p.low)
              for p in space.params if p.field.startswith("head.")}
    head = heads.build_head(fusion, modality_dims={"video": 16, "verb_question": 8},
                            num_verbs=3, num_nouns=4, **kwargs)
    assert sum(p.numel() for p in head.parameters()) > 0


@pytest.mark.skipif(not _real_train_available(), reason="fusion.train is not importable yet")
def test_sweep_with_the_real_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fusion.train.train on tiny random features: nested runs, pruning hooks, summary."""
    from mlflow.tracking import MlflowClient

    from sweeps.launch import sweep

    monkeypatch.setenv("SWEEP_BENCH_SHAPES", json.dumps({
        "train_clips": 48, "val_clips": 24, "video_shape": [4, 16], "text_shape": [2, 6, 8]}))
    space = tmp_path / "spaces.yaml"  # a CPU-sized head; spaces.yaml reaches 1024 x depth 4
    space.write_text("heads:\n  mamba:\n    params:\n"
                     "      peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "      ssm_peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "      d_model: {choices: [16, 32], field: head.d_model}\n"
                     "      depth: {type: int, low: 1, high: 2, field: head.depth}\n")
    config = sweep_config(tmp_path, f"sqlite:///{tmp_path / 'sweeps.db'}", trials=2, epochs=2,
                          train_fn="benchmarks.sweep_throughput:train_random",
                          pruner="median", device="cpu", space=space)
    result = sweep(config)
    assert result["complete"] + result["pruned"] == 2
    study = load(config.storage)
    client = MlflowClient(config.tracking_uri)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
        assert run.data.tags["optuna.trial"] == str(trial.number)
        assert run.data.tags["fusion"] == "mamba"
        assert run.info.run_name == f"t/trial-{trial.number:04d}"
        assert run.data.params["device"] == "cpu" and run.data.params["head.d_state"] != "None"
        assert run.data.metrics["best_action_top1"] == pytest.approx(trial.value)
        assert Path(trial.user_attrs["run_folder"], "last.pt").exists()


# --- protocols (`--protocol authors|paper|clean`) -------------------------------------------

@pytest.mark.parametrize("protocol", ["authors", "paper"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_protocol_spaces_are_on_the_sgd_scale(protocol: str, fusion: str) -> None:
    """Each protocol's space holds its own recipe (the reference) and searches around it;
    no width is searched, as the authors' heads take the video's."""
    from fusion.protocols import get_protocol
    from sweeps.space import in_space, load_space

    recipe, space = get_protocol(protocol), load_space(fusion, protocol=protocol)
    reference = space.reference
    assert "d_model" not in {p.name for p in space.params}
    assert (reference["peak_lr"], reference["weight_decay"], reference["batch_size"],
            reference["label_smoothing"]) == (recipe.peak_lr, recipe.weight_decay,
                                              recipe.batch_size, recipe.label_smoothing)
    assert reference["warmup_fraction"] == recipe.warmup_epochs / 100  # of their 100 epochs
    if fusion == "mamba":
        assert reference["ssm_peak_lr"] == recipe.ssm_peak_lr
    full = {p.name: (p.choices[0] if p.choices else p.low) for p in space.params}
    assert in_space(space, {**full, **reference})
    clean_lr = next(p for p in load_space(fusion).params if p.name == "peak_lr")
    lr = next(p for p in space.params if p.name == "peak_lr")
    assert lr.low > clean_lr.low  # SGD needs larger steps than AdamW's 1e-5


def test_a_space_file_without_the_protocol_is_one_error(tmp_path: Path) -> None:
    from features.errors import HarnessError
    from sweeps.space import load_space

    space = tmp_path / "spaces.yaml"
    space.write_text("heads:\n  mamba:\n    params:\n"
                     "      peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert load_space("mamba", space).params[0].name == "peak_lr"
    with pytest.raises(HarnessError, match=f"--space {space}: no search spaces for "
                                           "--protocol authors"):
        load_space("mamba", space, "authors")


def test_base_config_is_the_protocol_then_the_preset() -> None:
    from fusion.train import PRESETS
    from sweeps.config import SweepConfig
    from sweeps.study import base_train_config

    authors = base_train_config(SweepConfig(fusion="mlp", protocol="authors", preset="demo-mlp",
                                            epochs=5))
    assert (authors.protocol, authors.optimizer, authors.schedule, authors.selection) == (
        "authors", "sgd", "authors", "running-max")
    assert authors.label_smoothing == PRESETS["demo-mlp"].label_smoothing == 0.0  # preset wins
    assert authors.epochs == 5 and authors.out.name == "mlp-demo-recognition-authors"
    clean = base_train_config(SweepConfig(fusion="mlp", preset="demo-mlp"))
    assert (clean.protocol, clean.optimizer, clean.out.name) == ("clean", "adamw",
                                                                 "mlp-demo-recognition")


@pytest.mark.skipif(not _real_train_available(), reason="fusion.train is not importable yet")
def test_tiny_sweep_under_the_authors_protocol(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--protocol authors --fusion mlp`: trials train the authors' MLP with their SGD recipe,
    and the study and its MLflow parent run record the protocol."""
    import torch
    from mlflow.tracking import MlflowClient

    from sweeps.launch import sweep

    monkeypatch.setenv("SWEEP_BENCH_SHAPES", json.dumps({
        "train_clips": 32, "val_clips": 16, "video_shape": [2, 16], "text_shape": [2, 4, 8]}))
    space = tmp_path / "spaces.yaml"
    space.write_text("heads: {}\nprotocols:\n  authors:\n    heads:\n      mlp:\n        params:\n"
                     "          peak_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    config = sweep_config(tmp_path, f"sqlite:///{tmp_path / 'sweeps.db'}", trials=2, epochs=2,
                          fusion="mlp", preset="mlp-vitb", protocol="authors", space=space,
                          device="cpu", train_fn="benchmarks.sweep_throughput:train_random")
    result = sweep(config)
    assert result["complete"] == 2
    study = load(config.storage)
    assert study.user_attrs["protocol"] == "authors"
    client = MlflowClient(config.tracking_uri)
    assert client.get_run(result["parent_run_id"]).data.tags["protocol"] == "authors"
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["protocol"] == "authors"
        checkpoint = torch.load(Path(trial.user_attrs["run_folder"], "last.pt"), weights_only=True)
        assert "txt_proj.0.weight" in checkpoint["model"]  # the authors' MLP, not ours
        assert all(g["nesterov"] for g in checkpoint["optimizer"]["param_groups"])


def test_a_sweep_ends_with_a_readable_summary_or_json_on_request(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    cmd = sweep_cmd(tmp_path, storage, trials=2, epochs=1)
    done = subprocess.run(cmd, cwd=REPO, env=env(0.0), capture_output=True, text=True,
                          check=True)
    first, best, run = done.stdout.splitlines()
    assert first.startswith("sweep t: 2 complete, 0 pruned, 0 failed; MLflow parent run ")
    assert best.startswith("  best      trial ") and "action@1 " in best and " lr " in best
    assert run.startswith("  best run  ") and str(tmp_path / "runs") in run
    again = subprocess.run([*cmd, "--json"], cwd=REPO, env=env(0.0), capture_output=True,
                           text=True, check=True)  # done already: the same summary as JSON
    result = json.loads(again.stdout)
    assert result["study"] == "t" and result["complete"] == 2 and result["best_index"] >= 1


def test_stop_waits_until_database_code_returns(tmp_path: Path) -> None:
    """A stop signal landing in a database client's code (here a function whose module
    claims to be SQLAlchemy's) is raised once that code has returned, not inside it (an
    open transaction would keep SQLite locked), and still during training, not after it."""
    (tmp_path / "stop_in_db.py").write_text(
        "import os, signal, time\n"
        "from sweeps.study import StopRequested, interruptible, stop_on_signals\n"
        "db = {'__name__': 'sqlalchemy.engine.fake', 'os': os, 'signal': signal, "
        "'time': time}\n"
        "exec('def commit(log):\\n    os.kill(os.getpid(), signal.SIGTERM)\\n"
        "    t = time.time()\\n    while time.time() - t < 0.3: pass\\n"
        "    log.append(\\'committed\\')\\n', db)\n"
        "log = []\n"
        "try:\n"
        "    with stop_on_signals(), interruptible():\n"
        "        db['commit'](log)\n"
        "        t = time.time()\n"
        "        while time.time() - t < 10: pass\n"
        "        log.append('trained')\n"
        "except StopRequested:\n"
        "    log.append('stopped')\n"
        "print(log)\n"
    )
    done = subprocess.run([PY, "stop_in_db.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['committed', 'stopped']"


def test_database_code_around_training_does_not_delay_the_stop(tmp_path: Path) -> None:
    """Training runs inside Optuna's `optimize` (a database package on the stack below it):
    a stop during training still interrupts at once; only database code that training
    itself called defers it."""
    (tmp_path / "stop_under_optuna.py").write_text(
        "import os, signal, time\n"
        "from sweeps.study import StopRequested, interruptible, stop_on_signals\n"
        "optuna = {'__name__': 'optuna.study._optimize', 'os': os, 'signal': signal, "
        "'time': time, 'interruptible': interruptible}\n"
        "exec('def optimize(log):\\n    with interruptible():\\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\\n        t = time.time()\\n"
        "        while time.time() - t < 10: pass\\n        log.append(\\'trained\\')\\n',"
        " optuna)\n"
        "log = []\n"
        "started = time.time()\n"
        "try:\n"
        "    with stop_on_signals():\n"
        "        optuna['optimize'](log)\n"
        "except StopRequested:\n"
        "    log.append('stopped')\n"
        "print(log, time.time() - started < 5)\n"
    )
    done = subprocess.run([PY, "stop_under_optuna.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['stopped'] True"


def test_signal_inside_exec_string_still_exits_130(tmp_path: Path) -> None:
    """A stop signal landing in `exec(str)` code (a dataclass built by a lazy import) must not
    turn the sweep's exit status 130 into death by SIGINT (CPython's unhandled-interrupt mark,
    acted on when the program runs as `python -m`, as the sweep does)."""
    (tmp_path / "stop_in_exec.py").write_text(
        "import os, signal, sys\n"
        "from sweeps.study import _STOP, stop_on_signals\n"
        "with stop_on_signals():\n"
        "    _STOP['interruptible'] = True\n"
        "    try:\n"
        "        exec('os.kill(os.getpid(), signal.SIGTERM)\\nfor _ in range(10**7): pass',"
        " {'os': os, 'signal': signal})\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
        "sys.exit(130)\n"
    )
    done = subprocess.run([PY, "-m", "stop_in_exec"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 130, done.stderr[-2000:]

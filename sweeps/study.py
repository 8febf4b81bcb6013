"""One resumable Optuna study per sweep, and the loop every worker process runs.

Why the loop is not a bare `study.optimize(n_trials=...)`:

* `n_trials` counts per process and restarts at zero on a rerun; the target here is the
  study's number of finished (COMPLETE + PRUNED) trials, whatever stopped or restarted.
* A trial killed mid-run (SIGKILL, lost machine) stays RUNNING in the database. Each trial
  records the process running it (`OWNER_ATTR`), so a worker on the same machine sees at
  once that the process is gone; elsewhere the storage heartbeat marks it FAIL once it is
  silent for the grace period. Either way `RetryHeartbeatStaleTrialCallback` queues a
  WAITING copy with the same parameters, which trains in the original trial's folder and
  so resumes from `last.pt`. Ctrl-C/SIGTERM fail the running trial at once and queue the
  same retry.
* A resumed sweep ends with the same trials as an uninterrupted one (same seed, one
  worker): interrupted trials are queued again before anything new is sampled, and the
  sampler is seeded by the number of trials sampled so far, not counting retry copies.
* An expected error inside a trial (`HarnessError`: a bad store, a refused run folder) is
  the setup's fault, not the parameters': the sweep stops with that one line and the trial
  is queued to retry once the problem is fixed.
* Several workers must not overshoot the target: a worker starts a trial only while
  finished + running < target (or a retry waits), and a trial that still lands beyond the
  target (two workers asked at the same instant) is failed before it trains. So a study
  never holds more than `trials` finished trials and never loses one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from features.errors import HarnessError, one_line, resolve_device
from sweeps.config import DEFAULT_TRAIN_FN, SweepConfig
from sweeps.console import INDEX_ATTR, SweepConsole, label
from sweeps.space import Space, apply, in_space, load_space

if TYPE_CHECKING:
    from fusion.train import TrainConfig


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Heartbeats, the retry callback and multivariate TPE are "experimental" in Optuna 5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield

def set_log_level(verbose: bool) -> None:
    """Optuna's own INFO lines ("Trial 3 finished with value ...") only with `--verbose`:
    the sweep's console says the same per trial, with k/N and the best so far. MLflow's and
    its migrations' INFO lines ("Creating initial MLflow database tables...") likewise."""
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


OWNER_ATTR = "sweeps:owner"
INTERRUPTED_ATTR = "sweeps:interrupted"


class OverTarget(Exception):
    """This trial would exceed the study's target; it is failed before training."""


class SetupError(BaseException):
    """A HarnessError raised inside a trial, carried past Optuna to the worker loop.

    A BaseException, so Optuna neither logs a traceback nor records the trial as failed:
    the worker queues the trial to retry and raises the original one-line error.
    """

    def __init__(self, error: HarnessError) -> None:
        super().__init__(str(error))
        self.error = error


# --- storage and study ---------------------------------------------------------------------

def storage_url(url: str) -> str:
    """`postgresql://` with the driver that is installed: SQLAlchemy 2.1 picks psycopg 3 for
    the bare scheme, while the project installs psycopg2-binary."""
    bare = url.startswith(("postgresql://", "postgres://"))
    if bare and not importlib.util.find_spec("psycopg") and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """A storage URL safe to log: no password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is logged as a placeholder
        return "<storage url>"


def make_storage(config: SweepConfig) -> RDBStorage:
    """RDB storage with heartbeats; SQLite waits on locks instead of failing at once."""
    import sqlalchemy.exc

    url = storage_url(config.storage)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:
        with quiet():
            return _rdb_storage(url, engine_kwargs, config)
    except sqlalchemy.exc.ArgumentError:  # its message repeats the URL, password included
        reason = "not a database URL"
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError) as error:
        reason = one_line(getattr(error, "orig", None) or error)[:300]
    raise HarnessError(f"--storage {redact(config.storage)}: cannot open the Optuna storage "
                       f"({reason}); use sqlite:///PATH or postgresql://USER@HOST/DB")


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], config: SweepConfig) -> RDBStorage:
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=config.heartbeat,
        grace_period=config.grace or 2 * config.heartbeat,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
            max_retry=config.max_retry, inherit_intermediate_values=True
        ),
    )


def make_pruner(config: SweepConfig, epochs: int) -> optuna.pruners.BasePruner:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials,
                                           n_warmup_steps=config.prune_warmup)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


class OwnedTPESampler(optuna.samplers.TPESampler):
    """TPE that stamps each trial with the process running it the moment the trial starts,
    so a rerun on this machine tells an interrupted trial from a running one at once."""

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner(trial.number))
        super().before_trial(study, trial)


def make_sampler(config: SweepConfig, worker: int, sampled: int) -> optuna.samplers.TPESampler:
    """TPE seeded from (seed, worker, trials sampled so far): a resumed single-worker sweep
    asks the same questions as an uninterrupted one, parallel workers do not sample alike."""
    seed = int(np.random.SeedSequence([config.seed, worker, sampled]).generate_state(1)[0])
    with quiet():
        return OwnedTPESampler(seed=seed, n_startup_trials=config.startup_trials,
                               multivariate=True, constant_liar=True)


def sampled(trials: list[FrozenTrial]) -> int:
    """Trials so far minus retry copies: what an uninterrupted study would hold now."""
    return sum("failed_trial" not in t.system_attrs for t in trials)


# --- who runs a trial ----------------------------------------------------------------------

def _boot_id() -> str:
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.exists() else ""


def _process_start(pid: int) -> str | None:
    """A process's start time since boot (Linux): tells a reused pid from the original."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner(number: int) -> dict[str, Any]:
    """This process, as recorded on the trial it runs."""
    pid = os.getpid()
    return {"trial": number, "host": socket.gethostname(), "boot": _boot_id(), "pid": pid,
            "start": _process_start(pid)}


def owner_gone(trial: FrozenTrial) -> bool:
    """The process that ran this trial is provably dead: it ran on this machine and is gone
    (or is this process, which runs no trial between trials). A trial of another machine,
    or one not stamped yet, is left to the heartbeat."""
    stamp = trial.system_attrs.get(OWNER_ATTR) or {}
    here = (trial.number, socket.gethostname(), _boot_id())
    if (stamp.get("trial"), stamp.get("host"), stamp.get("boot")) != here:
        return False  # a retry copy carries its original's stamp until it starts
    pid = int(stamp["pid"])
    if pid == os.getpid():
        return True
    if stamp.get("start") is not None:
        return _process_start(pid) != stamp["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def base_train_config(config: SweepConfig) -> TrainConfig:
    """The config every trial starts from: the protocol's recipe, then the fields the preset
    changes (`fusion.train`'s layering, as `--protocol P --preset NAME`), with the sweep's
    task, data and budget."""
    from fusion.train import PRESETS, overlay, protocol_config

    name = config.preset or (
        f"{'mambavl' if config.fusion == 'mamba' else config.fusion}-{config.backbone or 'vitl'}"
    )
    if name not in PRESETS:
        raise HarnessError(f"--preset {name}: no such fusion.train preset; have "
                           f"{', '.join(sorted(PRESETS))}")
    base = overlay(protocol_config(config.protocol), PRESETS[name])
    backbone = config.backbone or base.backbone
    overrides: dict[str, Any] = {
        "fusion": config.fusion, "task": config.task, "backbone": backbone,
        "early_stop_metric": config.metric, "out": config.out / config.study_name(backbone),
    }
    for key in ("epochs", "data", "device", "tracking_uri", "experiment"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    return dataclasses.replace(base, **overrides)


def preflight(config: SweepConfig) -> TrainConfig:
    """What every trial needs, checked before the study is touched: the device, the search
    space and (for fusion.train) the feature stores. A problem here is one line and leaves
    no trial behind."""
    base = base_train_config(config)
    resolve_device(base.device)
    load_space(config.fusion, config.space, config.protocol)
    if config.train_fn == DEFAULT_TRAIN_FN:
        check_stores(base)
    return base


def check_stores(base: TrainConfig) -> None:
    """The stores fusion.train reads (paths as `fusion.data.load_split` builds them) exist."""
    from features.store import StoreError, store_path
    from fusion.data import text_store_name, video_store_name

    names = {"video": video_store_name(base)}
    if base.questions == "both":
        names["text"] = text_store_name(base)
    dataset = base.dataset or base.data.name
    for split in (base.train_split, base.val_split):
        for kind, name in names.items():
            path = store_path(base.data / "features", dataset, split, kind, name)
            if not path.exists():
                raise StoreError(f"{path}: no {kind} feature store for split {split!r}; "
                                 "extract it first, or point --data at the folder that has it")


def open_study(config: SweepConfig, storage: RDBStorage | None = None) -> optuna.Study:
    """Create the study or load it, refusing to continue a study of a different sweep."""
    base = base_train_config(config)
    name = config.study_name(base.backbone)
    space = load_space(config.fusion, config.space, config.protocol)  # no study if bad
    study = optuna.create_study(
        study_name=name, storage=storage or make_storage(config), direction="maximize",
        sampler=make_sampler(config, 0, 0), pruner=make_pruner(config, base.epochs),
        load_if_exists=True,
    )
    identity = {"fusion": config.fusion, "protocol": config.protocol, "task": config.task,
                "backbone": base.backbone, "metric": config.metric, "epochs": base.epochs}
    stored = {"protocol": "clean", **study.user_attrs}  # studies from before protocols: clean
    settings = train_settings(base)
    if "fusion" in stored:
        clash = {k: (stored.get(k), v) for k, v in identity.items() if stored.get(k) != v}
        old = stored.get(SETTINGS_ATTR, settings)
        clash.update({k: (old.get(k), settings.get(k)) for k in sorted(old.keys() | settings)
                      if old.get(k) != settings.get(k)})
        if clash:
            raise HarnessError(f"study {name!r} was started with other settings "
                               f"(stored vs now: {clash}); rerun with the same options, or "
                               "pick another --study name")
    else:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        study.set_user_attr("space", space.describe())
        if config.enqueue_reference and not study.trials:
            enqueue_reference(study, space)
    study.set_user_attr(SETTINGS_ATTR, settings)
    study.set_user_attr("target_trials", config.trials)
    return study


SETTINGS_ATTR = "train_settings"


def train_settings(base: TrainConfig) -> dict[str, Any]:
    """The trials' common training settings that change results (fusion.train's run-folder
    fingerprint): a rerun must not continue a study, or resume a trial's folder, with other
    data or recipe, which fusion.train would refuse trial by trial."""
    from features.config import to_dict
    from fusion.train import fingerprint

    return fingerprint(to_dict(base))


def enqueue_reference(study: optuna.Study, space: Space) -> None:
    reference = {k: v for k, v in space.reference.items()}
    if not in_space(space, {**{s.name: _any_in(s) for s in space.params}, **reference}):
        raise HarnessError(f"{space.fusion}: the space's reference values lie outside its "
                           "ranges; fix the `reference:` block or drop --enqueue-reference")
    study.enqueue_trial(reference, user_attrs={"reference": True})


def _any_in(spec: Any) -> Any:
    return spec.choices[0] if spec.type == "categorical" else spec.low


# --- counting ------------------------------------------------------------------------------

def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _rank(study: optuna.Study, number: int) -> int:
    numbers = sorted(t.number for t in study.get_trials(deepcopy=False, states=COUNTED))
    return numbers.index(number) if number in numbers else len(numbers)


def root_number(trial: optuna.Trial | FrozenTrial) -> int:
    """The first trial of a retry chain: its folder holds the checkpoint to resume."""
    if isinstance(trial, FrozenTrial):
        attrs = trial.system_attrs
    else:  # a live Trial no longer exposes its system attrs (Optuna 5): ask the storage
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    original = attrs.get("failed_trial")
    return trial.number if original is None else int(original)


# --- objective -----------------------------------------------------------------------------

TrainFn = Callable[..., dict[str, Any]]


def load_train_fn(path: str) -> TrainFn:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name or "train")


@dataclasses.dataclass
class Objective:
    """Trains one trial with fusion.train and returns its best validation metric."""

    config: SweepConfig
    study_name: str
    base: TrainConfig
    space: Space
    parent_run_id: str | None
    worker: int
    train_fn: TrainFn
    console: SweepConsole
    last_number: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.last_number = trial.number
        try:
            return self._run(trial)
        except HarnessError as error:
            raise SetupError(error) from error

    def _run(self, trial: optuna.Trial) -> float:
        rank = _rank(trial.study, trial.number)
        if rank >= self.config.trials:
            trial.set_user_attr("over_target", True)
            raise OverTarget(f"trial {trial.number} is beyond the target of "
                             f"{self.config.trials}; another worker took the last slot")
        values = self.space.suggest(trial)
        root = root_number(trial)
        index = (rank + 1 if root == trial.number
                 else label(trial.study.get_trials(deepcopy=False)[root]))
        trial.set_user_attr(INDEX_ATTR, index)
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number),
                "optuna.trial_root": str(root), "sweep.worker": str(self.worker),
                "mlflow.runName": f"{self.study_name}/trial-{root:04d}"}
        train_config = dataclasses.replace(
            apply(self.base, self.space, values),
            run_name=f"trial-{root:04d}",
            parent_run_id=self.parent_run_id,
            seed=self.base.seed,
            tags=(*self.base.tags, *(f"{k}={v}" for k, v in tags.items())),
            progress=self.base.progress if self.config.verbose else "quiet",
        )
        from sweeps.tracking import close_orphan_runs

        folder = train_config.out / train_config.run_name
        trial.set_user_attr("run_folder", str(folder))
        trial.set_user_attr("worker", self.worker)
        if root != trial.number:
            close_orphan_runs(train_config, self.study_name, root, folder)
        self.console.started(index, values, resumed=root != trial.number)
        metric = self.config.metric
        run_ids: list[str] = []
        last: dict[str, Any] = {}

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if stop_requested():  # a signal's KeyboardInterrupt may have been swallowed
                raise StopRequested("stop requested")
            if not run_ids:
                from sweeps.tracking import tag_active_run

                run_id = tag_active_run(tags)
                if run_id:
                    run_ids.append(run_id)
                    trial.set_user_attr("mlflow_run_id", run_id)
            value = float(metrics[metric])
            last.update(epoch=epoch, value=value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {metric} {value:.4f}")

        try:
            with interruptible():
                result = self.train_fn(train_config, on_epoch=on_epoch)
        except optuna.TrialPruned:
            from sweeps.tracking import end_pruned_run

            end_pruned_run(train_config, run_ids[0] if run_ids else None, last["epoch"])
            self.console.pruned(trial.study, index, last["epoch"], last["value"])
            raise
        except BaseException as error:
            from sweeps.tracking import end_active_runs

            end_active_runs("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            if isinstance(error, KeyboardInterrupt):  # Optuna fails it; the worker retries it
                trial.study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR,
                                                           True)
            raise
        from sweeps.tracking import tag_run

        tag_run(train_config, result.get("run_id"), {**tags, "pruned": "false"})
        trial.set_user_attr("mlflow_run_id", result.get("run_id"))
        trial.set_user_attr("epochs_run", result.get("epochs_run"))
        best = result.get("best") or {}
        if metric not in best:
            raise RuntimeError(f"training returned no {metric!r} (best: {sorted(best)})")
        if "epoch" in best:
            trial.set_user_attr("best_epoch", best["epoch"])
        self.console.finished(trial.study, index, float(best[metric]))
        return float(best[metric])


# --- worker loop ---------------------------------------------------------------------------

_STOP: dict[str, Any] = {"requested": False, "interruptible": False, "entry": None}


class StopRequested(KeyboardInterrupt):
    """A stop signal, raised as a KeyboardInterrupt subclass rather than the class itself.

    CPython 3.11 marks an interrupt "unhandled" when a bare KeyboardInterrupt leaves code
    run by `exec(str)` (dataclasses build their methods that way, e.g. in a lazy import
    during training) and keeps the mark after the interrupt is caught: the process then
    ends by SIGINT (-2) instead of the sweep's exit status 130. The check compares the
    exact type, so a subclass does not set it (reproduced with 3.11.7).
    """

LAUNCHER_ENV = "SWEEPS_LAUNCHER_PID"


def stop_requested() -> bool:
    """A stop signal arrived, or the launcher of this worker process is gone."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher and os.getppid() != int(launcher):
        _STOP["requested"] = True
    return bool(_STOP["requested"])


DATABASE_MODULES = ("sqlalchemy", "sqlite3", "alembic", "psycopg2", "pymysql", "mlflow",
                    "optuna")
"""Packages a stop never interrupts: an exception raised inside a database client can leave
its transaction open, and with it SQLite's write lock, held by this process until garbage
collection; the next write (the launcher marking the MLflow parent run KILLED) then fails
with "database is locked" and the sweep exits 1 instead of 130 (seen once in CI)."""

DEFERRED_STOP_RETRY_S = 0.02
"""How often a stop deferred out of database code tries again."""


def _in_database_code(frame: Any) -> bool:
    """Whether training called into `DATABASE_MODULES` code that is still running: a frame
    of theirs between `frame` (where the signal landed) and the frame that entered
    `interruptible`. Frames outside it do not count: training itself runs inside Optuna's
    `optimize`."""
    while frame is not None and frame is not _STOP["entry"]:
        name = frame.f_globals.get("__name__") or ""
        if name.split(".", 1)[0] in DATABASE_MODULES:
            return True
        frame = frame.f_back
    return False


def _interrupt(frame: Any, why: str) -> None:
    """Raise the stop where training runs, now, or as soon as database code has returned
    (a timer signal tries again); outside `interruptible` it waits for the next check."""
    if not _STOP["interruptible"]:
        return
    if _in_database_code(frame):
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, DEFERRED_STOP_RETRY_S)
        return
    _STOP["interruptible"] = False
    raise StopRequested(why)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM stop the sweep: the running trial fails and is queued to resume.

    A signal only records the stop, except inside training (`interruptible`), where it
    raises KeyboardInterrupt at once, or once database code (`DATABASE_MODULES`: MLflow's
    and Optuna's writes during training) has returned: the last checkpoint is intact there,
    whereas an exception landing in Optuna's own bookkeeping (tell) can leave a trial
    half-written. The stop is acted on between trials and after every epoch too, which
    also covers a KeyboardInterrupt that Python swallowed (raised while a finalizer ran)
    and the launcher's death signal arriving once per thread.
    """

    def handler(signum: int, frame: Any) -> None:
        if _STOP["requested"]:
            return
        _STOP["requested"] = True
        _interrupt(frame, f"signal {signum}")

    _STOP["requested"] = False
    handlers = {signal.SIGINT: handler, signal.SIGTERM: handler}
    if hasattr(signal, "setitimer"):
        handlers[signal.SIGALRM] = lambda signum, frame: _interrupt(frame, "deferred stop")
    try:
        previous = {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Training: a stop signal interrupts at once (see `stop_on_signals`)."""
    if stop_requested():
        raise StopRequested("stop requested")
    entry = sys._getframe(1)  # the frame of the `with` statement, past contextlib's own
    while entry is not None and entry.f_globals.get("__name__") == "contextlib":
        entry = entry.f_back
    _STOP["interruptible"], _STOP["entry"] = True, entry
    try:
        yield
    finally:
        _STOP["interruptible"], _STOP["entry"] = False, None


def run_worker(config: SweepConfig, worker: int = 0, parent_run_id: str | None = None,
               poll: float | None = None) -> dict[str, int]:
    """Run trials until the study holds `config.trials` finished ones; safe to run anywhere,
    any number of times, alongside other workers of the same study."""
    set_log_level(config.verbose)
    base = preflight(config)
    storage = make_storage(config)
    study = open_study(config, storage)
    several = config.workers * config.parallel > 1
    objective = Objective(config, study.study_name, base,
                          load_space(config.fusion, config.space, config.protocol),
                          parent_run_id or study.user_attrs.get("mlflow_parent_run_id"),
                          worker, load_train_fn(config.train_fn),
                          SweepConsole(config.trials, config.metric,
                                       f"[worker {worker}] " if several else ""))
    poll = poll if poll is not None else min(2.0, max(0.2, config.heartbeat / 2))
    failures, ran = 0, 0
    with stop_on_signals():
        while True:
            if stop_requested():
                raise StopRequested("stop requested")
            retry_interrupted(study, config.max_retry)
            with quiet():
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if done >= config.trials:
                break
            if not waiting and done + running >= config.trials:
                time.sleep(poll)  # the last trials run elsewhere (or went silent: wait it out)
                continue
            study.sampler = make_sampler(config, worker, sampled(trials))
            objective.last_number = None
            try:
                with quiet():
                    study.optimize(objective, n_trials=1, catch=(Exception,))
            except KeyboardInterrupt:
                _retry_interrupted(study, objective.last_number, config.max_retry)
                raise
            except SetupError as stop:
                _retry_interrupted(study, objective.last_number, config.max_retry)
                raise stop.error from None
            if objective.last_number is None:
                continue
            trial = study.get_trials(deepcopy=False)[objective.last_number]
            if trial.state == TrialState.FAIL and not trial.user_attrs.get("over_target"):
                failures += 1
                if failures >= config.max_failures:
                    raise SystemExit(f"worker {worker}: {failures} trials in a row failed; "
                                     "see the errors above")
            elif trial.state in FINISHED:
                failures, ran = 0, ran + 1
    return {"ran": ran, **counts(study)}


def retry_interrupted(study: optuna.Study, max_retry: int) -> None:
    """Before anything new is sampled: fail each RUNNING trial whose process is gone and
    queue each interrupted trial whose process died before queueing it, so a resumed sweep
    runs the same trials in the same order as an uninterrupted one."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for trial in trials:
        orphan = trial.state == TrialState.RUNNING
        unqueued = (trial.state == TrialState.FAIL and trial.system_attrs.get(INTERRUPTED_ATTR)
                    and trial.number not in retried and _retries_left(trial, max_retry))
        if (orphan or unqueued) and owner_gone(trial):
            _retry_interrupted(study, trial.number, max_retry)


def _retries_left(trial: FrozenTrial, max_retry: int) -> bool:
    return len(trial.system_attrs.get("retry_history", [])) < max_retry


def _retry_interrupted(study: optuna.Study, number: int | None, max_retry: int) -> None:
    """Queue the interrupted trial again (same params, its folder resumes from last.pt)."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.user_attrs.get("over_target"):
        return
    if trial.state == TrialState.RUNNING:  # interrupted before Optuna could tell it
        try:
            study._storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker finished or failed it first, and queues its retry
        trial = study._storage.get_trial(trial._trial_id)
    if trial.state != TrialState.FAIL:
        return
    if not _retries_left(trial, max_retry):
        print(f"trial {number} interrupted: retried {max_retry} times already (--max-retry), "
              "not queued again", file=sys.stderr)
        return
    with quiet():
        RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)(
            study, trial
        )
    print(f"trial {number} interrupted: queued to resume from its checkpoint", file=sys.stderr)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []

"""Start a sweep: open the study and its MLflow parent, run the workers, log the summary.

`workers x parallel` processes share the study through its storage. Each GPU worker is
pinned with CUDA_VISIBLE_DEVICES; `parallel` processes on one GPU keep several small-head
trials in flight there (each its own CUDA context: simple, and a crash stays local). The
workers are plain `python -m sweeps.worker` processes, so the same code runs on other
machines pointed at the same PostgreSQL study.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from features.errors import HarnessError, resolve_device
from sweeps.config import SweepConfig
from sweeps.console import summary_text
from sweeps.study import (
    LAUNCHER_ENV,
    StopRequested,
    counts,
    make_storage,
    open_study,
    preflight,
    run_worker,
    set_log_level,
    stop_on_signals,
    stop_requested,
    visible_gpus,
)
from sweeps.tracking import ensure_parent_run, log_summary


def die_with_launcher() -> None:
    """In a worker: get SIGTERM when the launcher dies, even by SIGKILL (no orphan trainings;
    SIGTERM fails the running trial and queues its retry). Linux only; a no-op elsewhere."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(launcher):  # it died before prctl took effect
        raise SystemExit("sweep launcher is gone")


def worker_env(index: int, config: SweepConfig, gpus: list[str]) -> dict[str, str]:
    """Process `index`'s environment: its GPU, or a fair share of CPU threads."""
    env = {**os.environ, LAUNCHER_ENV: str(os.getpid())}
    total = config.workers * config.parallel
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[(index // config.parallel) % len(gpus)]
    else:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // total)))
    return env


def worker_gpus(config: SweepConfig, device: str) -> list[str]:
    """The GPUs the workers are pinned to (none on CPU), checked before any work."""
    if resolve_device(device).type != "cuda":
        return []
    return check_workers(config, visible_gpus())


def check_workers(config: SweepConfig, gpus: list[str]) -> list[str]:
    """More workers than GPUs is refused: `--parallel` runs several trials on one GPU."""
    if config.workers > len(gpus):
        raise HarnessError(f"--workers {config.workers}: only {len(gpus)} GPU(s) are visible "
                           f"({','.join(gpus)}); use --workers {len(gpus)} and --parallel K "
                           "for K trials on each GPU, or --device cpu")
    return gpus


def spawn_workers(config: SweepConfig, parent_run_id: str, folder: Path,
                  gpus: list[str]) -> list[int]:
    """Run every worker process to the end; returns their exit codes."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "sweep-config.json"
    config_file.write_text(config.to_json() + "\n")
    total = config.workers * config.parallel
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sweeps.worker", str(config_file), str(i), parent_run_id],
            env=worker_env(i, config, gpus),
        )
        for i in range(total)
    ]
    while any(p.poll() is None for p in procs):
        if stop_requested():  # Ctrl-C reached the children too; a scheduler's TERM did not
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise StopRequested("stop requested")
        time.sleep(0.2)
    return [p.returncode for p in procs]


def sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or continue) the sweep to `config.trials` finished trials."""
    set_log_level(config.verbose)
    base = preflight(config)
    gpus = worker_gpus(config, base.device) if config.workers * config.parallel > 1 else []
    storage = make_storage(config)
    study = open_study(config, storage)
    parent = ensure_parent_run(study, config, base)
    print(f"study {study.study_name!r} in {config.storage}: {counts(study)}; "
          f"MLflow parent run {parent}", file=sys.stderr)
    try:
        with stop_on_signals():
            if config.workers * config.parallel == 1:
                run_worker(config, 0, parent)
            else:
                codes = spawn_workers(config, parent, base.out, gpus)
                if any(codes):
                    raise SystemExit(f"worker exit codes {codes}")
    except (KeyboardInterrupt, SystemExit):
        from mlflow.tracking import MlflowClient

        from fusion.tracking import tracking_uri

        MlflowClient(tracking_uri(base.tracking_uri)).update_run(parent, status="KILLED")
        raise
    result: dict[str, Any] = {"study": study.study_name, "parent_run_id": parent,
                              **counts(study)}
    if config.summary:
        result.update(log_summary(study, parent, config, base) or {})
    return result


def main(config: SweepConfig) -> None:
    try:
        result = sweep(config)
    except KeyboardInterrupt:
        print("sweep interrupted: rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(result, default=str) if config.json else summary_text(result))

"""The options of one sweep, shared by the CLI, the launcher and every worker process."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fusion.metrics import HEADLINE_METRIC
from fusion.protocols import ProtocolName

Fusion = Literal["mamba", "mlp", "transformer_6x4", "transformer_12x12"]
DEFAULT_TRAIN_FN = "fusion.train:train"


@dataclass
class SweepConfig:
    """Optuna sweep of one fusion head; rerun the same command to continue it."""

    fusion: Fusion = "mamba"
    protocol: ProtocolName = "clean"
    """Protocol every trial trains under (`fusion.protocols`): the base config is its recipe,
    then the preset; the search space is the protocol's (`protocols:` in the space file,
    `heads:` for clean)."""
    trials: int = 50
    """Target number of finished (complete + pruned) trials of the study."""
    study: str | None = None
    """Study name (default: fusion-backbone-task[-protocol]); the same name continues the
    same study."""
    task: Literal["recognition", "anticipation"] = "recognition"
    backbone: str | None = None
    """Default: the preset's backbone."""
    preset: str | None = None
    """fusion.train preset to start from (default: mambavl-vitl / <fusion>-vitl)."""
    storage: str = "sqlite:///sweeps.db"
    """Optuna storage URL; postgresql://user@host/db shares a study among machines."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    workers: int = 1
    """Worker processes: at most one per visible GPU (`--parallel` puts more trials on each),
    any number on CPU."""
    parallel: int = 1
    """Trials in flight per worker's GPU (each its own process, with its own copy of the
    features). Pays for small heads (H100, d_model 256 Mamba: 1.66x trials/hour at 4); the
    paper's d_model 1024 Mamba already fills the GPU (1.05x at 2). See
    benchmarks/results/sweep_throughput*.md."""
    seed: int = 0
    epochs: int | None = None
    """Epochs per trial (default: the preset's)."""
    data: Path | None = None
    device: str | None = None
    out: Path = Path("runs/sweeps")
    """Trial folders go to <out>/<study>/trial-NNNN (a retried trial reuses its folder)."""
    space: Path | None = None
    """Search-space file (default: sweeps/spaces.yaml)."""
    enqueue_reference: bool = False
    """Run the authors' recipe (the `reference:` block of the space) as the first trial."""
    tracking_uri: str | None = None
    experiment: str | None = None
    startup_trials: int = 10
    """Random trials before TPE models the history (and before the median pruner prunes)."""
    prune_warmup: int = 2
    """Median pruner: never prune before this many epochs."""
    heartbeat: int = 30
    """Seconds between a running trial's heartbeats; a trial silent for `grace` is retried."""
    grace: int | None = None
    """Default: 2 x heartbeat."""
    max_retry: int = 3
    """Times a stale/interrupted trial is retried from its last checkpoint."""
    max_failures: int = 3
    """A worker stops after this many trials in a row fail with an error."""
    train_fn: str = DEFAULT_TRAIN_FN
    """module:function with fusion.train.train's signature (tests and benchmarks swap it)."""
    summary: bool = True
    """Log best params, plots and history to the MLflow parent run when the study is done."""
    json: bool = False
    """Print the final summary as one JSON object (for scripts) instead of a few lines."""
    verbose: bool = False
    """Show each trial's own training output and Optuna's INFO logs; by default a sweep
    prints one line as a trial starts (`trial k/N` and its parameters) and one as it ends
    (its result and the best so far)."""

    def study_name(self, backbone: str) -> str:
        protocol = "" if self.protocol == "clean" else f"-{self.protocol}"
        return self.study or f"{self.fusion}-{backbone}-{self.task}{protocol}"

    @property
    def metric(self) -> str:
        return HEADLINE_METRIC[self.task]

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v
                           for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> SweepConfig:
        raw = json.loads(text)
        paths = {"data", "out", "space"}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in raw.items()})

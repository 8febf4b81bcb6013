"""What a sweep prints: one line as a trial starts, one as it ends.

    trial 7/50  lr 3.1e-04  ssm_lr 1.2e-03  d_state 16  depth 2
    trial 7/50  action@1 41.2  (best 41.9, trial 5)
    trial 8/50  pruned at epoch 3: action@1 12.0  (best 41.9, trial 5)

Why: a sweep runs for hours, often into a log file; its reader wants where it is (k of N),
what each trial tried and how it compares, not each trial's epoch lines (trials train
quietly unless `--verbose`) nor Optuna's INFO logs. `k` is the trial's place among the
study's counted trials (finished, running, queued) as it starts, so it never exceeds N; a
retried trial keeps its first `k`, which the best's label uses too.
Numbers follow `fusion.console`: accuracies in % to one decimal, rates in scientific notation.
"""

from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from fusion.console import metric_label, percent

INDEX_ATTR = "sweep_index"  # user attr: the trial's k in `trial k/N`

SHORT = {"peak_lr": "lr", "ssm_peak_lr": "ssm_lr", "weight_decay": "wd",
         "warmup_fraction": "warmup", "label_smoothing": "smooth", "batch_size": "batch"}
"""Short names of the common knobs; any other parameter prints under its own name."""


def number(value: Any) -> str:
    """3.1e-04 for small or large floats, 0.25 otherwise; ints and choices as given."""
    if isinstance(value, float):
        return f"{value:.1e}" if value and not 1e-2 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def params_text(values: dict[str, Any]) -> str:
    return "  ".join(f"{SHORT.get(k, k)} {number(v)}" for k, v in values.items())


def label(trial: FrozenTrial) -> int:
    """The trial's k (1-based); trials from before k was recorded: their number + 1."""
    return int(trial.user_attrs.get(INDEX_ATTR, trial.number + 1))


def best_text(study: optuna.Study, metric: str, value: float | None = None,
              index: int | None = None) -> str:
    """`(best 41.9, trial 5)` over the complete trials and, when given, the trial ending now
    (`value` of trial `index`, not told to Optuna yet); '' before any trial completes."""
    complete = [(t.value, label(t)) for t in study.get_trials(deepcopy=False,
                                                              states=(TrialState.COMPLETE,))
                if t.value is not None]
    if value is not None and index is not None:
        complete.append((value, index))
    if not complete:
        return ""
    best, at = max(complete, key=lambda item: item[0])
    return f"  (best {percent(best)}, trial {at})"


class SweepConsole:
    """The lines of one worker; `prefix` names the worker when several share the output."""

    def __init__(self, trials: int, metric: str, prefix: str = "") -> None:
        self.trials, self.metric, self.prefix = trials, metric, prefix

    def _print(self, index: int, text: str) -> None:
        width = len(str(self.trials))
        print(f"{self.prefix}trial {index:>{width}}/{self.trials}  {text}", file=sys.stderr,
              flush=True)

    def started(self, index: int, values: dict[str, Any], resumed: bool = False) -> None:
        """`resumed`: a retry of an interrupted trial, continuing from its checkpoint."""
        note = "  (interrupted before: resuming its checkpoint)" if resumed else ""
        self._print(index, params_text(values) + note)

    def finished(self, study: optuna.Study, index: int, value: float) -> None:
        self._print(index, f"{metric_label(self.metric)} {percent(value)}"
                           f"{best_text(study, self.metric, value, index)}")

    def pruned(self, study: optuna.Study, index: int, epoch: int, value: float) -> None:
        self._print(index, f"pruned at epoch {epoch}: {metric_label(self.metric)} "
                           f"{percent(value)}{best_text(study, self.metric)}")


def summary_text(result: dict[str, Any]) -> str:
    """The end of a sweep, for people: how many trials ended how, the best and where it is."""
    lines = [f"sweep {result['study']}: {result.get('complete', 0)} complete, "
             f"{result.get('pruned', 0)} pruned, {result.get('fail', 0)} failed"
             f"; MLflow parent run {result['parent_run_id']}"]
    if result.get("best_value") is not None:
        lines.append(f"  best      trial {result.get('best_index', result['best_trial'] + 1)}: "
                     f"{metric_label(result['metric'])} {percent(result['best_value'])}  "
                     f"{params_text(result.get('best_params') or {})}")
        lines.append(f"  best run  {result.get('best_run_folder')}  "
                     f"(MLflow run {result.get('best_run_id')})")
    return "\n".join(lines)


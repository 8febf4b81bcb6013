"""Score a predictions file against EK100 labels with the official metric definitions.

`python -m fusion.evaluate --predictions P.npz --annotations EPIC_100_validation.csv
--task recognition --json` prints one JSON object of fractions in [0, 1]:

- always: `verb_top1`, `noun_top1`, `action_top1`, `verb_top5`, `noun_top5`, `action_top5`,
  `verb_recall5`, `noun_recall5`, `action_recall5` (class-mean top-5 recall over the
  classes present, the anticipation challenge's number);
- recognition, as C1's `evaluate.py` reports them: `tail_{verb,noun,action}_top1` and
  `unseen_{verb,noun,action}_top1`;
- anticipation, as C3's evaluator reports them: `tail_{verb,noun,action}_recall5` and
  `unseen_{verb,noun,action}_recall5`.
Definitions are in `fusion.metrics`. Predictions may be our `.npz`, C1 results (`.pkl`,
`.pt`) or a challenge submission (`.json`, `.zip`), so other codebases' files score the
same way. Class, tail and unseen-participant files default to the annotations' folder; a
breakdown whose default file is absent is left out (with a note on stderr). Pickled inputs
(`.pkl`/`.pt` predictions, `.pkl` annotations) are read with `features.safeload`: only plain
data, unless `--trust-pickle`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.annotations import AnnotationError, load_classes, load_segments, read_csv_file
from fusion.export import Task, read_any
from fusion.metrics import metrics_for
from fusion.predictions import Predictions, PredictionsError

UNSEEN_FILES = ("EPIC_100_unseen_participant_ids_validation.csv",
                "EPIC_100_unseen_participant_ids.csv")


@dataclass(frozen=True)
class Reference:
    """Labels of the evaluated split plus the lists its breakdowns need."""

    narration_id: np.ndarray
    verb_labels: np.ndarray
    noun_labels: np.ndarray
    participant_ids: np.ndarray
    n_verbs: int
    n_nouns: int
    tail_verbs: np.ndarray | None = None
    tail_nouns: np.ndarray | None = None
    unseen_participants: np.ndarray | None = None
    notes: tuple[str, ...] = ()


def _read_column(path: Path, column: str) -> np.ndarray:
    frame = read_csv_file(path)
    if column not in frame.columns:
        raise AnnotationError(f"{path}: missing column '{column}' (the EK100 header)")
    return frame[column].to_numpy()


def _optional(given: Path | None, defaults: list[Path], column: str, what: str,
              notes: list[str]) -> np.ndarray | None:
    """Read an explicitly given file (must exist) or the first default that exists."""
    if given is not None:
        return _read_column(given, column)
    for path in defaults:
        if path.exists():
            return _read_column(path, column)
    notes.append(f"no {defaults[0].name} beside the annotations: {what} breakdown left out")
    return None


def load_reference(
    annotations: str | os.PathLike,
    verb_classes: Path | None = None,
    noun_classes: Path | None = None,
    tail_verbs: Path | None = None,
    tail_nouns: Path | None = None,
    unseen_participants: Path | None = None,
    trust_pickle: bool = False,
) -> Reference:
    """Labels from a segment file (CSV or pickle) and breakdown lists from its folder."""
    annotations = Path(annotations)
    folder = annotations.parent
    verbs = load_classes(verb_classes or folder / "EPIC_100_verb_classes.csv")
    nouns = load_classes(noun_classes or folder / "EPIC_100_noun_classes.csv")
    segments = load_segments(annotations, verbs, nouns, trust_pickle)
    if "verb_class" not in segments.columns:
        raise AnnotationError(f"{annotations}: no verb/noun labels (test timestamps?); "
                              "evaluation needs a labelled split")
    notes: list[str] = []
    tails = [
        _optional(given, [folder / f"EPIC_100_tail_{name}s.csv"], name, "tail-class", notes)
        for given, name in ((tail_verbs, "verb"), (tail_nouns, "noun"))
    ]
    if (tails[0] is None) != (tails[1] is None):
        tails = [None, None]
    unseen = _optional(unseen_participants, [folder / f for f in UNSEEN_FILES],
                       "participant_id", "unseen-participant", notes)
    return Reference(
        narration_id=segments["narration_id"].to_numpy().astype(str),
        verb_labels=segments["verb_class"].to_numpy(),
        noun_labels=segments["noun_class"].to_numpy(),
        participant_ids=segments["participant_id"].to_numpy().astype(str),
        n_verbs=len(verbs),
        n_nouns=len(nouns),
        tail_verbs=None if tails[0] is None else tails[0].astype(np.int64),
        tail_nouns=None if tails[1] is None else tails[1].astype(np.int64),
        unseen_participants=None if unseen is None else unseen.astype(str),
        notes=tuple(dict.fromkeys(notes)),
    )


def evaluate(predictions: Predictions, reference: Reference, task: Task) -> dict[str, float]:
    """Metrics of `predictions` on exactly the segments of `reference`."""
    predictions.validate(reference.n_verbs, reference.n_nouns)
    aligned = predictions.aligned(reference.narration_id)
    return metrics_for(
        task,
        aligned.verb_scores,
        aligned.noun_scores,
        reference.verb_labels,
        reference.noun_labels,
        participant_ids=reference.participant_ids,
        unseen_participants=reference.unseen_participants,
        tail_verbs=reference.tail_verbs,
        tail_nouns=reference.tail_nouns,
        actions=aligned.actions,
    )


@dataclass
class EvaluateConfig:
    """Score predictions against EK100 labels (official C1/C3 metric definitions)."""

    predictions: Path
    """Predictions: .npz (ours), C1 results .pkl/.pt, or a challenge submission .json/.zip."""
    annotations: Path
    """Labelled segment file, e.g. EPIC_100_validation.csv (or .pkl)."""
    task: Task = "recognition"
    json: bool = False
    """Print one JSON object instead of a table."""
    verb_classes: Path | None = None
    """Default: EPIC_100_verb_classes.csv beside --annotations."""
    noun_classes: Path | None = None
    """Default: EPIC_100_noun_classes.csv beside --annotations."""
    tail_verbs: Path | None = None
    """Default: EPIC_100_tail_verbs.csv beside --annotations."""
    tail_nouns: Path | None = None
    """Default: EPIC_100_tail_nouns.csv beside --annotations."""
    unseen_participants: Path | None = None
    """Default: EPIC_100_unseen_participant_ids_validation.csv beside --annotations."""
    trust_pickle: bool = False
    """fully unpickle .pkl/.pt --predictions and a .pkl --annotations file (runs their code:
    only for files you trust)"""


def run(config: EvaluateConfig) -> tuple[dict[str, float], Reference]:
    reference = load_reference(config.annotations, config.verb_classes, config.noun_classes,
                               config.tail_verbs, config.tail_nouns, config.unseen_participants,
                               config.trust_pickle)
    predictions = read_any(config.predictions, config.task, config.trust_pickle)
    try:
        return evaluate(predictions, reference, config.task), reference
    except PredictionsError as error:
        raise PredictionsError(f"{config.predictions}: {error}") from None


def main(argv: list[str] | None = None) -> None:
    from features.config import cli

    config = cli(EvaluateConfig, args=argv)
    metrics, reference = run(config)  # bad input: a HarnessError, one line via run_cli
    for note in reference.notes:
        print(f"note: {note}", file=sys.stderr)
    if config.json:
        print(json.dumps(metrics))
        return
    print(f"{config.task} on {len(reference.narration_id)} segments ({config.annotations})")
    for name, value in metrics.items():
        print(f"  {name:<22} {value:.4f}  ({100 * value:.2f}%)")


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

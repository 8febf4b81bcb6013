"""The predictions file every model writes: one `.npz` per evaluated split.

Arrays: `narration_id (N,)` str, `verb_scores (N, V)` and `noun_scores (N, N_nouns)` float
logits (softmax is applied by the metrics, as the official code does). Optional
`action_verbs`, `action_nouns`, `action_scores (N, K)` carry a model's own ranked action
candidates (e.g. read from a C3 submission); when present they replace verb x noun action
scores. Optional `source` (0-d str array of JSON, `read_source`): where the scores came from,
as `fusion.predict` records it (`run`, `checkpoint`, `split`, `trained_on`, and `in_sample`:
whether the split scored is the one the run was trained on; training's `predictions_best.npz`
adds `selected_on`, the split its best epoch was chosen on); files without it (other
models', older files) read `None`, and `load_predictions` ignores it. Saved without
pickling, so loading a file never runs code.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import HarnessError, one_line
from fusion.metrics import to_numpy

REQUIRED = ("narration_id", "verb_scores", "noun_scores")
ACTION_FIELDS = ("action_verbs", "action_nouns", "action_scores")
SOURCE = "source"
"""Optional array: the provenance of the scores, a JSON object (`read_source`)."""
SHOWN_IDS = 5


class PredictionsError(HarnessError, ValueError):
    """Predictions that cannot be evaluated or exported; the message names the segment."""


def _ids_text(ids: Any, what: str) -> str:
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
    return f"{len(ids)} {what}: {shown}"


@dataclass(frozen=True)
class Predictions:
    """Scores for N segments, row i belonging to `narration_id[i]`."""

    narration_id: np.ndarray
    verb_scores: np.ndarray
    noun_scores: np.ndarray
    action_verbs: np.ndarray | None = None
    action_nouns: np.ndarray | None = None
    action_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.narration_id)

    @property
    def actions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self.action_scores is None:
            return None
        return self.action_verbs, self.action_nouns, self.action_scores

    def validate(self, n_verbs: int | None = None, n_nouns: int | None = None) -> Predictions:
        """Check shapes, unique ids and finite scores; raise `PredictionsError` naming a row."""
        ids = self.narration_id
        if ids.ndim != 1:
            raise PredictionsError(f"narration_id: expected shape (N,), got {ids.shape}")
        fields = [("verb_scores", self.verb_scores, n_verbs), ("noun_scores", self.noun_scores,
                                                             n_nouns)]
        if self.action_scores is not None:
            fields += [(f, getattr(self, f), None) for f in ACTION_FIELDS]
        for name, array, classes in fields:
            if array is None:
                raise PredictionsError(f"{name}: missing; give all of {', '.join(ACTION_FIELDS)}")
            if array.ndim != 2 or len(array) != len(ids):
                raise PredictionsError(
                    f"{name}: expected shape ({len(ids)}, classes) to match narration_id, "
                    f"got {array.shape}"
                )
            if classes is not None and array.shape[1] != classes:
                raise PredictionsError(
                    f"{name}: {array.shape[1]} classes per segment, expected {classes}"
                )
            if name.endswith("_scores"):
                finite = np.isfinite(array)
                if not finite.all():
                    row, col = (int(i[0]) for i in np.nonzero(~finite))
                    raise PredictionsError(
                        f"{name}: segment {ids[row]}: class {col} score is {array[row, col]}"
                    )
        if self.action_scores is not None and not (
            self.action_verbs.shape == self.action_nouns.shape == self.action_scores.shape
        ):
            raise PredictionsError("action_verbs, action_nouns and action_scores differ in shape")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise PredictionsError(_ids_text(unique[counts > 1], "duplicated narration id(s)"))
        return self

    def aligned(self, narration_ids: Any) -> Predictions:
        """Rows reordered to `narration_ids`; missing or extra segments are an error."""
        wanted = np.asarray(narration_ids).astype(str)
        index = {nid: i for i, nid in enumerate(self.narration_id.tolist())}
        missing = [nid for nid in wanted.tolist() if nid not in index]
        wanted_set = set(wanted.tolist())
        extra = [nid for nid in self.narration_id.tolist() if nid not in wanted_set]
        problems = []
        if missing:
            problems.append(_ids_text(missing, "segment(s) missing from the predictions"))
        if extra:
            problems.append(_ids_text(extra, "extra segment(s) not in the annotations"))
        if problems:
            raise PredictionsError("; ".join(problems))
        rows = np.fromiter((index[nid] for nid in wanted.tolist()), dtype=np.int64,
                           count=len(wanted))
        return self.take(rows)

    def take(self, rows: np.ndarray) -> Predictions:
        picked = {f: getattr(self, f) for f in REQUIRED + ACTION_FIELDS}
        return replace(self, **{f: None if a is None else a[rows] for f, a in picked.items()})


def make_predictions(
    narration_id: Any,
    verb_scores: Any,
    noun_scores: Any,
    action_verbs: Any = None,
    action_nouns: Any = None,
    action_scores: Any = None,
) -> Predictions:
    """Build validated `Predictions` from numpy arrays, torch tensors or lists."""
    def opt(a: Any, dtype: Any) -> np.ndarray | None:
        return None if a is None else to_numpy(a).astype(dtype, copy=False)

    given_actions = [a is not None for a in (action_verbs, action_nouns, action_scores)]
    if any(given_actions) and not all(given_actions):
        raise PredictionsError(f"give all of {', '.join(ACTION_FIELDS)} or none of them")
    scores_dtype = np.float64
    given = to_numpy(verb_scores)
    if given.dtype in (np.float32, np.float16):
        scores_dtype = np.float32
    return Predictions(
        narration_id=np.asarray([str(i) for i in to_numpy(narration_id).tolist()]),
        verb_scores=to_numpy(verb_scores).astype(scores_dtype, copy=False),
        noun_scores=to_numpy(noun_scores).astype(scores_dtype, copy=False),
        action_verbs=opt(action_verbs, np.int64),
        action_nouns=opt(action_nouns, np.int64),
        action_scores=opt(action_scores, np.float64),
    ).validate()


def save_predictions(
    path: str | os.PathLike,
    narration_id: Any,
    verb_scores: Any = None,
    noun_scores: Any = None,
    *,
    source: Mapping[str, Any] | None = None,
    **actions: Any,
) -> Path:
    """Write a predictions `.npz`; `narration_id` may also be a whole `Predictions`.
    `source` (JSON-serialisable) is stored as the `source` array, read by `read_source`."""
    preds = narration_id if isinstance(narration_id, Predictions) else make_predictions(
        narration_id, verb_scores, noun_scores, **actions
    )
    preds.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f: getattr(preds, f) for f in REQUIRED + ACTION_FIELDS if getattr(preds, f)
              is not None}
    if source is not None:
        arrays[SOURCE] = np.asarray(json.dumps(dict(source), sort_keys=True))
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
        np.savez(f, **arrays)
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a predictions `.npz`; a `PredictionsError` for a file that is not one."""
    if not path.exists():
        raise PredictionsError(f"{path}: file not found")
    expected = f"expected a predictions .npz with arrays {', '.join(REQUIRED)}"
    if path.stat().st_size == 0:
        raise PredictionsError(f"{path}: empty file (0 bytes); {expected}; was it written "
                               "completely?")
    if not zipfile.is_zipfile(path):  # np.savez writes a zip archive
        raise PredictionsError(f"{path}: not a .npz (zip) archive; {expected}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        hint = ("; store narration_id as a str array (np.asarray(ids, dtype=str)), not objects"
                if "allow_pickle" in str(error) else f"; {expected}")
        raise PredictionsError(f"{path}: not a predictions .npz ({one_line(error)}){hint}"
                               ) from None
    return arrays


def read_source(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance `save_predictions` recorded (`fusion.predict`: run, checkpoint, split,
    trained_on, in_sample; training: also selected_on), or `None` for a file without one
    (written before it existed, by another model or by hand)."""
    path = Path(path)
    arrays = _read_arrays(path)
    if SOURCE not in arrays:
        return None
    try:
        source = json.loads(str(arrays[SOURCE].item()))
    except (ValueError, TypeError) as error:
        source = error
    if not isinstance(source, dict):
        raise PredictionsError(f"{path}: its {SOURCE!r} array is not a JSON object ("
                               f"{one_line(source)[:120]}); rewrite the file with "
                               "fusion.predict, or drop the array")
    return source


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions `.npz` written by `save_predictions` (or by hand)."""
    path = Path(path)
    arrays = _read_arrays(path)
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise PredictionsError(
            f"{path}: missing array(s) {', '.join(missing)}; expected {', '.join(REQUIRED)}"
        )
    try:
        return make_predictions(**{k: arrays.get(k) for k in REQUIRED + ACTION_FIELDS})
    except PredictionsError as error:
        raise PredictionsError(f"{path}: {error}") from None
    except (ValueError, TypeError) as error:  # e.g. scores that are not numbers
        raise PredictionsError(f"{path}: {one_line(error)}; scores must be numeric arrays"
                               ) from None

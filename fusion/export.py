"""Official EK100 result formats, written from and read back into `Predictions`.

Formats (matched field for field to the `epic-kitchens` repositories, own code):
- C1 results (`C1-Action-Recognition/evaluate.py`, `create_submission.py` input): a dict
  `{"verb_output": (N, 97), "noun_output": (N, 300), "narration_id": (N,) str}` saved with
  `pickle` (`.pkl`) or `torch.save` (`.pt`); the list-of-dicts layout is read too. Read
  with `features.safeload` (numpy arrays, lists, dicts, str only) unless `trust_pickle`.
- Challenge submission JSON (C1 `utils/challenge.py`, validated by C3's
  `evaluate_anticipation_json_ek100.py`): `{"version": "0.2", "challenge":
  "action_recognition"|"action_anticipation", "sls_pt", "sls_tl", "sls_td", "results":
  {narration_id: {"verb": {"0": s, ...}, "noun": {...}[, "action": {"v,n": s} x 100]}}}`.
  Recognition carries no actions (the server forms them as `fusion.metrics` does);
  anticipation carries the 100 best actions. `.zip` holds it as `test.json`, as C1's
  `write_submission_file` does; `.json` is the plain file C3's evaluator reads.

`python -m fusion.export --predictions P.npz --task recognition --format submission --out X.zip`
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from features.errors import one_line
from features.safeload import load_pickle, load_torch
from fusion.metrics import to_numpy, top_actions
from fusion.predictions import (
    Predictions,
    PredictionsError,
    load_predictions,
    make_predictions,
)

VERSION = "0.2"
CHALLENGES = {"recognition": "action_recognition", "anticipation": "action_anticipation"}
N_VERBS, N_NOUNS, N_ACTIONS = 97, 300, 100
SLS_FIELDS = ("sls_pt", "sls_tl", "sls_td")
RESULT_KEYS = ("verb_output", "noun_output", "narration_id")
ZIP_MEMBER = "test.json"

Task = Literal["recognition", "anticipation"]


class SubmissionError(PredictionsError):
    """A submission that the official evaluator would reject; names the segment."""


# ---------------------------------------------------------------- C1 results (.pkl/.pt)


def results_dict(preds: Predictions) -> dict[str, np.ndarray]:
    """The C1 dict layout of `preds` (scores keep their dtype; float32 from training)."""
    return {
        "verb_output": preds.verb_scores,
        "noun_output": preds.noun_scores,
        "narration_id": np.asarray(preds.narration_id, dtype=object),
    }


def write_results(preds: Predictions, path: Path) -> Path:
    """Save the C1 dict with `pickle` (.pkl) or `torch.save` (.pt), as C1's loader expects."""
    data = results_dict(preds)
    if path.suffix.lower() == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(data, f)
    elif path.suffix.lower() == ".pt":
        import torch

        torch.save(data, path)
    else:
        raise PredictionsError(f"{path}: C1 results are saved as .pkl or .pt")
    return path


def read_results(path: Path, trust_pickle: bool = False) -> Predictions:
    """Load C1 results (dict or list-of-dicts layout), fully unpickled only if trusted."""
    if path.suffix.lower() == ".pt":
        data, _ = load_torch(path, trust_pickle)
    else:
        data = load_pickle(path, trust_pickle)
    if isinstance(data, list):
        if not data or not isinstance(data[0], dict):
            raise PredictionsError(f"{path}: expected a list of per-segment dicts")
        data = {k: [row[k] for row in data] for k in data[0]}
    if not isinstance(data, dict):
        raise PredictionsError(f"{path}: expected a dict or list of dicts, got {type(data)}")
    missing = [k for k in RESULT_KEYS if k not in data]
    if missing:
        raise PredictionsError(f"{path}: missing key(s) {', '.join(missing)} of the C1 format")

    def stack(value: Any) -> np.ndarray:
        if isinstance(value, list | tuple):
            return np.stack([to_numpy(v) for v in value])
        return to_numpy(value)

    try:
        return make_predictions(
            data["narration_id"], stack(data["verb_output"]), stack(data["noun_output"])
        )
    except PredictionsError as error:
        raise PredictionsError(f"{path}: {error}") from None
    except (ValueError, TypeError) as error:  # ragged rows, scores that are not numbers
        raise PredictionsError(f"{path}: {one_line(error)}; C1 outputs are (N, classes) "
                               "numeric arrays") from None


# ---------------------------------------------------------------- challenge JSON


def _scores_dict(keys: list[str], row: list[float]) -> dict[str, float]:
    return dict(zip(keys, row, strict=True))


def make_submission(
    preds: Predictions,
    task: Task,
    sls_pt: int = 2,
    sls_tl: int = 3,
    sls_td: int = 4,
    action_count: int = N_ACTIONS,
) -> dict[str, Any]:
    """The challenge JSON as a dict; anticipation adds the `action_count` best actions.

    Actions come from the predictions' own candidates when present (best first), else from
    the verb x noun product of `fusion.metrics.top_actions`.
    """
    for name, level in zip(SLS_FIELDS, (sls_pt, sls_tl, sls_td), strict=True):
        if not 0 <= level <= 5:
            raise SubmissionError(f"{name}: {level} is not a supervision level 0..5")
    verb_keys = [str(i) for i in range(preds.verb_scores.shape[1])]
    noun_keys = [str(i) for i in range(preds.noun_scores.shape[1])]
    verbs, nouns = preds.verb_scores.tolist(), preds.noun_scores.tolist()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for nid, v, n in zip(preds.narration_id.tolist(), verbs, nouns, strict=True):
        results[nid] = {"verb": _scores_dict(verb_keys, v), "noun": _scores_dict(noun_keys, n)}
    if task == "anticipation":
        action_v, action_n, action_s = _best_actions(preds, action_count)
        for i, nid in enumerate(preds.narration_id.tolist()):
            entry = {f"{a},{b}": s for a, b, s in zip(action_v[i].tolist(), action_n[i].tolist(),
                                                      action_s[i].tolist(), strict=True)}
            if len(entry) != action_count:
                raise SubmissionError(f"segment {nid}: repeated (verb, noun) action candidates")
            results[nid]["action"] = entry
    return {"version": VERSION, "challenge": CHALLENGES[task], "sls_pt": int(sls_pt),
            "sls_tl": int(sls_tl), "sls_td": int(sls_td), "results": results}


def _best_actions(preds: Predictions, count: int) -> tuple[np.ndarray, ...]:
    if preds.actions is None:
        return top_actions(preds.verb_scores, preds.noun_scores, n=count)
    verbs, nouns, scores = preds.actions
    if scores.shape[1] < count:
        raise SubmissionError(
            f"segment {preds.narration_id[0]}: {scores.shape[1]} action candidates, the "
            f"submission needs {count}"
        )
    order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
    return tuple(np.take_along_axis(a, order, axis=1) for a in (verbs, nouns, scores))


def _class_ids(entry: Any, nid: str, task: str, count: int) -> np.ndarray:
    if not isinstance(entry, dict):
        raise SubmissionError(f"segment {nid}: '{task}' must map class ids to scores")
    try:
        ids = np.array([int(k) for k in entry], dtype=np.int64)
    except ValueError:
        bad = next(k for k in entry if not k.lstrip("-").isdigit())
        raise SubmissionError(f"segment {nid}: invalid {task} class {bad!r}") from None
    missing = np.setdiff1d(np.arange(count), ids)
    extra = np.setdiff1d(ids, np.arange(count))
    if len(missing):
        raise SubmissionError(f"segment {nid}: missing {task} scores for classes "
                              f"{', '.join(map(str, missing[:5]))} ({len(missing)} in all)")
    if len(extra) or len(ids) != count:
        raise SubmissionError(f"segment {nid}: unexpected {task} classes "
                              f"{', '.join(map(str, extra[:5]))}; expected 0..{count - 1}")
    return ids


def _check_score(value: Any, nid: str, task: str, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SubmissionError(f"segment {nid}: {task} class {key!r} score {value!r} is not a "
                              "finite number")


def validate_submission(
    submission: Any,
    task: Task | None = None,
    expected_ids: Any = None,
    n_verbs: int = N_VERBS,
    n_nouns: int = N_NOUNS,
    n_actions: int = N_ACTIONS,
) -> None:
    """Every check of C3's `validate_submission` (plus finite scores); raise naming the field.

    Version "0.2"; challenge (that of `task` when given); `sls_*` in 0..5; `results` with
    exactly `expected_ids`; per segment verb/noun scores for exactly classes 0..K-1; and,
    on all segments or none, exactly `n_actions` `"verb,noun"` action scores.
    """
    if not isinstance(submission, dict):
        raise SubmissionError("a submission is a JSON object")
    for field in ("version", "challenge", *SLS_FIELDS, "results"):
        if field not in submission:
            raise SubmissionError(f"missing '{field}' property")
    if submission["version"] != VERSION:
        raise SubmissionError(f"version {submission['version']!r} is not supported; use "
                              f"{VERSION!r}")
    challenges = [CHALLENGES[task]] if task else list(CHALLENGES.values())
    if submission["challenge"] not in challenges:
        raise SubmissionError(f"challenge {submission['challenge']!r} is not "
                              f"{' or '.join(map(repr, challenges))}")
    for field in SLS_FIELDS:
        level = submission[field]
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise SubmissionError(f"{field}: {level!r} is not a supervision level 0..5")
    results = submission["results"]
    if not isinstance(results, dict) or not results:
        raise SubmissionError("'results' must map narration ids to scores")
    if expected_ids is not None:
        make_predictions(list(results), np.zeros((len(results), 1)),
                         np.zeros((len(results), 1))).aligned(expected_ids)
    has_actions = None
    for nid, entry in results.items():
        for name, count in (("verb", n_verbs), ("noun", n_nouns)):
            if not isinstance(entry, dict) or name not in entry:
                raise SubmissionError(f"segment {nid}: missing '{name}' property")
            _class_ids(entry[name], nid, name, count)
            for key, value in entry[name].items():
                _check_score(value, nid, name, key)
        if has_actions is None:
            has_actions = "action" in entry
        if has_actions != ("action" in entry):
            raise SubmissionError(f"segment {nid}: give action scores for all segments or none")
        if has_actions:
            _check_actions(entry["action"], nid, n_verbs, n_nouns, n_actions)


def _check_actions(actions: Any, nid: str, n_verbs: int, n_nouns: int, n_actions: int) -> None:
    if not isinstance(actions, dict) or len(actions) != n_actions:
        count = len(actions) if isinstance(actions, dict) else type(actions).__name__
        raise SubmissionError(f"segment {nid}: {count} action scores; exactly {n_actions} needed")
    for key, value in actions.items():
        try:
            verb, noun = (int(x) for x in key.split(","))
        except ValueError:
            raise SubmissionError(f"segment {nid}: action key {key!r} is not 'verb,noun'") from None
        if not (0 <= verb < n_verbs and 0 <= noun < n_nouns):
            raise SubmissionError(f"segment {nid}: action key {key!r} names no verb/noun class")
        _check_score(value, nid, "action", key)


def submission_predictions(submission: dict[str, Any]) -> Predictions:
    """`Predictions` from a validated submission (its action lists kept when present)."""
    results = submission["results"]
    ids = list(results)

    def matrix(name: str) -> np.ndarray:
        first = results[ids[0]][name]
        out = np.empty((len(ids), len(first)), dtype=np.float64)
        for row, nid in enumerate(ids):
            for key, value in results[nid][name].items():
                out[row, int(key)] = value
        return out

    actions: dict[str, Any] = {}
    if "action" in results[ids[0]]:
        pairs = [[tuple(map(int, k.split(","))) for k in results[nid]["action"]] for nid in ids]
        pairs_array = np.asarray(pairs, dtype=np.int64)
        actions = {
            "action_verbs": pairs_array[..., 0],
            "action_nouns": pairs_array[..., 1],
            "action_scores": np.asarray([list(results[nid]["action"].values()) for nid in ids],
                                        dtype=np.float64),
        }
    return make_predictions(ids, matrix("verb"), matrix("noun"), **actions)


def write_submission(submission: dict[str, Any], path: Path) -> Path:
    """Plain JSON (.json) or a zip holding `test.json` (.zip), as the challenge expects."""
    text = json.dumps(submission)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as z:
            z.writestr(ZIP_MEMBER, text)
    elif path.suffix.lower() == ".json":
        path.write_text(text)
    else:
        raise SubmissionError(f"{path}: a submission is written as .json or .zip")
    return path


def read_submission(path: Path) -> dict[str, Any]:
    """The JSON object of a submission file (.json, or .zip with one JSON member)."""
    if path.stat().st_size == 0:
        raise SubmissionError(f"{path}: empty file (0 bytes); expected a challenge submission "
                              "(JSON, or a zip holding test.json); was it written completely?")
    if path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise SubmissionError(f"{path}: not a zip archive; a .zip submission holds test.json")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.endswith(".json")]
                if len(members) != 1:
                    raise SubmissionError(f"{path}: expected one .json inside, found {members}")
                return json.loads(z.read(members[0]))
        return json.loads(path.read_text(encoding="utf8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SubmissionError(f"{path}: not valid JSON ({one_line(error)}); expected a "
                              "challenge submission object") from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        if isinstance(error, OSError) and error.filename is not None:
            raise
        raise SubmissionError(f"{path}: a broken zip archive ({one_line(error)}); write it "
                              "again") from None


# ---------------------------------------------------------------- any input


def read_any(
    path: str | os.PathLike, task: Task | None = None, trust_pickle: bool = False
) -> Predictions:
    """Predictions from our `.npz`, C1 results (.pkl/.pt) or a submission (.json/.zip)."""
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_predictions(path)
    if suffix in (".pkl", ".pt"):
        return read_results(path, trust_pickle)
    if suffix in (".json", ".zip"):
        submission = read_submission(path)
        try:
            validate_submission(submission, task, n_verbs=_width(submission, "verb"),
                                n_nouns=_width(submission, "noun"),
                                n_actions=_width(submission, "action"))
        except SubmissionError as error:
            raise SubmissionError(f"{path}: {error}") from None
        return submission_predictions(submission)
    raise PredictionsError(f"{path}: unknown predictions format {suffix!r}; use .npz, .pkl, "
                           ".pt, .json or .zip")


def _width(submission: Any, name: str) -> int:
    """Class (or action) count of the first segment; every other one must match it."""
    try:
        first = next(iter(submission["results"].values()))
        return len(first.get(name, {}))
    except (KeyError, TypeError, AttributeError, StopIteration):
        return 0


# ---------------------------------------------------------------- CLI


@dataclass
class ExportConfig:
    """Write predictions in an official EK100 format (C1 results, challenge submission)."""

    predictions: Path
    """Predictions to export: .npz (ours), C1 results .pkl/.pt, or a submission .json/.zip."""
    out: Path
    """Output: .pkl/.pt for --format results; .json (plain) or .zip (test.json) for submission."""
    task: Task = "recognition"
    format: Literal["results", "submission"] = "submission"
    """results: C1 dict (recognition only); submission: challenge JSON."""
    annotations: Path | None = None
    """Segment file (e.g. EPIC_100_validation.csv or EPIC_100_test_timestamps.csv): its
    narration ids must match the predictions exactly; its folder's class files give counts."""
    verb_count: int | None = None
    """Verb classes (default: the class file beside --annotations, else 97)."""
    noun_count: int | None = None
    """Noun classes (default: the class file beside --annotations, else 300)."""
    action_count: int | None = None
    """Best actions per segment in an anticipation file (default: the challenge's 100, or
    every verb x noun pair when there are fewer, as in the synthetic demo)."""
    sls_pt: int = 2
    """Supervision level, pretraining 0..5 (C1 create_submission.py default 2)."""
    sls_tl: int = 3
    """Supervision level, training labels 0..5 (default 3)."""
    sls_td: int = 4
    """Supervision level, training data 0..5 (default 4)."""
    force: bool = False
    """Overwrite --out if it exists."""
    trust_pickle: bool = False
    """fully unpickle a C1 results .pkl/.pt --predictions file (runs its code: only for files
    you trust)"""


def _class_counts(config: ExportConfig) -> tuple[int, int]:
    from features.annotations import load_classes

    counts = []
    for name, given, default in (("verb", config.verb_count, N_VERBS),
                                 ("noun", config.noun_count, N_NOUNS)):
        table = (config.annotations.parent / f"EPIC_100_{name}_classes.csv"
                 if config.annotations else None)
        if given is None and table is not None and table.exists():
            given = len(load_classes(table))
        counts.append(default if given is None else given)
    return counts[0], counts[1]


def export(config: ExportConfig) -> Path:
    """Validate the predictions against the format, then write `config.out`."""
    if config.out.exists() and not config.force:
        raise PredictionsError(f"{config.out} exists; pass --force to overwrite it")
    preds = read_any(config.predictions, trust_pickle=config.trust_pickle)
    n_verbs, n_nouns = _class_counts(config)
    preds.validate(n_verbs, n_nouns)
    if config.annotations is not None:
        from features.annotations import load_segments

        preds = preds.aligned(load_segments(config.annotations)["narration_id"])
    config.out.parent.mkdir(parents=True, exist_ok=True)
    if config.format == "results":
        if config.task != "recognition":
            raise PredictionsError("--format results is the C1 recognition format; use "
                                   "--format submission for anticipation")
        return write_results(preds, config.out)
    actions = config.action_count or min(N_ACTIONS, n_verbs * n_nouns)
    if actions > n_verbs * n_nouns:
        raise PredictionsError(f"--action-count {actions}: only {n_verbs} x {n_nouns} verb-noun "
                               f"pairs exist; pass at most {n_verbs * n_nouns}")
    submission = make_submission(preds, config.task, config.sls_pt, config.sls_tl,
                                 config.sls_td, actions)
    validate_submission(submission, config.task, n_verbs=n_verbs, n_nouns=n_nouns,
                        n_actions=actions)
    return write_submission(submission, config.out)


def main(argv: list[str] | None = None) -> None:
    from features.config import cli

    config = cli(ExportConfig, args=argv)
    path = export(config)  # bad input: a HarnessError, one line via run_cli
    print(f"wrote {path} ({config.task} {config.format})")


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

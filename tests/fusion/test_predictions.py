"""fusion.predictions: the optional `source` record (provenance of the scores) is written
by `save_predictions`, read by `read_source`, absent (None) from older files, and ignored by
`load_predictions`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion.predictions import PredictionsError, load_predictions, read_source, save_predictions

IDS = ["P01_01_0", "P01_01_1", "P01_01_2"]


def _scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)


def test_source_round_trips_and_leaves_the_scores_alone(tmp_path: Path) -> None:
    verbs, nouns = _scores()
    source = {"run": "runs/x", "checkpoint": "best", "split": "train", "trained_on": "train",
              "in_sample": True}
    with_source = save_predictions(tmp_path / "a.npz", IDS, verbs, nouns, source=source)
    without = save_predictions(tmp_path / "b.npz", IDS, verbs, nouns)
    assert read_source(with_source) == source
    assert read_source(without) is None
    a, b = load_predictions(with_source), load_predictions(without)
    assert a.narration_id.tolist() == b.narration_id.tolist() == IDS
    np.testing.assert_array_equal(a.verb_scores, b.verb_scores)
    np.testing.assert_array_equal(a.noun_scores, b.noun_scores)
    with np.load(with_source, allow_pickle=False) as data:  # no pickling: a plain str array
        assert data["source"].dtype.kind == "U" and data["source"].shape == ()


def test_an_older_file_without_source_reads_none(tmp_path: Path) -> None:
    """A file written before `source` existed (or by hand, or by another model)."""
    verbs, nouns = _scores(1)
    path = tmp_path / "old.npz"
    np.savez(path, narration_id=np.array(IDS), verb_scores=verbs, noun_scores=nouns)
    assert read_source(path) is None
    assert load_predictions(path).narration_id.tolist() == IDS


def test_a_source_that_is_not_a_json_object_is_one_line(tmp_path: Path) -> None:
    verbs, nouns = _scores()
    for name, value in (("text", "not json {"), ("list", "[1, 2]")):
        path = tmp_path / f"{name}.npz"
        np.savez(path, narration_id=np.array(IDS), verb_scores=verbs, noun_scores=nouns,
                 source=np.asarray(value))
        with pytest.raises(PredictionsError) as error:
            read_source(path)
        message = str(error.value)
        assert str(path) in message and "not a JSON object" in message and "\n" not in message
        assert load_predictions(path).narration_id.tolist() == IDS  # the scores still read
    with pytest.raises(PredictionsError, match="missing.npz: file not found"):
        read_source(tmp_path / "missing.npz")

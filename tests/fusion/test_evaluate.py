"""python -m fusion.evaluate: JSON output, breakdown files, alignment errors, real labels."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features import errors
from fusion import evaluate as ev
from fusion.metrics import anticipation_metrics, recognition_metrics
from fusion.predictions import load_predictions, save_predictions
from tests.cli import one_error_line

HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,"
          "stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,"
          "all_nouns,all_noun_classes")
HEADLINE = {f"{t}_{m}" for t in ("verb", "noun", "action") for m in ("top1", "top5", "recall5")}


def write_fixture(root: Path, rows: int = 40, n_verbs: int = 97, n_nouns: int = 300,
                  breakdowns: bool = True, seed: int = 0) -> Path:
    """An EK100-format annotation folder: class files, `rows` labelled segments, tail and
    unseen-participant lists (P04 unseen; verbs >= 5 and nouns >= 8 are tail classes)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, count in (("verb", n_verbs), ("noun", n_nouns)):
        lines = ["id,key,instances,category"] + [
            f"{i},{name}{i},\"['{name}{i}']\",c" for i in range(count)]
        (root / f"EPIC_100_{name}_classes.csv").write_text("\n".join(lines) + "\n")
    lines = [HEADER]
    for i in range(rows):
        person = f"P0{i % 4 + 1}"
        verb, noun = int(rng.integers(0, min(8, n_verbs))), int(rng.integers(0, min(12, n_nouns)))
        lines.append(f"{person}_01_{i},{person},{person}_01,00:00:0{i % 10}.000,00:00:00.00,"
                     f"00:00:01.00,{10 * i},{10 * i + 5},do thing,verb{verb},{verb},noun{noun},"
                     f"{noun},['noun{noun}'],[{noun}]")
    (root / "EPIC_100_validation.csv").write_text("\n".join(lines) + "\n")
    if breakdowns:
        (root / "EPIC_100_tail_verbs.csv").write_text("verb\n" + "\n".join(
            str(v) for v in range(5, n_verbs)) + "\n")
        (root / "EPIC_100_tail_nouns.csv").write_text("noun\n" + "\n".join(
            str(n) for n in range(8, n_nouns)) + "\n")
        (root / "EPIC_100_unseen_participant_ids_validation.csv").write_text(
            "participant_id\nP04\n")
    return root / "EPIC_100_validation.csv"


def write_predictions(path: Path, annotations: Path, seed: int = 1, perfect: bool = False,
                      n_verbs: int = 97, n_nouns: int = 300) -> Path:
    """Scores with a boost on the true class, rows shuffled (alignment is part of the job)."""
    frame = pd.read_csv(annotations)
    rng = np.random.default_rng(seed)
    n = len(frame)
    verb = rng.normal(size=(n, n_verbs)).astype(np.float32)
    noun = rng.normal(size=(n, n_nouns)).astype(np.float32)
    boost = 100.0 if perfect else rng.uniform(0, 4, n).astype(np.float32)
    verb[np.arange(n), frame.verb_class] += boost
    noun[np.arange(n), frame.noun_class] += boost
    order = rng.permutation(n)
    return save_predictions(path, frame.narration_id.to_numpy()[order], verb[order], noun[order])


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m fusion.evaluate` in-process, behind the CLI's error boundary."""
    code = errors.run_cli(ev.main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fixture(tmp_path: Path) -> tuple[Path, Path]:
    annotations = write_fixture(tmp_path / "ann")
    return annotations, write_predictions(tmp_path / "pred.npz", annotations)


def test_json_has_every_key_as_a_fraction(fixture, capsys):
    annotations, predictions = fixture
    code, out, _ = run_cli(capsys, "--predictions", str(predictions), "--annotations",
                           str(annotations), "--task", "recognition", "--json")
    assert code == 0
    metrics = json.loads(out)
    breakdown = {f"{s}_{t}_top1" for s in ("tail", "unseen") for t in ("verb", "noun", "action")}
    assert set(metrics) == HEADLINE | breakdown
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    code, out, _ = run_cli(capsys, "--predictions", str(predictions), "--annotations",
                           str(annotations), "--task", "anticipation", "--json")
    breakdown = {f"{s}_{t}_recall5" for s in ("tail", "unseen") for t in ("verb", "noun", "action")}
    assert set(json.loads(out)) == HEADLINE | breakdown


def test_equals_the_python_api(fixture):
    annotations, predictions = fixture
    frame = pd.read_csv(annotations).set_index("narration_id")
    preds = load_predictions(predictions)
    labels = frame.loc[preds.narration_id]
    kwargs = dict(participant_ids=labels.participant_id, unseen_participants=["P04"],
                  tail_verbs=range(5, 97), tail_nouns=range(8, 300))
    config = ev.EvaluateConfig(predictions=predictions, annotations=annotations)
    assert ev.run(config)[0] == recognition_metrics(
        preds.verb_scores, preds.noun_scores, labels.verb_class, labels.noun_class, **kwargs)
    config.task = "anticipation"
    assert ev.run(config)[0] == anticipation_metrics(
        preds.verb_scores, preds.noun_scores, labels.verb_class, labels.noun_class, **kwargs)


def test_perfect_scores_give_one(tmp_path, capsys):
    annotations = write_fixture(tmp_path / "ann", n_verbs=6, n_nouns=15)
    predictions = write_predictions(tmp_path / "p.npz", annotations, perfect=True, n_verbs=6,
                                    n_nouns=15)
    code, out, _ = run_cli(capsys, "--predictions", str(predictions), "--annotations",
                           str(annotations), "--json")
    assert code == 0 and set(json.loads(out).values()) == {1.0}


def test_missing_and_extra_rows_are_named(fixture, tmp_path, capsys):
    annotations, predictions = fixture
    preds = load_predictions(predictions)
    keep = np.argsort(preds.narration_id)[7:]  # drop 7 segments
    ids = np.concatenate([preds.narration_id[keep], ["X_1", "X_2"]])
    pad = np.zeros((2, 97), np.float32), np.zeros((2, 300), np.float32)
    save_predictions(tmp_path / "bad.npz", ids, np.concatenate([preds.verb_scores[keep], pad[0]]),
                     np.concatenate([preds.noun_scores[keep], pad[1]]))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "bad.npz"), "--annotations",
                           str(annotations), "--json")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "7 segment(s) missing from the predictions: P01_01_0, " in err
    assert ", ..." in err and "2 extra segment(s) not in the annotations: X_1, X_2" in err


def test_wrong_class_count_and_missing_files(fixture, tmp_path, capsys):
    annotations, _ = fixture
    frame = pd.read_csv(annotations)
    save_predictions(tmp_path / "narrow.npz", frame.narration_id, np.zeros((40, 96)),
                     np.zeros((40, 300)))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "narrow.npz"),
                           "--annotations", str(annotations))
    assert code == 2 and "verb_scores: 96 classes per segment, expected 97" in err
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "none.npz"),
                           "--annotations", str(annotations))
    assert code == 2 and "none.npz: file not found" in err
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "narrow.npz"),
                           "--annotations", str(annotations), "--tail-verbs",
                           str(tmp_path / "absent.csv"))
    assert code == 2 and "absent.csv: file not found" in err


def test_breakdowns_left_out_without_their_files(tmp_path, capsys):
    annotations = write_fixture(tmp_path / "ann", breakdowns=False)
    predictions = write_predictions(tmp_path / "p.npz", annotations)
    code, out, err = run_cli(capsys, "--predictions", str(predictions), "--annotations",
                             str(annotations), "--json", "--task", "anticipation")
    assert code == 0 and set(json.loads(out)) == HEADLINE
    assert "tail-class breakdown left out" in err and "unseen-participant" in err


def test_bad_npz_content(tmp_path, fixture, capsys):
    annotations, _ = fixture
    np.savez(tmp_path / "odd.npz", narration_id=np.array(["a"]), verb=np.zeros((1, 97)))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "odd.npz"), "--annotations",
                           str(annotations))
    assert code == 2 and "missing array(s) verb_scores, noun_scores" in err
    verb = np.zeros((40, 97))
    verb[5, 3] = np.inf
    ids = pd.read_csv(annotations).narration_id
    np.savez(tmp_path / "obj.npz", narration_id=ids.to_numpy(dtype=object), verb_scores=verb,
             noun_scores=np.zeros((40, 300)))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "obj.npz"), "--annotations",
                           str(annotations))
    assert code == 2 and "store narration_id as a str array" in err
    np.savez(tmp_path / "inf.npz", narration_id=ids.to_numpy(dtype=str), verb_scores=verb,
             noun_scores=np.zeros((40, 300)))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "inf.npz"), "--annotations",
                           str(annotations))
    assert code == 2 and f"segment {ids[5]}: class 3 score is inf" in err


def test_real_validation_cli_equals_api(ek100_root: Path, tmp_path: Path, capsys):
    annotations = ek100_root / "EPIC_100_validation.csv"
    predictions = write_predictions(tmp_path / "val.npz", annotations)
    code, out, _ = run_cli(capsys, "--predictions", str(predictions), "--annotations",
                           str(annotations), "--task", "anticipation", "--json")
    assert code == 0
    frame = pd.read_csv(annotations).set_index("narration_id")
    preds = load_predictions(predictions)
    labels = frame.loc[preds.narration_id]
    tails = [pd.read_csv(ek100_root / f"EPIC_100_tail_{n}s.csv")[n] for n in ("verb", "noun")]
    unseen = pd.read_csv(ek100_root / "EPIC_100_unseen_participant_ids_validation.csv")
    expected = anticipation_metrics(
        preds.verb_scores, preds.noun_scores, labels.verb_class, labels.noun_class,
        participant_ids=labels.participant_id, unseen_participants=unseen.participant_id,
        tail_verbs=tails[0], tail_nouns=tails[1])
    assert json.loads(out) == pytest.approx(expected, abs=1e-15)
    assert len(json.loads(out)) == 15


REPO = Path(__file__).resolve().parents[2]


def evaluate_cli(predictions: Path, annotations: Path, *extra: str) -> subprocess.CompletedProcess:
    """The real `python -m fusion.evaluate` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "fusion.evaluate", "--predictions", str(predictions),
         "--annotations", str(annotations), "--json", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


class Payload:
    """Unpickling this creates `path`: a harmless stand-in for code in a downloaded file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def c1_results(predictions: Path, **extra: object) -> dict:
    preds = load_predictions(predictions)
    return {"verb_output": preds.verb_scores, "noun_output": preds.noun_scores,
            "narration_id": list(preds.narration_id), **extra}


def save_c1(path: Path, data: object) -> Path:
    if path.suffix == ".pt":
        torch.save(data, path)
    else:
        path.write_bytes(pickle.dumps(data))
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_cli_c1_results_payload_is_refused_and_does_not_run(fixture, tmp_path, suffix):
    annotations, predictions = fixture
    marker = tmp_path / "ran"
    path = save_c1(tmp_path / f"evil{suffix}", c1_results(predictions, hook=Payload(marker)))
    line = one_error_line(evaluate_cli(path, annotations))
    assert f"{path}: refused to unpickle global" in line and "--trust-pickle" in line
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_cli_c1_results_load_safely_or_with_trust_pickle(fixture, tmp_path, suffix):
    annotations, predictions = fixture
    expected = ev.run(ev.EvaluateConfig(predictions=predictions, annotations=annotations))[0]
    plain = save_c1(tmp_path / f"plain{suffix}", c1_results(predictions))
    result = evaluate_cli(plain, annotations)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert json.loads(result.stdout) == expected
    # legitimate but outside the allow-list: a pickled torch tensor, a pathlib path
    odd = {".pkl": torch.zeros(1), ".pt": Path("model.ckpt")}[suffix]
    trusted = save_c1(tmp_path / f"trusted{suffix}", c1_results(predictions, source=odd))
    assert "--trust-pickle" in one_error_line(evaluate_cli(trusted, annotations))
    result = evaluate_cli(trusted, annotations, "--trust-pickle")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(trusted) in warnings[0]
    assert json.loads(result.stdout) == expected


def test_cli_garbage_npz_is_one_line(fixture, tmp_path):
    annotations, _ = fixture
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"these are not the arrays you are looking for\x00\x01")
    line = one_error_line(evaluate_cli(path, annotations))
    assert f"{path}: not a .npz (zip) archive" in line


def test_cli_empty_json_is_one_line(fixture, tmp_path):
    annotations, _ = fixture
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    line = one_error_line(evaluate_cli(path, annotations))
    assert f"{path}: empty file (0 bytes)" in line


BAD_FILES = {"empty": b"", "garbage": b"\x80\x04not really anything\x00\xff" * 4}


@pytest.mark.parametrize("suffix", [".npz", ".pkl", ".pt", ".json", ".zip"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_empty_or_garbage_predictions_are_one_line(fixture, tmp_path, capsys, kind, suffix):
    annotations, _ = fixture
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(BAD_FILES[kind])
    code, _, err = run_cli(capsys, "--predictions", str(path), "--annotations",
                           str(annotations))
    assert code == 2 and err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert ("empty file (0 bytes)" in err) == (kind == "empty")
    assert "--trust-pickle" not in err  # a broken file is not made loadable by trusting it

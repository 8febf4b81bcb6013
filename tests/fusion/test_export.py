"""python -m fusion.export: official C1/C3 formats, schema checks, round trips, bad inputs."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from features import errors
from fusion import evaluate as ev
from fusion import export as ex
from fusion.metrics import top_actions
from fusion.predictions import PredictionsError, load_predictions, save_predictions
from tests.fusion.test_evaluate import (
    BAD_FILES,
    Payload,
    c1_results,
    save_c1,
    write_fixture,
    write_predictions,
)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    annotations = write_fixture(tmp_path / "ann")
    return annotations, write_predictions(tmp_path / "pred.npz", annotations)


def export(*args: str) -> Path:
    ex.main(list(args))
    return Path(args[args.index("--out") + 1])


def scores(predictions: Path, annotations: Path, task: str) -> dict[str, float]:
    return ev.run(ev.EvaluateConfig(predictions=predictions, annotations=annotations,
                                    task=task))[0]


@pytest.mark.parametrize(("task", "fmt", "suffix"), [
    ("recognition", "results", ".pkl"), ("recognition", "results", ".pt"),
    ("recognition", "submission", ".zip"), ("recognition", "submission", ".json"),
    ("anticipation", "submission", ".json"), ("anticipation", "submission", ".zip"),
])
def test_round_trip_gives_identical_numbers(setup, tmp_path, task, fmt, suffix, capsys):
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--task", task, "--format", fmt,
                 "--annotations", str(annotations), "--out", str(tmp_path / f"x{suffix}"))
    assert "wrote" in capsys.readouterr().out
    assert scores(out, annotations, task) == scores(predictions, annotations, task)


def test_c1_results_layout(setup, tmp_path):
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--format", "results", "--annotations",
                 str(annotations), "--out", str(tmp_path / "r.pkl"))
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"verb_output", "noun_output", "narration_id"}
    assert data["verb_output"].shape == (40, 97) and data["noun_output"].shape == (40, 300)
    assert data["verb_output"].dtype == np.float32 and data["narration_id"].shape == (40,)
    preds = load_predictions(predictions)  # rows follow the annotation file's order
    order = [list(preds.narration_id).index(i) for i in data["narration_id"]]
    assert np.array_equal(data["verb_output"], preds.verb_scores[order])
    pt = torch.load(export("--predictions", str(out), "--format", "results", "--out",
                           str(tmp_path / "r.pt")), weights_only=False)
    assert np.array_equal(pt["noun_output"], data["noun_output"])


def test_list_layout_is_read(setup, tmp_path):
    annotations, predictions = setup
    preds = load_predictions(predictions)
    rows = [{"verb_output": v, "noun_output": n, "narration_id": i}
            for v, n, i in zip(preds.verb_scores, preds.noun_scores, preds.narration_id,
                               strict=True)]
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump(rows, f)
    assert scores(tmp_path / "list.pkl", annotations, "recognition") == scores(
        predictions, annotations, "recognition")


def test_recognition_submission_schema(setup, tmp_path):
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--annotations", str(annotations),
                 "--sls-pt", "1", "--out", str(tmp_path / "s.zip"))
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["test.json"]
        sub = json.loads(z.read("test.json"))
    assert list(sub) == ["version", "challenge", "sls_pt", "sls_tl", "sls_td", "results"]
    assert (sub["version"], sub["challenge"]) == ("0.2", "action_recognition")
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (1, 3, 4)
    preds = load_predictions(predictions)
    assert set(sub["results"]) == set(preds.narration_id)
    entry = sub["results"][preds.narration_id[0]]
    assert list(entry) == ["verb", "noun"]
    assert list(entry["verb"]) == [str(i) for i in range(97)]
    assert list(entry["noun"]) == [str(i) for i in range(300)]
    assert entry["verb"]["5"] == float(preds.verb_scores[0, 5])
    ex.validate_submission(sub, "recognition", expected_ids=preds.narration_id)


def test_anticipation_submission_schema(setup, tmp_path):
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--task", "anticipation", "--annotations",
                 str(annotations), "--out", str(tmp_path / "a.json"))
    sub = json.loads(out.read_text())
    assert sub["challenge"] == "action_anticipation" and sub["version"] == "0.2"
    preds = load_predictions(predictions)
    ex.validate_submission(sub, "anticipation", expected_ids=preds.narration_id)
    verbs, nouns, best = top_actions(preds.verb_scores[:1], preds.noun_scores[:1])
    actions = sub["results"][preds.narration_id[0]]["action"]
    assert list(actions) == [f"{v},{n}" for v, n in zip(verbs[0], nouns[0], strict=True)]
    assert list(actions.values()) == best[0].tolist()
    assert all(len(e["action"]) == 100 for e in sub["results"].values())


def _submission(task: str = "anticipation") -> dict:
    rng = np.random.default_rng(0)
    preds = ex.make_predictions(["a", "b"], rng.normal(size=(2, 97)), rng.normal(size=(2, 300)))
    return ex.make_submission(preds, task)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("version"), "missing 'version' property"),
    (lambda s: s.update(version="0.1"), "version '0.1' is not supported"),
    (lambda s: s.update(challenge="action_recognition"), "challenge 'action_recognition'"),
    (lambda s: s.update(sls_td=6), "sls_td: 6 is not a supervision level"),
    (lambda s: s["results"]["a"]["verb"].pop("96"), "segment a: missing verb scores for class"),
    (lambda s: s["results"]["b"]["noun"].update({"300": 1.0}), "unexpected noun classes 300"),
    (lambda s: s["results"]["a"]["noun"].update({"x": 1.0}), "invalid noun class 'x'"),
    (lambda s: s["results"]["a"]["verb"].update({"3": "high"}), "verb class '3' score 'high'"),
    (lambda s: s["results"]["a"]["verb"].update({"3": float("nan")}), "score nan"),
    (lambda s: s["results"]["b"]["action"].popitem(), "segment b: 99 action scores"),
    (lambda s: s["results"]["b"].pop("action"), "segment b: give action scores for all"),
    (lambda s: s["results"]["a"]["action"].update({"97,1": 0.0}), "101 action scores"),
    (lambda s: s["results"].pop("b"), "1 segment(s) missing from the predictions: b"),
])
def test_validation_names_the_problem(change, message):
    sub = _submission()
    change(sub)
    with pytest.raises(PredictionsError, match=re.escape(message)):
        ex.validate_submission(sub, "anticipation", expected_ids=["a", "b"])


def test_bad_action_key():
    sub = _submission()
    actions = sub["results"]["a"]["action"]
    actions["97,1"] = actions.pop(next(iter(actions)))
    with pytest.raises(PredictionsError, match="action key '97,1' names no verb/noun class"):
        ex.validate_submission(sub)
    actions["7-1"] = actions.pop("97,1")
    with pytest.raises(PredictionsError, match="action key '7-1' is not 'verb,noun'"):
        ex.validate_submission(sub)


def test_export_refuses_bad_inputs(setup, tmp_path, capsys):
    annotations, predictions = setup
    preds = load_predictions(predictions)

    def fails(*args: str) -> str:
        assert errors.run_cli(ex.main, list(args)) == 2
        return capsys.readouterr().err

    verb = preds.verb_scores.copy()
    verb[3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", narration_id=preds.narration_id, verb_scores=verb,
             noun_scores=preds.noun_scores)
    err = fails("--predictions", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "o.json"))
    assert f"segment {preds.narration_id[3]}: class 2 score is nan" in err
    save_predictions(tmp_path / "short.npz", preds.narration_id[1:], preds.verb_scores[1:],
                     preds.noun_scores[1:])
    err = fails("--predictions", str(tmp_path / "short.npz"), "--annotations", str(annotations),
                "--out", str(tmp_path / "o.json"))
    assert f"1 segment(s) missing from the predictions: {preds.narration_id[0]}" in err
    save_predictions(tmp_path / "wide.npz", preds.narration_id, preds.verb_scores,
                     np.zeros((40, 301)))
    err = fails("--predictions", str(tmp_path / "wide.npz"), "--out", str(tmp_path / "o.json"))
    assert "noun_scores: 301 classes per segment, expected 300" in err
    err = fails("--predictions", str(predictions), "--task", "anticipation", "--format",
                "results", "--out", str(tmp_path / "o.pkl"))
    assert "use --format submission for anticipation" in err
    err = fails("--predictions", str(predictions), "--sls-tl", "7", "--out",
                str(tmp_path / "o.json"))
    assert "sls_tl: 7 is not a supervision level 0..5" in err
    err = fails("--predictions", str(predictions), "--out", str(tmp_path / "o.txt"))
    assert "written as .json or .zip" in err
    (tmp_path / "there.json").write_text("{}")
    err = fails("--predictions", str(predictions), "--out", str(tmp_path / "there.json"))
    assert "exists; pass --force" in err


def test_evaluate_rejects_a_submission_for_the_other_task(setup, tmp_path, capsys):
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--out", str(tmp_path / "rec.json"))
    assert errors.run_cli(ev.main, ["--predictions", str(out), "--annotations",
                                    str(annotations), "--task", "anticipation"]) == 2
    assert "challenge 'action_recognition' is not 'action_anticipation'" in capsys.readouterr().err


def test_submission_actions_are_used_as_given(setup, tmp_path):
    """Files from other codebases (e.g. RULSTM's action head) keep their own action scores."""
    annotations, predictions = setup
    out = export("--predictions", str(predictions), "--task", "anticipation", "--annotations",
                 str(annotations), "--out", str(tmp_path / "a.json"))
    sub = json.loads(out.read_text())
    for entry in sub["results"].values():  # one action list that never holds the truth
        entry["action"] = {f"{v},299": 1.0 - v / 100 for v in range(97)} | {
            f"0,{n}": 0.0 for n in range(200, 203)}
    out.write_text(json.dumps(sub))
    metrics = scores(out, annotations, "anticipation")
    assert metrics["action_recall5"] == 0.0 and metrics["verb_recall5"] > 0
    reread = ex.read_any(out)
    assert reread.action_scores.shape == (40, 100)
    save_predictions(tmp_path / "with_actions.npz", reread)
    assert scores(tmp_path / "with_actions.npz", annotations, "anticipation") == metrics


@pytest.mark.parametrize("task", ["recognition", "anticipation"])
def test_round_trip_with_tied_scores(setup, tmp_path, task):
    """Scores on a coarse grid tie a lot; the exported file must still score identically."""
    annotations, predictions = setup
    preds = load_predictions(predictions)
    save_predictions(tmp_path / "ties.npz", preds.narration_id, np.round(preds.verb_scores),
                     np.round(preds.noun_scores))
    out = export("--predictions", str(tmp_path / "ties.npz"), "--task", task, "--annotations",
                 str(annotations), "--out", str(tmp_path / "t.json"))
    assert scores(out, annotations, task) == scores(tmp_path / "ties.npz", annotations, task)


@pytest.mark.parametrize("suffix", [".npz", ".pkl", ".pt", ".json", ".zip"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_export_empty_or_garbage_predictions_are_one_line(tmp_path, capsys, kind, suffix):
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(BAD_FILES[kind])
    assert errors.run_cli(ex.main, ["--predictions", str(path), "--out",
                                    str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert ("empty file (0 bytes)" in err) == (kind == "empty")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_export_refuses_a_c1_payload_and_trusts_on_request(setup, tmp_path, capsys, suffix):
    annotations, predictions = setup
    marker = tmp_path / "ran"
    path = save_c1(tmp_path / f"evil{suffix}", c1_results(predictions, hook=Payload(marker)))
    out = tmp_path / "o.json"
    assert errors.run_cli(ex.main, ["--predictions", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: refused to unpickle global" in err and "--trust-pickle" in err
    assert not marker.exists() and not out.exists()
    assert errors.run_cli(ex.main, ["--predictions", str(path), "--out", str(out),
                                    "--trust-pickle"]) == 0
    assert marker.exists() and out.exists()  # the flag means it: only for files you trust
    assert capsys.readouterr().err.startswith(f"warning: {path}: refused")
    assert scores(out, annotations, "recognition") == scores(predictions, annotations,
                                                             "recognition")


def test_anticipation_actions_are_at_most_the_verb_noun_pairs(tmp_path, capsys):
    """Fewer than 100 verb x noun pairs (the synthetic demo's 4 x 5): every pair is an action
    by default; asking for more is one error line, not a traceback."""
    ids = np.array(["a_0", "a_1", "a_2"])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", narration_id=ids, verb_scores=rng.normal(size=(3, 4)),
             noun_scores=rng.normal(size=(3, 5)))
    common = ("--predictions", str(tmp_path / "p.npz"), "--task", "anticipation",
              "--verb-count", "4", "--noun-count", "5")
    out = export(*common, "--out", str(tmp_path / "a.json"))
    sub = json.loads(out.read_text())
    ex.validate_submission(sub, "anticipation", n_verbs=4, n_nouns=5, n_actions=20,
                           expected_ids=ids)
    assert errors.run_cli(ex.main, [*common, "--action-count", "21", "--out",
                                    str(tmp_path / "b.json")]) == 2
    assert "--action-count 21: only 4 x 5 verb-noun pairs" in capsys.readouterr().err

"""The information-sources table: video alone, questions alone, both, the audit's text probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from extract.audit import PROBE_KEYS
from reports.tables import (
    NO_AUDIT,
    AuditFileError,
    Missing,
    build_tables,
    load_audit,
    load_runs,
    main,
    sources_table,
    to_csv,
    to_latex,
    to_markdown,
)
from tests.cli import one_error_line
from tests.reports.test_tables import EXPERIMENT, log_run, rows

ROOT = Path(__file__).resolve().parents[2]
AUDIT = {"train": "q/train-template-paper.jsonl", "eval": "q/validation-template-paper.jsonl",
         "train_pairs": 96, "eval_pairs": 40, "probe_verb_top1": 0.35, "probe_noun_top1": 0.25,
         "probe_verb_from_verb_question_top1": 0.3, "probe_noun_from_noun_question_top1": 0.2,
         "majority_verb_top1": 0.3, "majority_noun_top1": 0.05}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Mamba runs on each source (clean), a paper-protocol run with both, an MLP video run."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("sources")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    # log_run logs best verb = best + 0.2, noun = best + 0.1, action = best
    ids = {features: log_run(client, exp, fusion="mamba", backbone="demo", features=features,
                             best=best, start=i)
           for i, (features, best) in enumerate((("video", 0.20), ("questions", 0.30),
                                                 ("video+questions", 0.40)))}
    ids["paper"] = log_run(client, exp, fusion="mamba", backbone="demo", best=0.38, start=5,
                           extra_tags={"protocol": "paper"})
    ids["mlp_video"] = log_run(client, exp, fusion="mlp", backbone="demo", features="video",
                               best=0.9, start=6)  # another head: never the Mamba row
    audit = root / "audit.json"
    audit.write_text(json.dumps(AUDIT))
    return {"uri": uri, "ids": ids, "root": root, "audit": audit}


def test_rows_and_gains_per_protocol(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    table = sources_table(runs, "best", audit=load_audit(store["audit"]))
    # one block of five rows per protocol, in the protocols' order: paper, then clean
    assert len(table.rows) == 10
    paper, clean = table.rows[:5], table.rows[5:]
    assert [r["source"] for r in clean] == ["video alone", "questions alone", "video + questions",
                                            "text probe (both questions)", "majority class"]
    video, questions, both, probe, majority = clean
    ids = store["ids"]
    assert video["run"].startswith(ids["video"]) and questions["run"].startswith(ids["questions"])
    assert both["run"].startswith(ids["video+questions"]) and both["protocol"] == "clean"
    assert (both["verb_top1"], both["noun_top1"], both["action_top1"]) == pytest.approx(
        (60.0, 50.0, 40.0))
    assert (video["verb_top1_gain"], video["action_top1_gain"]) == pytest.approx((20.0, 20.0))
    assert (questions["noun_top1_gain"], questions["action_top1_gain"]) == pytest.approx(
        (10.0, 10.0))
    assert both["verb_top1_gain"] is None  # no gain of a row over itself
    assert (probe["verb_top1"], probe["noun_top1"]) == pytest.approx((35.0, 25.0))
    assert (probe["verb_top1_gain"], probe["noun_top1_gain"]) == pytest.approx((25.0, 25.0))
    assert "no action" in probe["action_top1"].reason
    assert probe["action_top1_gain"] is probe["action_top1"]
    assert (majority["verb_top1"], majority["noun_top1"]) == pytest.approx((30.0, 5.0))
    assert str(store["audit"]) in probe["run"].reason
    # the paper block: both found, the single sources not trained under paper
    assert paper[2]["run"].startswith(ids["paper"]) and paper[2]["protocol"] == "paper"
    assert paper[2]["verb_top1"] == pytest.approx(58.0)
    assert paper[3]["verb_top1_gain"] == pytest.approx(58.0 - 35.0)
    missing = paper[0]["verb_top1"]
    assert isinstance(missing, Missing) and "features=video" in missing.reason
    assert "protocol=paper" in missing.reason and paper[0]["verb_top1_gain"] is missing
    text = to_markdown(table)
    assert "| AVION ViT-L" not in text and "|  | clean | video alone <sup>[" in text
    assert "| 40.0 | 30.0 | 20.0 | +20.0 |" in text  # video alone: top-1 then both − this
    assert "+20.0" in text and ids["video"] in to_csv(table) and ids["video"][:8] in \
        to_latex(table)


def test_caption_names_dataset_protocol_and_audit(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    table = build_tables(runs, "best", audit=load_audit(store["audit"]))[-1]
    assert table.name == "sources"
    for words in ("synthetic-demo", "NOT EK100", "frozen features",
                  "Protocol of our runs: paper, clean", "q/validation-template-paper.jsonl",
                  "(40 pairs)", "label leakage"):
        assert words in table.caption, words


def test_without_an_audit_the_probe_rows_say_how_to_make_one(store: dict) -> None:
    runs, _ = load_runs(store["uri"], EXPERIMENT)
    table = sources_table(runs, "best")
    probe = rows(table, source="text probe (both questions)")[0]
    assert probe["verb_top1"].reason == NO_AUDIT and "--audit" in NO_AUDIT
    assert "extract.questions audit" in to_markdown(table)
    assert rows(table, source="video alone")[1]["verb_top1_gain"] == pytest.approx(20.0)  # clean


def test_cli_writes_the_sources_table_and_page(store: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main(["--tracking-uri", store["uri"], "--out", str(out), "--audit", str(store["audit"]),
          "--benchmark", str(tmp_path / "absent.json")])
    for suffix in ("md", "tex", "csv"):
        assert (out / f"sources.{suffix}").stat().st_size > 0
    assert "Information sources" in (out / "tables.md").read_text()
    page = (out / "index.html").read_text()
    assert 'id="sources"' in page and "text probe (both questions)" in page


@pytest.mark.parametrize("content, words", [
    ("{not json", "not JSON"),
    (json.dumps({k: v for k, v in AUDIT.items() if k != "probe_noun_top1"}), "probe_noun_top1"),
    (json.dumps({**AUDIT, "majority_verb_top1": True}), "majority_verb_top1"),
    (json.dumps({**AUDIT, "probe_verb_top1": 35.0}), "probe_verb_top1"),  # a % is no fraction
    (json.dumps([AUDIT]), "not a JSON object"),
])
def test_bad_audit_files_are_refused_naming_the_file(tmp_path: Path, content: str,
                                                     words: str) -> None:
    path = tmp_path / "audit.json"
    path.write_text(content)
    with pytest.raises(AuditFileError, match=words) as caught:
        load_audit(path)
    assert str(path) in str(caught.value) and "extract.questions audit" in str(caught.value)
    assert set(PROBE_KEYS) <= set(AUDIT)  # the test's good audit has every key the audit writes


def test_cli_bad_audit_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "audit.json").write_text('{"probe_verb_top1": 0.3}')
    for name in ("audit.json", "absent.json"):
        result = subprocess.run(
            [sys.executable, "-m", "reports.tables", "--audit", str(tmp_path / name),
             "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out",
             str(tmp_path / "out"), "--no-html"], capture_output=True, text=True, cwd=ROOT)
        assert str(tmp_path / name) in one_error_line(result)
    assert not (tmp_path / "out").exists()  # refused before any table is written


def test_anticipation_sources_table(tmp_path: Path) -> None:
    """Anticipation's own table: recall@5 of each source, no probe rows (its questions come
    from predictions, not labels); built only when single-source anticipation runs exist."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    log_run(client, exp, fusion="mamba", backbone="demo", task="anticipation", best=0.3)
    runs, _ = load_runs(uri, EXPERIMENT)
    assert [t.name for t in build_tables(runs, "best")][-1] == "sources"  # no single source
    # log_run logs best recall@5: verb = best + 0.1, noun = best + 0.05, action = best
    for i, (features, best) in enumerate((("video", 0.10), ("questions", 0.20))):
        log_run(client, exp, fusion="mamba", backbone="demo", task="anticipation",
                features=features, best=best, start=i + 1)
    runs, _ = load_runs(uri, EXPERIMENT)
    table = build_tables(runs, "best")[-1]
    assert table.name == "sources_anticipation" and "recall@5" in table.title
    assert [r["source"] for r in table.rows] == ["video alone", "questions alone",
                                                 "video + questions"]
    video, questions, both = table.rows
    assert (both["verb_recall5"], both["action_recall5"]) == pytest.approx((40.0, 30.0))
    assert (video["action_recall5_gain"], questions["noun_recall5_gain"]) == pytest.approx(
        (20.0, 10.0))
    assert "never from the labels to anticipate" in table.caption
    assert "| 10.0 | +20.0 |" in to_markdown(table)

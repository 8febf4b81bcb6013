from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract.masking import content_words, leaks
from extract.questions import (
    NEXT_NOUN_TEMPLATES,
    NEXT_VERB_TEMPLATES,
    NOUN_TEMPLATES,
    VERB_TEMPLATES,
    QuestionsConfig,
    generate,
    read_questions,
)
from features.annotations import load_classes
from fusion.predictions import save_predictions
from tests.cli import one_error_line
from tests.conftest import HEADER, SEGMENTS

FIELDS = {"narration_id", "verb_question", "noun_question", "verb", "noun", "verb_class",
          "noun_class", "generator", "mask"}


def _run(annotations: Path, out: Path, **kw: object) -> dict[str, int]:
    return generate(QuestionsConfig(annotations=annotations, out=out, **kw))


def test_jsonl_fields_and_determinism(tiny_ek100: Path, tmp_path: Path) -> None:
    csv = tiny_ek100 / "EPIC_100_validation.csv"
    _run(csv, tmp_path / "a.jsonl", seed=3)
    _run(csv, tmp_path / "b.jsonl", seed=3)
    _run(csv, tmp_path / "c.jsonl", seed=4)
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text() != (tmp_path / "c.jsonl").read_text()
    records = [json.loads(line) for line in a.splitlines()]
    assert len(records) == 6 and all(set(r) == FIELDS for r in records)
    assert records[2]["noun_class"] == 0 and records[2]["generator"] == "template"


def test_paper_mask_hides_the_other_label(tiny_ek100: Path, tmp_path: Path) -> None:
    audit = _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="paper")
    assert audit["verb_question_leaks_noun"] == audit["noun_question_leaks_verb"] == 0
    questions = read_questions(tmp_path / "q.jsonl")
    assert questions["verb_question"].str.contains("<mask>").all()


def test_strict_mask_leaves_no_label_word(tiny_ek100: Path, tmp_path: Path) -> None:
    audit = _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="strict")
    assert sum(v for k, v in audit.items() if "leaks" in k) == 0


CATEGORIES = {"retrieve", "leave", "access", "appliances", "cutlery", "crockery", "furniture"}


def test_strict_mask_hides_categories_paper_keeps_them(tiny_ek100: Path, tmp_path: Path) -> None:
    """The templates name the labels' categories; only `strict` hides them (issue 16)."""
    named = {}
    for mask in ("paper", "strict"):
        audit = _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / f"{mask}.jsonl",
                     mask=mask, seed=1)
        text = (tmp_path / f"{mask}.jsonl").read_text()
        named[mask] = {w for w in CATEGORIES if w in text}
        leaked = sum(v for k, v in audit.items() if k.endswith("_category"))
        assert leaked == (0 if mask == "strict" else len(re.findall("|".join(CATEGORIES), text)))
    assert named["paper"] and not named["strict"]


def test_none_mask_keeps_labels(tiny_ek100: Path, tmp_path: Path) -> None:
    audit = _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="none")
    assert audit["verb_question_leaks_noun"] > 0


def open_the_knife(path: Path) -> None:
    """Predictions of the validation clips: every clip "open" (verb 2) the "knife" (noun 1)."""
    ids = [f"P01_01_{i}" for i in range(4)] + ["P02_01_0", "P02_01_1"]
    verb_scores, noun_scores = np.zeros((6, 3), np.float32), np.zeros((6, 4), np.float32)
    verb_scores[:, 2], noun_scores[:, 1] = 1, 1
    np.savez(path, narration_id=np.array(ids), verb_scores=verb_scores, noun_scores=noun_scores)


def test_predictions_generator_uses_predicted_classes(tiny_ek100: Path, tmp_path: Path) -> None:
    open_the_knife(tmp_path / "p.npz")
    _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="none",
         generator="predictions", predictions=tmp_path / "p.npz")
    questions = read_questions(tmp_path / "q.jsonl")
    assert (questions["verb_class"] == 2).all() and (questions["noun_class"] == 1).all()
    assert questions["noun_question"].str.contains("open").all()
    assert questions["verb_question"].str.contains("knife").all()


@pytest.mark.parametrize("generator", ["predictions", "recognized"])
def test_records_say_whether_the_predictions_are_in_sample(
    tiny_ek100: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], generator: str
) -> None:
    """`predictions_in_sample` comes from the file's `source` (`fusion.predict` writes it):
    true (with a note), false (no note), null for a file that does not say (with a note);
    the questions themselves do not change."""
    open_the_knife(tmp_path / "old.npz")  # no source: another model's file, or an older one
    with np.load(tmp_path / "old.npz") as data:
        arrays = {k: data[k] for k in data.files}
    texts, notes = {}, {}
    for in_sample in (True, False, None):
        predictions = tmp_path / f"{in_sample}.npz"
        if in_sample is None:
            predictions = tmp_path / "old.npz"
        else:
            save_predictions(predictions, arrays["narration_id"], arrays["verb_scores"],
                             arrays["noun_scores"], source={"run": "runs/src", "split": "train",
                                                            "in_sample": in_sample})
        out = tmp_path / f"{in_sample}.jsonl"
        _run(tiny_ek100 / "EPIC_100_validation.csv", out, generator=generator,
             predictions=predictions)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 6 and all(set(r) == FIELDS | {"predictions_in_sample"}
                                         for r in records)
        assert all(r["predictions_in_sample"] is in_sample for r in records)
        texts[in_sample] = [(r["verb_question"], r["noun_question"]) for r in records]
        notes[in_sample] = [line for line in capsys.readouterr().err.splitlines()
                            if "predictions_in_sample" in line]
    assert texts[True] == texts[False] == texts[None]
    assert len(notes[True]) == 1 and "in-sample" in notes[True][0] and "runs/src" in notes[True][0]
    assert notes[False] == []
    assert len(notes[None]) == 1 and "does not record" in notes[None][0]


def test_anticipation_questions_ignore_the_labels_to_anticipate(
    tiny_ek100: Path, tmp_path: Path
) -> None:
    """Anticipation questions come from the observed clip's predictions: other target labels
    in the annotation rows must leave them unchanged."""
    ids = [f"P01_01_{i}" for i in range(4)] + ["P02_01_0", "P02_01_1"]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", narration_id=np.array(ids),
             verb_scores=rng.random((6, 3)), noun_scores=rng.random((6, 4)))
    csv = tiny_ek100 / "EPIC_100_validation.csv"
    changed = [_relabel(r) for r in SEGMENTS]
    assert all(a.split(",")[10] != b.split(",")[10] for a, b in zip(SEGMENTS, changed, strict=True))
    outputs: dict[str, list[str]] = {"predictions": [], "template": []}
    for name, rows in (("original", SEGMENTS), ("changed", changed)):
        csv.write_text("\n".join([HEADER, *rows]) + "\n")
        for generator, texts in outputs.items():
            _run(csv, tmp_path / f"{name}.jsonl", generator=generator,
                 predictions=tmp_path / "p.npz", mask="none")
            texts.append((tmp_path / f"{name}.jsonl").read_text())
    assert outputs["predictions"][0] == outputs["predictions"][1]
    assert outputs["template"][0] != outputs["template"][1]  # recognition's do follow the labels


def test_recognized_generator_asks_about_the_clip_from_predictions(
    tiny_ek100: Path, tmp_path: Path
) -> None:
    """`recognized` (the unlabelled test split in recognition): the clip's own templates, from
    the predicted classes, exactly as `template` writes them for those labels."""
    open_the_knife(tmp_path / "p.npz")
    _run(tiny_ek100 / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="none",
         generator="recognized", predictions=tmp_path / "p.npz")
    questions = read_questions(tmp_path / "q.jsonl")
    assert (questions["verb_class"] == 2).all() and (questions["noun_class"] == 1).all()
    assert (questions["generator"] == "recognized").all()
    scaffolds = [t.split("{")[0] for t in (*VERB_TEMPLATES, *NOUN_TEMPLATES)]
    for text in (*questions["verb_question"], *questions["noun_question"]):
        assert text.startswith(tuple(scaffolds)), text
        assert not text.startswith(tuple(t.split("{")[0] for t in NEXT_VERB_TEMPLATES))


def test_generators_from_predictions_need_them(tiny_ek100: Path) -> None:
    for generator in ("recognized", "predictions"):
        line = one_error_line(questions_cli(tiny_ek100 / "EPIC_100_validation.csv", tiny_ek100,
                                            "--generator", generator))
        assert f"--generator {generator} needs --predictions" in line


def _relabel(row: str) -> str:
    """The row with another target action: verb and noun classes (and words) moved by one."""
    verbs, nouns = ("take", "put-down", "open"), ("tap", "knife", "plate", "cupboard")
    fields = row.split(",")
    verb, noun = (int(fields[10]) + 1) % 3, (int(fields[12]) + 1) % 4
    fields[8:15] = [f"{verbs[verb]} {nouns[noun]}", verbs[verb], str(verb), nouns[noun],
                    str(noun), f"['{nouns[noun]}']", f"[{noun}]"]
    return ",".join(fields)


def test_cli_writes_file_and_prints_audit(tiny_ek100: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "extract.questions", "--annotations",
         str(tiny_ek100 / "EPIC_100_validation.csv"), "--classes-dir", str(tiny_ek100),
         "--generator", "template", "--mask", "strict", "--seed", "0", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "leakage audit" in result.stdout and len(out.read_text().splitlines()) == 6


def test_bad_annotation_is_one_line_error(tiny_ek100: Path, tmp_path: Path) -> None:
    csv = tiny_ek100 / "EPIC_100_validation.csv"
    csv.write_text(csv.read_text().replace(",113,", ",0,", 1))
    result = subprocess.run(
        [sys.executable, "-m", "extract.questions", "--annotations", str(csv),
         "--out", str(tmp_path / "q.jsonl")], capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "line 2: field 'stop_frame'" in result.stderr


REPO = Path(__file__).resolve().parents[2]


def questions_cli(annotations: Path, classes: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extract.questions", "--annotations", str(annotations),
         "--classes-dir", str(classes), "--out", str(classes / "q.jsonl"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        ("narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,"
         "stop_frame\nP01_01_0,P01,P01_01,00:00:00.00,00:00:01.89,1,113,caf\xe9\n"
         .encode("latin-1"), "is not UTF-8"),
        (HEADER + "\n", "no rows (only a header)"),
        (HEADER + "\n" + SEGMENTS[0] + "\n," + SEGMENTS[1].split(",", 1)[1] + "\n",
         "line 3: field 'narration_id': empty"),
        (HEADER + "\n" + SEGMENTS[0] + ",x,y\n", "more fields than the header"),
        (HEADER + "\n" + SEGMENTS[0] + "\n" + SEGMENTS[1] + ",x\n", "not a well-formed CSV"),
    ],
    ids=["empty", "latin-1", "header-only", "empty-narration-id", "long-first-row", "malformed"],
)
def test_cli_bad_csv_is_one_line(tiny_ek100: Path, content: bytes | str, expected: str) -> None:
    path = tiny_ek100 / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = one_error_line(questions_cli(path, tiny_ek100))
    assert str(path) in line and expected in line and "EK100_ANNOTATIONS" not in line
    assert not (tiny_ek100 / "q.jsonl").exists()


def test_cli_annotation_pickle_payload_is_refused(tiny_ek100: Path) -> None:
    marker = tiny_ek100 / "ran"
    frame = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv")
    frame.attrs["hook"] = Payload(marker)
    frame.to_pickle(tiny_ek100 / "evil.pkl")
    line = one_error_line(questions_cli(tiny_ek100 / "evil.pkl", tiny_ek100))
    assert "evil.pkl: refused to unpickle global" in line and "--trust-pickle" in line
    assert not marker.exists()


def test_cli_annotation_pickle_loads_safely_or_trusted(tiny_ek100: Path) -> None:
    frame = pd.read_csv(tiny_ek100 / "EPIC_100_validation.csv").set_index("narration_id")
    frame.to_pickle(tiny_ek100 / "segments.pkl")  # the official .pkl layout: plain data
    result = questions_cli(tiny_ek100 / "segments.pkl", tiny_ek100)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    frame.attrs["source"] = Path("EPIC_100_validation.csv")  # legitimate, not allow-listed
    frame.to_pickle(tiny_ek100 / "trusted.pkl")
    assert "PosixPath" in one_error_line(questions_cli(tiny_ek100 / "trusted.pkl", tiny_ek100))
    result = questions_cli(tiny_ek100 / "trusted.pkl", tiny_ek100, "--trust-pickle")
    assert result.returncode == 0, result.stderr
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "PosixPath" in warning[0]
    assert len((tiny_ek100 / "q.jsonl").read_text().splitlines()) == 6


class Payload:
    """Unpickling this creates `path`: a harmless stand-in for code in a downloaded file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_templates_never_contain_a_class_word(ek100_root: Path) -> None:
    """The scaffolding words must survive masking: none may be a word of an EK100 class or
    category, nor an inflection of one (a masked scaffold word would give the label away)."""
    words: set[str] = set()
    for name in ("verb", "noun"):
        table = load_classes(ek100_root / f"EPIC_100_{name}_classes.csv")
        for key, instances, category in zip(
            table.keys, table.instances, table.categories, strict=True
        ):
            words |= content_words((key, *instances)) | content_words((category,))
    templates = VERB_TEMPLATES + NOUN_TEMPLATES + NEXT_VERB_TEMPLATES + NEXT_NOUN_TEMPLATES
    scaffold = {
        w for t in templates for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", t.lower()))
    }
    assert {w for w in scaffold if leaks(w, words)} == set()


@pytest.mark.slow
def test_real_validation_file_strict(ek100_root: Path, tmp_path: Path) -> None:
    audit = _run(ek100_root / "EPIC_100_validation.csv", tmp_path / "q.jsonl", mask="strict")
    assert audit["questions"] == 2 * 9668
    assert sum(v for k, v in audit.items() if "leaks" in k) == 0
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 9668

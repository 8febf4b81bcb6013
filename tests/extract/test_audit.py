from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from extract.audit import PROBE_KEYS, AuditConfig, audit
from extract.masking import LEAK_KEYS
from extract.questions import QuestionsConfig, generate
from tests.cli import one_error_line
from tests.conftest import HEADER, SEGMENTS

REPO = Path(__file__).resolve().parents[2]


def _copies(first: int, last: int) -> list[str]:
    """The fixture's six segments again and again, each copy with its own narration ids."""
    return [f"{row.split(',', 1)[0]}{c},{row.split(',', 1)[1]}"
            for c in range(first, last) for row in SEGMENTS]


def _questions(root: Path, name: str, rows: list[str], mask: str, header: str = HEADER) -> Path:
    csv = root / f"{name}.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    out = root / f"{name}.{mask}.jsonl"
    generate(QuestionsConfig(annotations=csv, classes_dir=root, out=out, mask=mask))
    return out


@pytest.fixture
def pairs(tiny_ek100: Path) -> dict[str, tuple[Path, Path]]:
    """Questions of 120 training and 60 evaluation segments, per mask."""
    return {
        mask: (_questions(tiny_ek100, "train", _copies(0, 20), mask),
               _questions(tiny_ek100, "eval", _copies(20, 30), mask))
        for mask in ("none", "paper", "strict")
    }


def _audit(root: Path, train: Path, evaluate: Path, **kw: object) -> dict[str, object]:
    return audit(AuditConfig(train=train, eval=evaluate, annotations=root, **kw))


def test_audit_keys_and_determinism(tiny_ek100: Path, pairs: dict) -> None:
    first = _audit(tiny_ek100, *pairs["paper"])
    assert set(PROBE_KEYS) | set(LEAK_KEYS) | {"questions_from_category_templates"} <= set(first)
    assert first["train_pairs"] == 120 and first["eval_pairs"] == 60
    assert first["majority_verb_top1"] == pytest.approx(1 / 3)
    assert first == _audit(tiny_ek100, *pairs["paper"])
    sample = _audit(tiny_ek100, *pairs["paper"], limit=30, seed=1)
    assert sample["train_pairs"] == sample["eval_pairs"] == 30
    assert sample == _audit(tiny_ek100, *pairs["paper"], limit=30, seed=1)


def test_none_leaks_more_than_strict(tiny_ek100: Path, pairs: dict) -> None:
    none, strict = (_audit(tiny_ek100, *pairs[m]) for m in ("none", "strict"))
    assert none["probe_noun_top1"] == none["probe_verb_top1"] == 1.0
    assert strict["probe_noun_top1"] < 0.6 and strict["probe_verb_top1"] < 0.6
    assert none["verb_question_leaks_noun"] == none["noun_question_leaks_verb"] == 180
    assert all(strict[key] == 0 for key in LEAK_KEYS)


def test_category_templates_and_leaks_are_counted(tiny_ek100: Path, pairs: dict) -> None:
    paper, strict = (_audit(tiny_ek100, *pairs[m]) for m in ("paper", "strict"))
    named = paper["questions_from_category_templates"]
    assert 0 < named == strict["questions_from_category_templates"]  # masked, still counted
    # paper's rule keeps the categories the templates name: each is a leak of the other label
    assert paper["verb_question_leaks_noun_category"] + paper[
        "noun_question_leaks_verb_category"] == named
    assert strict["verb_question_leaks_noun_category"] == 0


def _audit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "extract.questions", "audit", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_json_and_table(tiny_ek100: Path, pairs: dict) -> None:
    train, evaluate = map(str, pairs["none"])
    common = ["--train", train, "--eval", evaluate, "--annotations", str(tiny_ek100)]
    result = _audit_cli(*common, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == _audit(tiny_ek100, *pairs["none"])
    result = _audit_cli(*common)
    assert result.returncode == 0, result.stderr
    assert "majority class          33.3   33.3" in result.stdout
    assert "probe, both questions  100.0  100.0" in result.stdout


def test_generate_still_default(tiny_ek100: Path) -> None:
    """`audit` is a subcommand; the flags alone still generate questions."""
    out = tiny_ek100 / "q.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "extract.questions", "--annotations",
         str(tiny_ek100 / "EPIC_100_validation.csv"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and len(out.read_text().splitlines()) == 6, result.stderr


GOOD = ('{"narration_id": "a", "verb_question": "What?", "noun_question": "Which?", '
        '"verb_class": 1, "noun_class": 2}')


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "bad.jsonl: file not found"),
        ("", "bad.jsonl: no questions"),
        (GOOD + "\n{not json\n", "bad.jsonl:line 2: not JSON"),
        ('{"narration_id": "a", "verb_question": "What?"}\n', "(missing: noun_question, verb"),
        (GOOD.replace('"verb_class": 1', '"verb_class": 3'), "field 'verb_class': 3 is not a"),
        (GOOD.replace('"noun_class": 2', '"noun_class": "2"'), "field 'noun_class': '2' is not"),
        (GOOD.replace('"What?"', "null"), "field 'verb_question' must be a string"),
    ],
    ids=["missing-file", "empty", "not-json", "missing-fields", "class-out-of-range",
         "class-not-int", "question-not-string"],
)
def test_cli_bad_questions_file_is_one_line(
    tiny_ek100: Path, content: str | None, expected: str
) -> None:
    bad = tiny_ek100 / "bad.jsonl"
    if content is not None:
        bad.write_text(content)
    good = tiny_ek100 / "good.jsonl"
    good.write_text(GOOD + "\n")
    line = one_error_line(_audit_cli("--train", str(good), "--eval", str(bad),
                                     "--annotations", str(tiny_ek100)))
    assert expected in line


@pytest.mark.slow
def test_real_annotations_probe(ek100_root: Path, tmp_path: Path) -> None:
    """On EK100: text alone is far above the majority class without masking, and `strict`
    (labels and categories masked) brings the probe closer to it than the paper's rule.
    The first 3000 training and 1500 validation rows keep this under a minute on 2 cores."""
    for name in ("verb", "noun"):
        (tmp_path / f"EPIC_100_{name}_classes.csv").symlink_to(
            ek100_root / f"EPIC_100_{name}_classes.csv")
    results = {}
    for mask in ("none", "paper", "strict"):
        files = []
        for split, rows in (("uda_source_train", 3000), ("validation", 1500)):
            lines = (ek100_root / f"EPIC_100_{split}.csv").read_text().splitlines()
            files.append(_questions(tmp_path, split, lines[1 : rows + 1], mask, lines[0]))
        results[mask] = _audit(tmp_path, *files)
    none, paper, strict = results["none"], results["paper"], results["strict"]
    for task in ("verb", "noun"):
        majority = none[f"majority_{task}_top1"]
        assert none[f"probe_{task}_top1"] > majority + 0.5
        assert abs(strict[f"probe_{task}_top1"] - majority) < abs(
            paper[f"probe_{task}_top1"] - majority)

"""How much do the questions give away? A leakage audit of any questions files (issue 16).

    python -m extract.questions audit --train Q_TRAIN.jsonl --eval Q_EVAL.jsonl \
        --annotations DIR [--json] [--seed S] [--limit N]

MambaVL writes its questions from the ground truth of the very clip being classified, at test
time too (paper §4.1), so part of a gain can come from the labels leaking through the text.
Two measures, for questions files from any source (ours, an LLM's, a user's):

- word-level: how many questions name a word of their own labels' classes (key, instances,
  inflections) or of the labels' categories (`extract.masking.leaks`), and how many come from
  one of our templates that names a category;
- learned: a bag-of-words (unigrams + bigrams) logistic-regression probe from question text to
  label, trained on `--train` and scored top-1 on `--eval`, from each question alone and from
  both (what a head that sees both questions can use), beside the majority class of `--train`.

A probe far above the majority class means a model can score without looking at the video.
Labels are the files' `verb_class`/`noun_class`; every line needs those and `narration_id`,
`verb_question`, `noun_question`.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from extract.masking import LEAK_KEYS, pair_leaks
from extract.questions import NOUN_TEMPLATES, VERB_TEMPLATES
from features.annotations import ClassTable, load_classes
from features.config import cli
from features.errors import HarnessError

FIELDS = ("narration_id", "verb_question", "noun_question", "verb_class", "noun_class")
PROBE_KEYS = (
    "probe_verb_top1", "probe_noun_top1", "probe_verb_from_verb_question_top1",
    "probe_noun_from_noun_question_top1", "majority_verb_top1", "majority_noun_top1",
)


class QuestionsError(HarnessError, ValueError):
    """A questions file the audit cannot read; the message names the file and line."""


@dataclass
class AuditConfig:
    """Measure how much questions files give away: word-level leaks and a learned text probe."""

    train: Path
    """questions JSONL the probe learns from (e.g. of the training split)"""
    eval: Path
    """questions JSONL the probe is scored on (e.g. of the validation split)"""
    annotations: Path
    """folder with `EPIC_100_{verb,noun}_classes.csv` (the labels' words and categories)"""
    classes_dir: Path | None = None
    """folder of the class files, when not `--annotations`"""
    json: bool = False
    """print the result as one JSON object instead of a table"""
    seed: int = 0
    """seed of the `--limit` sample and of the probe"""
    limit: int | None = None
    """audit a random sample of at most this many pairs of each file (a quicker estimate)"""
    max_iter: int = 1000
    """iterations of the probe's solver (a warning says when it stops before converging)"""
    tol: float = 1e-3
    """the solver's stopping tolerance: on EK100, 1e-3 scores within 1 point of scikit-learn's
    default 1e-4 in a sixth of the time"""


def _category_template(template: str) -> re.Pattern[str] | None:
    """A regex matching the questions a template makes, if the template names a category."""
    if "_category}" not in template:
        return None
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+?)".join(map(re.escape, parts)) + "$", re.DOTALL)


CATEGORY_TEMPLATES = tuple(
    p for p in map(_category_template, VERB_TEMPLATES + NOUN_TEMPLATES) if p is not None
)


def load_questions(path: Path, verbs: ClassTable, nouns: ClassTable) -> pd.DataFrame:
    """The pairs of a questions JSONL, every line checked, so a bad one is one error line."""
    if not path.is_file():
        raise QuestionsError(
            f"{path}: file not found; write it with `python -m extract.questions "
            f"--annotations CSV --out {path}`"
        )
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise QuestionsError(f"{path}: byte {error.start} is not UTF-8; save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise QuestionsError(f"{where}: not JSON ({error.msg}); one object per line") from None
        if not isinstance(record, dict) or (missing := [f for f in FIELDS if f not in record]):
            raise QuestionsError(
                f"{where}: needs the fields {', '.join(FIELDS)}"
                + (f" (missing: {', '.join(missing)})" if isinstance(record, dict) else "")
            )
        for field in ("verb_question", "noun_question"):
            if not isinstance(record[field], str):
                raise QuestionsError(f"{where}: field '{field}' must be a string")
        for field, table in (("verb_class", verbs), ("noun_class", nouns)):
            value = record[field]
            if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value < len(table)
            ):
                raise QuestionsError(
                    f"{where}: field '{field}': {value!r} is not a class id 0..{len(table) - 1} "
                    f"of {table.path}; are these the class files the questions were made with?"
                )
        rows.append({f: record[f] for f in FIELDS})
    if not rows:
        raise QuestionsError(f"{path}: no questions (empty file)")
    return pd.DataFrame(rows)


def word_leaks(frame: pd.DataFrame, verbs: ClassTable, nouns: ClassTable) -> dict[str, int]:
    """Counts of questions naming their labels' words or categories, and category templates."""
    counts = dict.fromkeys(LEAK_KEYS, 0)
    counts["questions_from_category_templates"] = 0
    for row in frame.itertuples(index=False):
        v, n = row.verb_class, row.noun_class
        found = pair_leaks(
            row.verb_question, row.noun_question, (verbs.keys[v], *verbs.instances[v]),
            (nouns.keys[n], *nouns.instances[n]), verbs.categories[v], nouns.categories[n],
        )
        for key, leaked in found.items():
            counts[key] += leaked
        counts["questions_from_category_templates"] += sum(
            any(p.match(q) for p in CATEGORY_TEMPLATES)
            for q in (row.verb_question, row.noun_question)
        )
    return counts


def probe_top1(
    train: pd.DataFrame, evaluate: pd.DataFrame, columns: tuple[str, ...], target: str,
    config: AuditConfig,
) -> float:
    """Top-1 on `evaluate` of a bag-of-words logistic regression from `columns` to `target`."""
    if train[target].nunique() < 2:  # one class: nothing to learn, it is the majority
        return majority_top1(train, evaluate, target)
    features = ColumnTransformer(
        [(c, CountVectorizer(ngram_range=(1, 2)), c) for c in columns]
    )
    solver = LogisticRegression(max_iter=config.max_iter, tol=config.tol, random_state=config.seed)
    model = make_pipeline(features, solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, on one line
        try:
            model.fit(train[list(columns)], train[target])
        except ValueError as error:  # e.g. an empty vocabulary: questions without words
            raise QuestionsError(f"{config.train}: the probe cannot learn from {columns}: "
                                 f"{error}") from None
    if (model[-1].n_iter_ >= config.max_iter).any():
        print(f"warning: the {target} probe from {' + '.join(columns)} stopped at "
              f"--max-iter {config.max_iter} before converging", file=sys.stderr)
    return float((model.predict(evaluate[list(columns)]) == evaluate[target]).mean())


def majority_top1(train: pd.DataFrame, evaluate: pd.DataFrame, target: str) -> float:
    """Top-1 on `evaluate` of always answering the most frequent class of `train`."""
    return float((evaluate[target] == train[target].mode().iloc[0]).mean())


def audit(config: AuditConfig) -> dict[str, object]:
    """The audit of one train/eval pair of questions files (JSON-ready, deterministic)."""
    classes_dir = config.classes_dir or config.annotations
    verbs = load_classes(classes_dir / "EPIC_100_verb_classes.csv")
    nouns = load_classes(classes_dir / "EPIC_100_noun_classes.csv")
    train, evaluate = (load_questions(p, verbs, nouns) for p in (config.train, config.eval))
    if config.limit is not None:
        train, evaluate = (
            f.sample(n=min(config.limit, len(f)), random_state=config.seed).sort_index()
            for f in (train, evaluate)
        )
    both = ("verb_question", "noun_question")
    result: dict[str, object] = {
        "train": str(config.train), "eval": str(config.eval),
        "train_pairs": len(train), "eval_pairs": len(evaluate),
        "probe_verb_top1": probe_top1(train, evaluate, both, "verb_class", config),
        "probe_noun_top1": probe_top1(train, evaluate, both, "noun_class", config),
        "probe_verb_from_verb_question_top1": probe_top1(
            train, evaluate, ("verb_question",), "verb_class", config),
        "probe_noun_from_noun_question_top1": probe_top1(
            train, evaluate, ("noun_question",), "noun_class", config),
        "majority_verb_top1": majority_top1(train, evaluate, "verb_class"),
        "majority_noun_top1": majority_top1(train, evaluate, "noun_class"),
    }
    result["questions"] = 2 * (len(train) + len(evaluate))
    result.update(word_leaks(pd.concat([train, evaluate]), verbs, nouns))
    return result


def table(result: dict[str, object]) -> str:
    """The audit as a small aligned table (top-1 in %) and the word-level counts."""
    rows = [
        ("", "verb", "noun", "from"),
        ("majority class", result["majority_verb_top1"], result["majority_noun_top1"], "-"),
        ("probe, own question", result["probe_verb_from_verb_question_top1"],
         result["probe_noun_from_noun_question_top1"], "verb q. / noun q."),
        ("probe, both questions", result["probe_verb_top1"], result["probe_noun_top1"], "both"),
    ]
    cells = [
        [name, *(f"{100 * v:.1f}" if isinstance(v, float) else v for v in (verb, noun)), src]
        for name, verb, noun, src in rows
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(4)]
    lines = [
        f"question leakage: probe trained on {result['train']} ({result['train_pairs']} pairs), "
        f"top-1 % on {result['eval']} ({result['eval_pairs']} pairs)"
    ]
    lines += [
        "  ".join(str(c).rjust(w) if 0 < i < 3 else str(c).ljust(w)
                  for i, (c, w) in enumerate(zip(cell, widths, strict=True))).rstrip()
        for cell in cells
    ]
    lines.append(f"word-level, of {result['questions']} questions (both files):")
    width = max(map(len, (*LEAK_KEYS, "questions_from_category_templates")))
    lines += [f"  {key.ljust(width)}  {result[key]}"
              for key in (*LEAK_KEYS, "questions_from_category_templates")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    config = cli(AuditConfig, args=argv, description=__doc__)
    result = audit(config)  # bad input: a HarnessError, one line via run_cli
    print(json.dumps(result) if config.json else table(result))


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

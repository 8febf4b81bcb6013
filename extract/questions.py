"""Two questions per segment, one answered by the verb and one by the noun.

    python -m extract.questions --annotations CSV --classes-dir DIR --generator template \
        --mask strict --seed 0 --out questions.jsonl
    python -m extract.questions audit --train Q_TRAIN.jsonl --eval Q_EVAL.jsonl \
        --annotations DIR [--json]     # how much any questions files give away (extract.audit)

Generators:
- `template` (default): offline and deterministic for a seed; phrasings built from the class
  keys, categories, the narration and the other label.
- `llm`: the paper's two-stage procedure against an OpenAI-compatible endpoint (see
  `extract.llm`), cached on disk and resumable.
- `predictions`: for anticipation, questions about the next action built from the predicted
  verb and noun of the observed clip (a predictions `.npz` from a recognition model).
- `recognized`: for an unlabelled split (the EK100 test timestamps) in recognition, the
  template questions about the clip itself, built from a recognition model's predicted verb
  and noun of that clip (a predictions `.npz`): there are no labels to write them from.

Masking (`--mask`), with the text model's mask token: `paper` masks the verb in the noun
question and the noun in the verb question (the paper's rule, §4.1: "we mask the verb in the
noun-related question with a <MASK> token if it appears, and vice versa for the noun in
verb-related questions"); `strict` masks both labels and both labels' categories (the class
files' `category` column, which the templates name) in both; `none` masks nothing. The labels
are those the questions are built from (the annotation for `template`/`llm`, the predicted
classes of the observed clip for `predictions`, of the clip itself for `recognized`, never the
labels of the action to anticipate). Every run prints the word-level leakage audit.

The predictions generators add `predictions_in_sample` to each record: true when the
predictions file says its run was trained on the split it scored (`fusion.predict` records
it: the chain's train split), false when held out, null when the file does not say (a notice
on stderr when true or null).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from extract.llm import LLMConfig, generate_llm_questions
from extract.masking import LEAK_KEYS, LabelMasker, pair_leaks, surface_phrases
from features.annotations import AnnotationError, ClassTable, load_classes, load_segments
from features.config import cli
from features.errors import HarnessError

Generator = Literal["template", "llm", "predictions", "recognized"]
MaskMode = Literal["paper", "strict", "none"]

# Words here must never collide with an EK100 class or category word, nor an inflection of
# one (checked in the tests), so that masking only ever removes the label, never the
# scaffolding of the question: a masked scaffold word would itself give the label away.
VERB_TEMPLATES = (
    "What is the person doing with the {noun}?",
    "Which action does the person perform on the {noun}?",
    "What does the person do to the {noun}, which belongs to the {noun_category}?",
    "What happens to the {noun} at this moment?",
    "In the narration \"{narration}\", what is happening to the {noun}?",
    "Which movement involves the {noun} ({noun_category})?",
)
NOUN_TEMPLATES = (
    "What does the person {verb}?",
    "Which object does the person {verb} here?",
    "What is the target of the action \"{verb}\" ({verb_category})?",
    "Which object accompanies the action \"{verb}\", a kind of {verb_category}?",
    "In the narration \"{narration}\", which object is involved?",
    "What thing is acted upon when the person does \"{verb}\"?",
)
NEXT_VERB_TEMPLATES = (
    "After the person does \"{verb}\" with the {noun}, what will they do next?",
    "The person just did \"{verb}\" to the {noun}; which action follows?",
    "What is the next action of the person who was doing \"{verb}\" to the {noun}?",
)
NEXT_NOUN_TEMPLATES = (
    "After the person does \"{verb}\" with the {noun}, which object will they need next?",
    "The person just did \"{verb}\" to the {noun}; which object comes next?",
    "Which object will the person reach for after \"{verb}\" on the {noun}?",
)


@dataclass
class QuestionsConfig:
    """Generate the verb and noun questions of every segment of an annotation file."""

    annotations: Path
    """EK100 segment file (`EPIC_100_*.csv` or `.pkl`)."""
    out: Path = Path("questions.jsonl")
    classes_dir: Path | None = None
    """Folder with `EPIC_100_{verb,noun}_classes.csv` (default: the annotations' folder)."""
    generator: Generator = "template"
    mask: MaskMode = "paper"
    mask_token: str = "<mask>"
    """The text model's mask token (`<mask>` for RoBERTa, `[MASK]` for BERT)."""
    seed: int = 0
    predictions: Path | None = None
    """`generator=predictions|recognized`: a predictions `.npz` (narration_id, verb_scores,
    noun_scores) of a recognition model: of the observed windows before each action
    (predictions) or of the segments' clips (recognized)."""
    trust_pickle: bool = False
    """fully unpickle a `.pkl` --annotations file (runs its code: only for files you trust)"""
    llm: LLMConfig = field(default_factory=LLMConfig)


@dataclass(frozen=True)
class Labels:
    """The labels a pair of questions is built from."""

    verb: str
    noun: str
    verb_class: int
    noun_class: int
    narration: str


def _phrase(label: str) -> str:
    return surface_phrases(label)[0]


def _class_labels(table: ClassTable, class_id: int) -> tuple[str, ...]:
    return (table.keys[class_id], *table.instances[class_id])


class QuestionWriter:
    """Turns labels into masked question pairs; deterministic per (seed, narration id)."""

    def __init__(self, verbs: ClassTable, nouns: ClassTable, config: QuestionsConfig) -> None:
        self.verbs, self.nouns, self.config = verbs, nouns, config
        self.masker = LabelMasker(config.mask_token)

    def template(self, narration_id: str, labels: Labels, future: bool = False) -> tuple[str, str]:
        rng = random.Random(f"{self.config.seed}:{narration_id}")
        verb_labels = _class_labels(self.verbs, labels.verb_class)
        noun_labels = _class_labels(self.nouns, labels.noun_class)
        fields = {
            "verb": _phrase(rng.choice((labels.verb, self.verbs.keys[labels.verb_class]))),
            "noun": _phrase(rng.choice((labels.noun, self.nouns.keys[labels.noun_class]))),
            "verb_category": self.verbs.categories[labels.verb_class],
            "noun_category": self.nouns.categories[labels.noun_class],
        }
        verb_templates = NEXT_VERB_TEMPLATES if future else VERB_TEMPLATES
        noun_templates = NEXT_NOUN_TEMPLATES if future else NOUN_TEMPLATES
        # The narration names both labels: each question sees it with its own answer masked.
        verb_q = rng.choice(verb_templates).format(
            narration=self.masker(labels.narration, verb_labels), **fields
        )
        noun_q = rng.choice(noun_templates).format(
            narration=self.masker(labels.narration, noun_labels), **fields
        )
        return self.apply_mask(verb_q, noun_q, labels)

    def apply_mask(self, verb_q: str, noun_q: str, labels: Labels) -> tuple[str, str]:
        """Mask per `--mask`: `paper` hides the other label, `strict` both labels and categories."""
        verb_labels = _class_labels(self.verbs, labels.verb_class)
        noun_labels = _class_labels(self.nouns, labels.noun_class)
        if self.config.mask == "paper":
            return self.masker(verb_q, noun_labels), self.masker(noun_q, verb_labels)
        if self.config.mask == "strict":
            hide = (verb_labels, noun_labels, (self.verbs.categories[labels.verb_class],),
                    (self.nouns.categories[labels.noun_class],))
            return self.masker(verb_q, *hide), self.masker(noun_q, *hide)
        return verb_q, noun_q


def _segment_labels(segments: pd.DataFrame) -> Iterator[tuple[str, Labels]]:
    for row in segments.itertuples(index=False):
        yield row.narration_id, Labels(
            row.verb, row.noun, int(row.verb_class), int(row.noun_class), str(row.narration)
        )


def _predicted_labels(
    segments: pd.DataFrame, path: Path, verbs: ClassTable, nouns: ClassTable
) -> Iterator[tuple[str, Labels]]:
    """Labels from a recognition model's predictions of each segment's observed clip."""
    from fusion.predictions import load_predictions  # one-line errors for a bad file

    preds = load_predictions(path)
    ids = [str(i) for i in preds.narration_id]
    verb_pred = preds.verb_scores.argmax(1)
    noun_pred = preds.noun_scores.argmax(1)
    index = {narration_id: i for i, narration_id in enumerate(ids)}
    missing = [n for n in segments["narration_id"] if n not in index]
    if missing:
        raise AnnotationError(
            f"{path}: no predictions for {len(missing)} segment(s) (first: {missing[:3]}); "
            "predict every segment of the annotation file"
        )
    for narration_id in segments["narration_id"]:
        v, n = int(verb_pred[index[narration_id]]), int(noun_pred[index[narration_id]])
        yield narration_id, Labels(verbs.keys[v], nouns.keys[n], v, n, "")


def predictions_in_sample(path: Path) -> bool | None:
    """Whether a predictions file scored the split its run was trained on (`fusion.predict`
    records it), `None` when the file does not say (another model's, or older); says on
    stderr when the questions are not known to come from held-out predictions."""
    from fusion.predictions import read_source

    source = read_source(path) or {}
    in_sample = source.get("in_sample")
    in_sample = in_sample if isinstance(in_sample, bool) else None
    if in_sample:
        print(f"note: {path} holds in-sample predictions ({source.get('run')} was trained on "
              f"the {source.get('split')} split it scored): the questions record "
              "predictions_in_sample=true", file=sys.stderr)
    elif in_sample is None:
        print(f"note: {path} does not record whether its model was trained on these clips: "
              "the questions record predictions_in_sample=null (fusion.predict records it)",
              file=sys.stderr)
    return in_sample


def generate(config: QuestionsConfig) -> dict[str, int]:
    """Write the questions JSONL and return the leakage audit counts."""
    classes_dir = config.classes_dir or config.annotations.parent
    verbs = load_classes(classes_dir / "EPIC_100_verb_classes.csv")
    nouns = load_classes(classes_dir / "EPIC_100_noun_classes.csv")
    segments = load_segments(config.annotations, verbs, nouns, config.trust_pickle)
    writer = QuestionWriter(verbs, nouns, config)
    labelled = "verb_class" in segments.columns
    provenance: dict[str, bool | None] = {}  # the predictions generators' only

    if config.generator in ("predictions", "recognized"):
        if config.predictions is None:
            raise HarnessError(f"--generator {config.generator} needs --predictions P.npz (a "
                               "recognition run's predictions: python -m fusion.predict)")
        items = list(_predicted_labels(segments, config.predictions, verbs, nouns))
        provenance = {"predictions_in_sample": predictions_in_sample(config.predictions)}
        future = config.generator == "predictions"  # anticipation: the action after the clip
        pairs = {nid: writer.template(nid, lab, future=future) for nid, lab in items}
    elif not labelled:
        raise HarnessError(
            f"{config.annotations}: has no labels to write questions from; use --generator "
            "recognized (recognition) or predictions (anticipation) with --predictions P.npz"
        )
    elif config.generator == "llm":
        items = list(_segment_labels(segments))
        raw = generate_llm_questions(items, verbs, nouns, config.llm)
        pairs = {nid: writer.apply_mask(*raw[nid], lab) for nid, lab in items}
    else:
        items = list(_segment_labels(segments))
        pairs = {nid: writer.template(nid, lab) for nid, lab in items}

    audit = {"questions": 2 * len(items), **dict.fromkeys(LEAK_KEYS, 0)}
    config.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.out.with_suffix(config.out.suffix + ".tmp")
    with tmp.open("w") as handle:
        for narration_id, labels in items:
            verb_q, noun_q = pairs[narration_id]
            row = pair_leaks(
                verb_q, noun_q, _class_labels(verbs, labels.verb_class),
                _class_labels(nouns, labels.noun_class), verbs.categories[labels.verb_class],
                nouns.categories[labels.noun_class],
            )
            for key, leaked in row.items():
                audit[key] += leaked
            record = {
                "narration_id": narration_id,
                "verb_question": verb_q,
                "noun_question": noun_q,
                "verb": labels.verb,
                "noun": labels.noun,
                "verb_class": labels.verb_class,
                "noun_class": labels.noun_class,
                "generator": config.generator,
                "mask": config.mask,
                **provenance,
            }
            handle.write(json.dumps(record) + "\n")
    tmp.replace(config.out)
    return audit


def read_questions(path: str | Path) -> pd.DataFrame:
    """Load a questions JSONL written by `generate`, in file order."""
    return pd.read_json(path, lines=True, dtype={"narration_id": str})


def main(argv: list[str] | None = None) -> None:
    """Generate questions (the default), or `audit` questions files (`extract.audit`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["audit"]:
        from extract.audit import main as audit_main

        audit_main(argv[1:])
        return
    config = cli(QuestionsConfig, args=argv)
    audit = generate(config)  # bad input: a HarnessError, one line via run_cli
    print(f"wrote {audit['questions'] // 2} question pairs to {config.out}")
    print(
        "leakage audit (questions naming a word of a label class or category; "
        "`python -m extract.questions audit` also runs a learned probe): " + json.dumps(audit)
    )


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

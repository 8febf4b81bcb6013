"""Label masking for the generated questions, and an independent leakage audit.

A question must not give its answer away. EK100 classes have many surface forms: a key
(`put`), hyphenated instances (`put-down` → "put down") and colon instances for nouns
(`tap:water` → "water tap", "tap water"). `LabelMasker` replaces every whole-word
occurrence of any of them, case-insensitively, with inflections (plurals, -s/-ed/-ing,
a few irregular forms), by the text model's mask token.

A class's `category` (`cutlery`, `fruits and nuts`) is masked and audited the same way, as a
one-label class: it narrows the answer down too (issue 16).

`leaks` is the audit: it tokenises a question into words and compares their stems with
the class words, without the masker's regular expressions, so a gap in the masker shows
up as a non-zero count instead of passing silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

# Words that appear inside instances (`take-of`, `put-down`, `back:teaspoon`) or categories
# (`fruits and nuts`) but carry no label on their own: masking them alone would gut every
# question.
PARTICLES = frozenset(
    "a an the of to in into on onto off up down out from with over under away back around "
    "aside through that for between inside outside unto against by at about and".split()
)
IRREGULAR = {
    "take": ("took", "taken"), "shake": ("shook", "shaken"), "eat": ("ate", "eaten"),
    "throw": ("threw", "thrown"), "break": ("broke", "broken"), "hold": ("held",),
    "get": ("got", "gotten"), "leave": ("left",), "put": (), "cut": (), "stick": ("stuck",),
    "hang": ("hung",), "wear": ("wore", "worn"), "tear": ("tore", "torn"), "give": ("gave",),
    "knife": ("knives",), "leaf": ("leaves",), "shelf": ("shelves",), "loaf": ("loaves",),
    "half": ("halves",), "mouse": ("mice",), "foot": ("feet",), "tooth": ("teeth",),
}
_WORD = re.compile(r"[a-z0-9]+")


def surface_phrases(label: str) -> list[str]:
    """Readable phrases of one EK100 label: `put-down` → ["put down"];
    `tap:water` → ["water tap", "tap water"]."""
    label = label.lower().replace("_", " ")
    if ":" in label:
        parts = [p.replace("-", " ").strip() for p in label.split(":") if p.strip()]
        forward = " ".join(parts)
        backward = " ".join(reversed(parts))
        return list(dict.fromkeys([backward, forward]))
    return [label.replace("-", " ").strip()]


def content_words(labels: Iterable[str]) -> set[str]:
    """Every non-particle word in a class's key and instances."""
    words: set[str] = set()
    for label in labels:
        for phrase in surface_phrases(label):
            words.update(w for w in _WORD.findall(phrase) if w not in PARTICLES)
    return words


def inflections(word: str) -> set[str]:
    """Regular and irregular inflected forms of a verb or noun (over-generation is harmless)."""
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing"}
    forms.update(IRREGULAR.get(word, ()))
    if word.endswith("e"):
        forms.add(word[:-1] + "ing")
    if word.endswith("y") and len(word) > 2:
        forms.update({word[:-1] + "ies", word[:-1] + "ied"})
    if word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    if len(word) >= 3 and re.fullmatch(r".*[^aeiou][aeiou][^aeiouwxy]", word):
        forms.update({word + word[-1] + "ing", word + word[-1] + "ed"})
    return forms


@lru_cache(maxsize=65536)
def stems(word: str) -> frozenset[str]:
    """Candidate base forms of a word, for the audit: the inverse of `inflections`."""
    out = {word}
    for base, irregular in IRREGULAR.items():
        if word in irregular:
            out.add(base)
    for suffix, repl in (("ies", "y"), ("ied", "y"), ("ves", "f"), ("ves", "fe"), ("ing", ""),
                         ("ing", "e"), ("ed", ""), ("ed", "e"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            base = word[: -len(suffix)] + repl
            out.add(base)
            if suffix in ("ing", "ed") and len(base) >= 3 and base[-1] == base[-2]:
                out.add(base[:-1])
    return frozenset(out)


@lru_cache(maxsize=4096)
def _class_pattern(labels: tuple[str, ...]) -> re.Pattern[str]:
    alternatives: set[str] = set()
    for label in labels:
        for phrase in surface_phrases(label):
            words = phrase.split()
            if len(words) > 1:
                parts = [
                    "(?:" + "|".join(sorted(map(re.escape, inflections(w)), key=len, reverse=True))
                    + ")"
                    for w in words
                ]
                alternatives.add(r"\s+".join(parts))
    for word in content_words(labels):
        # Base forms too (`using` → `use`), so the masker covers whatever the audit matches.
        for base in {word} | {s for s in stems(word) if len(s) >= 3}:
            alternatives.update(re.escape(form) for form in inflections(base))
    body = "|".join(sorted(alternatives, key=len, reverse=True))
    return re.compile(rf"\b(?:{body})\b", re.IGNORECASE)


class LabelMasker:
    """Replaces the surface forms of given classes by a mask token."""

    def __init__(self, mask_token: str = "<mask>") -> None:
        self.mask_token = mask_token
        self._runs = re.compile(rf"{re.escape(mask_token)}(?:[\s-]+{re.escape(mask_token)})+")

    def __call__(self, text: str, *classes: tuple[str, ...]) -> str:
        """Mask every class in `classes` (each a tuple of key + instances) in `text`."""
        for labels in classes:
            text = _class_pattern(tuple(labels)).sub(self.mask_token, text)
        return self._runs.sub(self.mask_token, text)


@lru_cache(maxsize=4096)
def _class_stems(labels: tuple[str, ...]) -> frozenset[str]:
    """A class's content words and their stems (cached: the audit asks once per question)."""
    words = content_words(labels)
    return frozenset(words.union(*(stems(w) for w in words)))


def leaks(text: str, labels: Iterable[str]) -> set[str]:
    """Words of `text` whose stems meet a content word of the class (empty: no leak)."""
    class_stems = _class_stems(tuple(labels))
    return {
        word
        for word in _WORD.findall(text.lower())
        if word not in PARTICLES and (stems(word) & class_stems)
    }


def pair_leaks(
    verb_q: str, noun_q: str, verb: Iterable[str], noun: Iterable[str],
    verb_category: str, noun_category: str,
) -> dict[str, bool]:
    """Which labels and categories each question of a pair names: one row of the audit."""
    sources = {"verb": tuple(verb), "noun": tuple(noun),
               "verb_category": (verb_category,), "noun_category": (noun_category,)}
    return {
        f"{question}_question_leaks_{name}": bool(leaks(text, labels))
        for question, text in (("verb", verb_q), ("noun", noun_q))
        for name, labels in sources.items()
    }


LEAK_KEYS = tuple(pair_leaks("", "", (), (), "", ""))
"""The audit's count keys: `{verb,noun}_question_leaks_{verb,noun,verb_category,noun_category}`."""

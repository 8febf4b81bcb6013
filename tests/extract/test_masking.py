from __future__ import annotations

from extract.masking import (
    LEAK_KEYS,
    LabelMasker,
    inflections,
    leaks,
    pair_leaks,
    surface_phrases,
)

TAP = ("tap", "tap:water", "water:tap", "flow:tap")
PUT_DOWN = ("put-down", "place-down", "set-down")


def test_surface_phrases_of_hyphen_and_colon_forms() -> None:
    assert surface_phrases("put-down") == ["put down"]
    assert surface_phrases("tap:water") == ["water tap", "tap water"]


def test_masks_whole_words_case_insensitively_with_plurals() -> None:
    mask = LabelMasker("<mask>")
    assert mask("Turn off the Water Tap now", TAP) == "Turn off the <mask> now"
    assert mask("two taps and a tapestry", TAP) == "two <mask> and a tapestry"
    assert mask("She PUT DOWN the plates", PUT_DOWN) == "She <mask> the plates"
    assert mask("placing down", PUT_DOWN) == "<mask>"
    assert mask("knives everywhere", ("knife",)) == "<mask> everywhere"


def test_mask_token_of_the_text_model_is_used() -> None:
    assert LabelMasker("[MASK]")("the tap", TAP) == "the [MASK]"


def test_particles_alone_are_not_masked() -> None:
    assert LabelMasker()("put it down on the table", ("take-of", "put-on")) == (
        "<mask> it down on the table"
    )


def test_audit_finds_what_masking_removes() -> None:
    text = "Why is the water flowing from the taps?"
    assert leaks(text, TAP) == {"water", "flowing", "taps"}
    assert leaks(LabelMasker()(text, TAP), TAP) == set()


def test_inflections_cover_doubling_and_irregulars() -> None:
    assert {"cutting", "cuts"} <= inflections("cut")
    assert {"took", "taken", "taking"} <= inflections("take")
    assert "empties" in inflections("empty")


def test_category_is_masked_as_phrase_and_words_but_not_and() -> None:
    spices = ("spices and herbs and sauces",)
    mask = LabelMasker()
    assert mask("Some Spices and herbs and sauces, or just herbs", spices) == (
        "Some <mask>, or just <mask>"
    )
    assert mask("salt and pepper", ("fruits and nuts",)) == "salt and pepper"
    assert leaks("salt and fruit", ("fruits and nuts",)) == {"fruit"}


def test_pair_leaks_names_the_question_and_what_it_gives_away() -> None:
    verb_q, noun_q = "Which movement involves the <mask> (cutlery)?", "What does one take?"
    found = pair_leaks(verb_q, noun_q, ("take", "pick-up"), ("knife",), "retrieve", "cutlery")
    assert set(found) == set(LEAK_KEYS)
    assert {k for k, v in found.items() if v} == {
        "verb_question_leaks_noun_category", "noun_question_leaks_verb"
    }

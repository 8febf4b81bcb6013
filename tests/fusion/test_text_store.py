"""The text store a training run reads by default follows its protocol's text choices, and is
named exactly as `python -m extract text` names the store of those choices."""

from __future__ import annotations

import dataclasses

import pytest

from extract.run import TextConfig, protocol_text_options
from extract.run import text_store_name as extract_name
from fusion.data import text_store_name
from fusion.protocols import PROTOCOLS
from fusion.train import TrainConfig

BASE = "roberta-base-template-paper"


@pytest.mark.parametrize("protocol, name", [
    ("clean", BASE),  # today's store, today's name
    ("paper", f"{BASE}-len40"),  # pretrained last hidden state, 40 tokens, pads masked
    ("authors", f"{BASE}-emb-authorsrandom-s0-len40-nomask"),
])  # fmt: skip
def test_default_text_store_follows_the_protocol(protocol: str, name: str) -> None:
    config = TrainConfig(protocol=protocol, text_model="roberta-base")
    assert text_store_name(config) == name
    assert text_store_name(dataclasses.replace(config, text_store="mine")) == "mine"
    anticipation = dataclasses.replace(config, task="anticipation", question_mask="strict")
    assert text_store_name(anticipation) == name.replace("template-paper", "predictions-strict")


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_extract_writes_the_store_training_reads(protocol: str) -> None:
    """`extract text` with the protocol's choices names its store as training looks it up."""
    options = protocol_text_options(PROTOCOLS[protocol])
    config = TextConfig(text_model="models/roberta-base/", **options)
    records = [{"generator": "template", "mask": "paper"}]
    assert extract_name(config, records) == text_store_name(
        TrainConfig(protocol=protocol, text_model="roberta-base"))


def test_protocol_text_options_carry_its_fields() -> None:
    authors = protocol_text_options(PROTOCOLS["authors"])
    assert authors == {"readout": "embeddings", "init": "authors-random", "seed": 0,
                       "max_length": 40, "padding": "max-length"}
    # the padding of the store agrees with the head: pads stored as computed iff pooled
    for protocol in PROTOCOLS.values():
        padding = protocol_text_options(protocol)["padding"]
        assert (padding == "max-length") == protocol.pool_padding

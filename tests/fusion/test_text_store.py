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


@pytest.mark.parametrize("protocol, fusion, name", [
    ("clean", "mamba", BASE),  # today's store, today's name
    ("clean", "mlp", BASE),  # our own MLP: the same store
    ("paper", "mamba", f"{BASE}-len40"),  # pretrained last hidden state, 40 tokens, pads masked
    ("paper", "transformer_6x4", f"{BASE}-len40"),
    ("authors", "mamba", f"{BASE}-emb-authorsrandom-s0-len40-nomask"),
    ("authors", "mlp", f"{BASE}-pooler-authorsrandom-s0-len40-nomask"),  # their baselines
    ("authors", "transformer_12x12", f"{BASE}-pooler-authorsrandom-s0-len40-nomask"),
])  # fmt: skip
def test_default_text_store_follows_the_protocol(protocol: str, fusion: str, name: str
                                                 ) -> None:
    config = TrainConfig(protocol=protocol, fusion=fusion, text_model="roberta-base")
    assert text_store_name(config) == name
    assert text_store_name(dataclasses.replace(config, text_store="mine")) == "mine"
    anticipation = dataclasses.replace(config, task="anticipation", question_mask="strict")
    assert text_store_name(anticipation) == name.replace("template-paper", "predictions-strict")


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("fusion", ["mamba", "mlp", "transformer_6x4", "mlp_authors"])
def test_extract_writes_the_store_training_reads(protocol: str, fusion: str) -> None:
    """`extract text` with the protocol's choices for the head names its store as training
    looks it up."""
    options = protocol_text_options(PROTOCOLS[protocol], fusion)
    config = TextConfig(text_model="models/roberta-base/", **options)
    records = [{"generator": "template", "mask": "paper"}]
    assert extract_name(config, records) == text_store_name(
        TrainConfig(protocol=protocol, fusion=fusion, text_model="roberta-base"))


def test_protocol_text_options_carry_its_fields() -> None:
    authors = protocol_text_options(PROTOCOLS["authors"])
    assert authors == {"readout": "embeddings", "init": "authors-random", "seed": 0,
                       "max_length": 40, "padding": "max-length"}
    # the authors' MLP/Transformer read RoBERTa's pooler output (`text_model(ids)[1]`)
    assert protocol_text_options(PROTOCOLS["authors"], "mlp") == authors | {"readout": "pooler"}
    assert protocol_text_options(PROTOCOLS["authors"], "mamba") == authors
    # the padding of the store agrees with the head: pads stored as computed iff pooled
    for protocol in PROTOCOLS.values():
        padding = protocol_text_options(protocol)["padding"]
        assert (padding == "max-length") == protocol.pool_padding

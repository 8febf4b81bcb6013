"""reports.paper: every published number equals the paper's tables, every derived view agrees.

The paper's tables live outside the repository (never copied in); the comparison reads them
through MAMBAVL_PAPER (the folder holding tables.csv and mambavl-paper.txt) and skips without.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from reports import paper

NUMBERS = ("verb", "noun", "action", "gflops", "params_m")


@pytest.fixture(scope="module")
def paper_root() -> Path:
    """The folder named by MAMBAVL_PAPER; skips the test when it is not set up."""
    root = os.environ.get("MAMBAVL_PAPER")
    if not root or not (Path(root) / "tables.csv").exists():
        pytest.skip("MAMBAVL_PAPER is not set to a folder with the paper's tables.csv")
    return Path(root)


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def test_every_published_number_equals_the_papers_tables(paper_root: Path) -> None:
    with (paper_root / "tables.csv").open(newline="", encoding="utf-8") as f:
        expected = list(csv.DictReader(f))
    ours = {(p.table, p.row): p for p in paper.PUBLISHED}
    assert len(ours) == len(paper.PUBLISHED) == len(expected)
    for line in expected:
        row = ours.pop((int(line["table"]), line["row"]))  # KeyError: a row we lack
        assert row.backbone == line["backbone"], line["row"]
        assert row.pretrain == line["pretrain"], line["row"]
        for name in NUMBERS:
            assert getattr(row, name) == _number(line[name]), (line["row"], name)
    assert not ours  # no row of ours that the paper does not have


def test_recipe_facts_appear_in_the_paper_text(paper_root: Path) -> None:
    """The implementation details in RECIPE are the ones the text states."""
    text = (paper_root / "mambavl-paper.txt").read_text(encoding="utf-8")
    recipe = paper.RECIPE
    assert re.search(rf"\b{recipe['epochs']} epochs", text)
    assert re.search(rf"batch size of {recipe['batch_size']}\b", text)
    assert re.search(r"\b8 Nvidia A40", text)
    assert re.search(rf"\b{recipe['frames_per_clip']} frames", text)
    ant = recipe["anticipation_setup"]
    assert re.search(rf"\b{ant['observed_frames']} frames \({ant['observed_s']:g}s", text)
    assert "1 second" in text and ant["anticipation_s"] == 1.0
    assert recipe["question_llm"] in text and recipe["text_encoder"] in text


def test_derived_tables_agree_with_the_rows() -> None:
    """TABLE1/3/4 (what reports.tables reads) hold exactly the numbers of PUBLISHED."""
    rows = {(p.table, p.row): p for p in paper.PUBLISHED}
    assert paper.TABLE1[("orvit", "backbone")] == rows[(1, "ORViT (MF-HR)")].vna()
    assert paper.TABLE1[("avion_vit_b", "lavila")] == rows[(1, "LaViLa (TSF-B)")].vna()
    assert paper.TABLE1[("avion_vit_l", "mambavl")] == rows[(1, "MambaVL (ViT-L)")].vna()
    assert [p.row for p in paper.TABLE1_OTHERS] == ["MeMViT (24x3)", "Omnivore (swin-B)",
                                                     "MeMViT (16x4)"]
    assert paper.TABLE3["transformer_12x12"] == rows[(3, "Transformer (12x12)")].vna()
    assert paper.TABLE4["orvit+mambavl"] == {"params_m": 157.0, "gflops": 413.0}
    assert len(paper.TABLE1) + len(paper.TABLE1_OTHERS) == sum(p.table == 1
                                                               for p in paper.PUBLISHED)
    # Table 3's MambaVL row is Table 1's MambaVL (ORViT): the ablation ran on ORViT
    assert paper.TABLE3["mambavl"] == paper.TABLE1[("orvit", "mambavl")]
    # the authors' README Model Zoo repeats the paper's Table 1 for ViT-B and ViT-L
    for key in ("avion_vit_b", "avion_vit_l"):
        assert paper.README_MODEL_ZOO[(key, "mambavl", "recognition")] == \
            paper.TABLE1[(key, "mambavl")]
    assert all(v is None for row in paper.TABLE2.values() for v in row.values())

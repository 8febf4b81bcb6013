"""Shared test fixtures: GPU skipping and the real EK100 annotation folder (optional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ek100_root() -> Path:
    """The real EK100 annotations named by EK100_ANNOTATIONS; skips the test when absent."""
    root = os.environ.get("EK100_ANNOTATIONS")
    if not root or not (Path(root) / "EPIC_100_validation.csv").exists():
        pytest.skip("EK100_ANNOTATIONS is not set to a folder with the EK100 annotation CSVs")
    return Path(root)


VERB_CLASSES = """id,key,instances,category
0,take,"['take', 'pick-up', 'grab', 'get-from']",retrieve
1,put-down,"['put-down', 'place-down', 'set-down']",leave
2,open,"['open', 'open-up', 'unclose']",access
"""
NOUN_CLASSES = """id,key,instances,category
0,tap,"['tap', 'tap:water', 'water:tap']",appliances
1,knife,"['knife', 'knife:bread']",cutlery
2,plate,"['plate', 'plate:dinner']",crockery
3,cupboard,"['cupboard', 'cabinet']",furniture
"""
HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"
)
SEGMENTS = [
    "P01_01_0,P01,P01_01,00:00:00.560,00:00:00.00,00:00:01.89,1,113,take plate,take,0,plate,2,['plate'],[2]",
    "P01_01_1,P01,P01_01,00:00:01.700,00:00:01.56,00:00:02.45,93,147,put down knives,put-down,1,knife,1,['knife'],[1]",
    "P01_01_2,P01,P01_01,00:00:02.700,00:00:02.56,00:00:03.45,153,207,open water tap,open,2,tap:water,0,['tap:water'],[0]",
    "P01_01_3,P01,P01_01,00:00:03.700,00:00:03.56,00:00:04.45,213,267,grab cabinet,take,0,cabinet,3,['cabinet'],[3]",
    "P02_01_0,P02,P02_01,00:00:00.700,00:00:00.56,00:00:01.45,33,87,place down plates,put-down,1,plate,2,['plate'],[2]",
    "P02_01_1,P02,P02_01,00:00:01.700,00:00:01.56,00:00:02.45,93,147,open cupboard,open,2,cupboard,3,['cupboard'],[3]",
]


def write_tiny_ek100(root: Path, segments: list[str] | None = None) -> Path:
    """A tiny annotation folder in the EK100 format (3 verbs, 4 nouns, 6 segments)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "EPIC_100_verb_classes.csv").write_text(VERB_CLASSES)
    (root / "EPIC_100_noun_classes.csv").write_text(NOUN_CLASSES)
    rows = SEGMENTS if segments is None else segments
    (root / "EPIC_100_validation.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


@pytest.fixture
def tiny_ek100(tmp_path: Path) -> Path:
    return write_tiny_ek100(tmp_path / "ek100")

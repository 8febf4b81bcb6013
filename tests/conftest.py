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

"""benchmarks/step_graphs.py: the compiled Mamba step's graphs, traced without running."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import step_graphs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (the scan's backend)")


def test_lists_the_steps_copies_with_their_source_lines(tmp_path):
    # a subprocess: the script sets TRITON_INTERPRET, which must not leak into this one
    out = tmp_path / "graphs"
    subprocess.run([sys.executable, str(Path(step_graphs.__file__)), "--quick", "--min-mb",
                    "0", "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["forward"] and result["backward"]
    for row in result["forward"] + result["backward"]:
        assert row["op"] in step_graphs.MOVES and row["mb"] >= 0
    # the Mamba layer's projections' gradients meet in concatenations it names by line
    cats = [r for r in result["backward"] if r["op"] == "cat"]
    assert any(r["source"].startswith("mamba.py:") and "proj" in r["code"] for r in cats), cats
    assert "## backward" in out.with_suffix(".md").read_text()

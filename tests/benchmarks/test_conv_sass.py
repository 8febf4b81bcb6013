"""benchmarks/conv_sass.py: the token-convolution kernels compiled for sm_90 without a GPU."""

import importlib.util
import json

import pytest

from benchmarks import conv_sass

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


def rows_of(out):
    return {r["kernel"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}


def test_the_default_backward_tiles_do_not_spill(tmp_path):
    """The head's question SiLU call, default tiles: every kernel without local memory."""
    rows = rows_of(conv_sass.main(["--quick", "--out", str(tmp_path / "default")]))
    assert set(rows) == {"forward", "grad", "dx"}
    assert (rows["grad"]["BLOCK_L"], rows["grad"]["BLOCK_D"], rows["grad"]["warps"]) == (8, 64, 1)
    for r in rows.values():
        assert r["stack_bytes"] == 0 and r["LDL"] == 0, r
        assert 0 < r["registers"] <= 255 and r["LDG"] > 0 and r["STG"] > 0


def test_the_old_8_by_128_tiles_spill(tmp_path):
    """What the tool exists to see: one warp over 8 x 128 tiles runs out of registers."""
    rows = rows_of(conv_sass.main(["--quick", "--block-d-bwd", "128",
                                   "--out", str(tmp_path / "wide")]))
    assert rows["grad"]["BLOCK_D"] == 128
    assert rows["grad"]["registers"] == 255 and rows["grad"]["stack_bytes"] > 0
    assert rows["grad"]["LDL"] > 0 and rows["grad"]["STL"] > 0

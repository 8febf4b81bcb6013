"""benchmarks/scan_head_calls.py: the Mamba head's scan calls recorded and replayed, on the CPU
under Triton's interpreter (timings meaningless there; the recording and comparison are not)."""

import json

import pytest

from tests.fusion.triton_interpreter import run_interpreted

SCRIPT = """
from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()
from benchmarks import scan_head_calls

out = scan_head_calls.main(["--quick", "--configs", "", "block_t=2", "block_t=2,nonsense=1",
                            "--out", {out!r}])
print("RESULT", out.with_suffix(".json").read_text().replace(chr(10), " "), "RESULT")
print("all cases match")  # the runner's completion line; the test checks the result
"""


def test_records_the_heads_calls_and_compares_variants(tmp_path):
    output = run_interpreted(SCRIPT.format(out=str(tmp_path / "calls")))
    data = json.loads(output.split("RESULT")[1])
    assert len(data["calls"]) >= 2  # the video branch and the questions, one call each or more
    for shapes in data["calls"]:
        assert shapes["u"][1][1] == 1  # channels-last views, as the head passes them
    default, short_chunks, bad = data["rows"]
    assert default["status"] == short_chunks["status"] == "ok"
    assert default["max_rel_err"] == 0.0 and short_chunks["max_rel_err"] < 1e-5
    assert bad["status"].startswith("failed: TypeError")  # an unknown ScanConfig field
    text = (tmp_path / "calls.md").read_text()
    assert "| fusion.ssm_triton | block_t=2 |" in text


BACKENDS_SCRIPT = """
from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()
from benchmarks import scan_head_calls

out = scan_head_calls.main(["--quick", "--calls", "head:16", "head_views:8", "head:16:ragged",
                            "--configs", "",
                            "block_d_fwd=16", "--out", {out!r}])
print("RESULT", out.with_suffix(".json").read_text().replace(chr(10), " "), "RESULT")
print("all cases match")
"""


def test_times_scan_backends_calls_instead(tmp_path):
    """`--calls variant:L`: the scan table's calls (u (b, d, L) contiguous for `head`,
    channels-last for `head_views`), each call's time kept."""
    output = run_interpreted(BACKENDS_SCRIPT.format(out=str(tmp_path / "calls")))
    data = json.loads(output.split("RESULT")[1])
    (head, views, ragged) = data["calls"]
    assert head["u"][0] == [2, 32, 16] and head["u"][1][2] == 1 and "lengths" not in head
    assert views["u"][0] == [2, 32, 8] and views["u"][1][1] == 1
    low, high = ragged["lengths"]  # per-row lengths in [L/2, L]
    assert 8 <= low <= high <= 16
    for row in data["rows"]:
        assert row["status"] == "ok" and row["max_rel_err"] < 1e-5
        assert len(row["fwd_ms_calls"]) == 3 and row["fwd_ms"] == sum(row["fwd_ms_calls"])
    text = (tmp_path / "calls.md").read_text()
    assert "`scan_backends.py` calls head:16, head_views:8, head:16:ragged" in text


def test_a_call_spec_other_than_ragged_is_refused():
    from benchmarks.scan_head_calls import backends_calls

    with pytest.raises(SystemExit, match="head:16:padded: expected variant:L or variant:L:ragged"):
        backends_calls(("head:16:padded",), quick=True)


def test_configs_take_integers_and_flags():
    """`--configs` items: integers, and true / false for ScanConfig's flags (`staged_fwd`)."""
    from types import SimpleNamespace

    from benchmarks.scan_head_calls import parse_config

    module = SimpleNamespace(ScanConfig=dict)
    assert parse_config(module, "") is None
    assert parse_config(module, "block_t=4,staged_fwd=true,lane_sums=False") == {
        "block_t": 4, "staged_fwd": True, "lane_sums": False}

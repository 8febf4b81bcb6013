"""benchmarks/metrics_time.py writes its timing files."""

import json

import torch

from benchmarks import metrics_time


def test_quick_run_writes_a_median(tmp_path):
    out = metrics_time.main(["--quick", "--out", str(tmp_path / "m")])
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["rows"] == 300 and result["metrics"] > 0
    assert 0 < result["median_seconds"] <= max(result["seconds"])
    assert "median" in out.with_suffix(".md").read_text()
    # auto: the scores on the GPU when there is one, as training passes them
    assert result["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")


def test_device_option_is_recorded(tmp_path):
    out = metrics_time.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "m")])
    assert json.loads(out.with_suffix(".json").read_text())["device"] == "cpu"
    assert "scores on cpu" in out.with_suffix(".md").read_text()

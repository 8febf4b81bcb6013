"""benchmarks/scan_launches.py: the scan's launches, timed (GPU only)."""

import pytest
import torch

from benchmarks import scan_launches


def test_refuses_to_run_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="GPU machine"):
        scan_launches.main(["--out", str(tmp_path / "l")])


@pytest.mark.gpu
def test_times_each_launch_of_a_scan_step(tmp_path):
    pytest.importorskip("triton")
    out = scan_launches.main(["--launches", "3", "--repeats", "1", "--out", str(tmp_path / "l")])
    rows = {r["kernel"]: r for r in __import__("json").loads(out.with_suffix(".json")
                                                             .read_text())["rows"]}
    assert {"_scan_bwd_kernel", "_sum_middle_kernel"} <= set(rows)
    assert all(r["triton_us"] > 0 and r["compiled_launcher_us"] > 0 for r in rows.values())


def test_a_call_without_a_length_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="expected variant:L"):
        scan_launches.record_launches("head")

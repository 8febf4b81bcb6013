"""benchmarks/scan_host.py: both of the wrapper's paths timed, each the path it names."""

import json

import pytest


def test_times_the_eager_path_and_the_operators(tmp_path):
    pytest.importorskip("triton")
    import torch

    from benchmarks import scan_host
    from fusion.backends import triton_interpreted

    if not (torch.cuda.is_available() or triton_interpreted()):
        pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")

    out = scan_host.main(["--repeats", "2", "--warmup", "1", "--out", str(tmp_path / "host")])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 8  # 2 layouts x fwd / fwd_bwd x 2 paths
    for row in rows:
        assert row["us"] > 0
        if row["path"] == "eager":
            assert row["grad_fn"] == "_EagerScanBackward"
        else:  # the torch.library operator's autograd, as torch.compile runs it
            assert "fusion_scan_fwd" in row["grad_fn"]
    assert "| views | fwd | eager |" in out.with_suffix(".md").read_text()

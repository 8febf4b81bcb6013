"""benchmarks/kernel_report.py: the GPU micro-benchmarks' JSON and markdown pages."""

import json

import torch

from benchmarks.kernel_report import write_kernel_results


def test_writes_json_and_markdown_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Test GPU")
    out = tmp_path / "sub" / "bench"
    md = write_kernel_results(out, "Sums", "python benchmarks/x.py --sweep", "; why.",
                              [{"us": 1.5}], "| a |\n|---|")
    assert md == out.with_suffix(".md")
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["rows"] == [{"us": 1.5}]
    assert data["meta"]["command"] == f"python benchmarks/x.py --sweep --out {out}"
    assert data["meta"]["device"] == "Test GPU"
    assert md.read_text() == (f"# Sums on Test GPU\n\n`python benchmarks/x.py --sweep --out "
                              f"{out}`; why.\n\n| a |\n|---|\n")

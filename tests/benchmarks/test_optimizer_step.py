"""benchmarks/optimizer_step.py on the CPU: the update variants agree with the harness's."""

import json

from benchmarks import optimizer_step
from tests.fusion.triton_interpreter import run_interpreted


def test_variants_update_the_head_alike(tmp_path):
    out = optimizer_step.main(["--quick", "--out", str(tmp_path / "opt")])
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"fused", "fused_flat", "foreach", "copy"}  # no compile on the CPU
    assert report["groups"] == 4  # {SSM block, rest} x {decay, no decay}
    for name in ("fused_flat", "foreach"):
        assert rows[name]["max_ulp_diff_vs_first"] <= 8, rows[name]
    assert rows["copy"]["max_ulp_diff_vs_first"] is None
    # what the CPU cannot run is named, not dropped silently
    assert set(report["skipped"]) == {"compiled", "triton_flat", "triton_multi"}
    assert "Not run: compiled (" in out.with_suffix(".md").read_text()
    assert "| fused_flat |" in out.with_suffix(".md").read_text()


def test_a_different_update_shows_in_the_comparison(tmp_path, monkeypatch):
    """The agreement check can fail: a variant with another learning rate differs."""
    make = optimizer_step.make_variant

    def off_by_lr(name, groups, grads, cuda):
        if name == "foreach":
            groups = [{**g, "lr": g["lr"] * 2} for g in groups]
        return make(name, groups, grads, cuda)

    monkeypatch.setattr(optimizer_step, "make_variant", off_by_lr)
    report = optimizer_step.run(optimizer_step.OptimizerBenchConfig(
        variants=("fused", "foreach"), quick=True))
    assert report["rows"][1]["max_ulp_diff_vs_first"] > 1000


INTERPRETED = """
from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()
from benchmarks import optimizer_step

report = optimizer_step.run(optimizer_step.OptimizerBenchConfig(
    variants=("fused", "triton_flat", "triton_multi"), quick=True))
for row in report["rows"][1:]:
    assert row["max_ulp_diff_vs_first"] <= 8, report
assert [r["variant"] for r in report["rows"]] == ["fused", "triton_flat", "triton_multi"]
print("all cases match", report["rows"])
"""


def test_the_triton_prototypes_update_like_fused_adamw():
    """The Triton AdamW prototypes (flat groups; the parameters' own tensors, chunked) under
    Triton's interpreter (skips without Triton)."""
    run_interpreted(INTERPRETED)

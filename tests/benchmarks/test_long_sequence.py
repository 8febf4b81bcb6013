"""benchmarks/long_sequence.py runs end to end: real stores, real streamed training, its files.

Real parts: the `--quick` CPU mode in subprocesses (stores written with `features.store`,
annotations from `extract.synthetic`, `fusion.train` with stream=always and the instrumented
pass), the merge of two runs, and the one-line refusals. No timing is asserted: only the
structure of what the benchmark writes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.long_sequence import HEADS, main, merge
from features.errors import HarnessError
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "long_sequence.py"
LENGTHS = (16, 64)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two --quick runs at L 16 and 64, two heads each (all four heads between them)."""
    folder = tmp_path_factory.mktemp("long_sequence")
    outs = {}
    for name, heads in (("a", HEADS[:2]), ("b", HEADS[2:])):
        outs[name] = folder / name
        result = bench("--quick", "--lengths", *map(str, LENGTHS), "--heads", *heads,
                       "--out", str(outs[name]))
        assert result.returncode == 0, result.stderr[-3000:]
    return outs


def test_quick_run_writes_every_point_with_its_breakdown(runs: dict[str, Path]) -> None:
    data = json.loads(runs["a"].with_suffix(".json").read_text())
    meta = data["meta"]
    for key in ("device", "torch", "dtype", "batch", "clips", "video_dim", "text_dim",
                "token_layout", "command", "mamba_backend", "store_write_seconds"):
        assert key in meta, key
    assert meta["title"] == "CPU smoke run, not a speed figure"
    assert meta["dtype"] == "fp32" and meta["clips"] == 64 and meta["lengths"] == list(LENGTHS)
    assert "cls+patch" in meta["token_layout"] and "3137" in meta["token_layout"]
    assert set(meta["store_write_seconds"]) == {str(n) for n in LENGTHS}
    points = {(r["head"], r["seq_len"]): r for r in data["results"]}
    assert set(points) == {(h, n) for h in HEADS[:2] for n in LENGTHS}
    for (head, _), r in points.items():
        assert r["status"] == "ok", r
        assert r["backend"] == ("torch" if head == "mamba" else None)  # CPU's default scan
        assert r["clips_per_s"] > 0 and r["serial_clips_per_s"] > 0 and r["timed_steps"] > 0
        assert math.isclose(r["read_pct"] + r["h2d_pct"] + r["step_pct"], 100.0)
        assert r["peak_mem_mib"] is None  # no GPU
    table = runs["a"].with_suffix(".md").read_text()
    assert "CPU smoke run, not a speed figure" in table
    assert "## mamba (scan: torch)" in table and "## mlp" in table
    assert runs["a"].with_suffix(".png").stat().st_size > 10_000


def test_merge_joins_runs_and_refuses_other_settings(runs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    paths = tuple(p.with_suffix(".json") for p in runs.values())
    merged = merge(paths, tmp_path / "merged")
    assert [(r["head"], r["seq_len"]) for r in merged["results"]] == [
        (h, n) for h in HEADS for n in LENGTHS]
    assert json.loads((tmp_path / "merged.json").read_text()) == merged
    assert (tmp_path / "merged.png").exists() and "## transformer_12x12" in (
        tmp_path / "merged.md").read_text()
    other = json.loads(paths[1].read_text())
    other["meta"]["batch"] = 128
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(HarnessError, match=r"settings \['batch'\] differ"):
        merge((paths[0], tmp_path / "other.json"), tmp_path / "bad")


def test_points_past_the_budget_are_recorded_not_dropped(tmp_path: Path) -> None:
    data = main(["--quick", "--lengths", "16", "--max-seconds", "0", "--out",
                 str(tmp_path / "budget")])
    assert [r["status"] for r in data["results"]] == ["not run (time budget)"] * len(HEADS)
    assert "not run (time budget)" in (tmp_path / "budget.md").read_text()
    assert (tmp_path / "budget.png").exists()


def test_bad_sizes_are_refused_in_one_line(tmp_path: Path) -> None:
    line = one_error_line(bench("--quick", "--clips", "60", "--out", str(tmp_path / "x")))
    assert "--clips 60 is not a multiple of --val-clips 16" in line

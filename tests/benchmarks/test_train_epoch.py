"""benchmarks/train_epoch.py's `--quick` CPU mode in a subprocess (it replaces
`fusion.train.load_features` with random features, so never in the test process): each row
carries the epoch's seconds and its validation part, and the markdown table shows both. No
timing is asserted beyond validation being a part of the epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_reports_validation_seconds(tmp_path: Path) -> None:
    out = tmp_path / "train_epoch"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_epoch.py"),
                             "--quick", "--heads", "mlp", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["head"] == "mlp"
    assert 0 <= row["val_seconds"] <= row["epoch_seconds"], row
    header, rule, line = out.with_suffix(".md").read_text().splitlines()[-3:]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["head", "scan backend", "s/epoch (train + val)", "val s"]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(columns) == rule.count("---")
    assert float(cells[3]) == row["val_seconds"]
    # checkpoints written every epoch are timed apart from the one-time setup
    assert row["checkpoint_seconds_per_epoch"] > 0 and row["setup_seconds"] > 0, row
    assert float(cells[columns.index("checkpoint s/epoch")]) == row["checkpoint_seconds_per_epoch"]

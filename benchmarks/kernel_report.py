"""Results of the GPU kernel micro-benchmarks (`token_conv.py`, `partial_sums.py`): one
JSON with the run's device, torch version and command, and a markdown page."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_kernel_results(out: Path, heading: str, command: str, intro: str,
                         rows: list[dict], table: str) -> Path:
    """`out`.json ({"meta", "rows"}) and `out`.md (`heading` on the device, the command,
    `intro`, the table); the markdown path."""
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "command": f"{command} --out {out}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(
        f"# {heading} on {meta['device']}\n\n`{meta['command']}`{intro}\n\n{table}\n")
    return out.with_suffix(".md")

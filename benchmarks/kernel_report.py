"""Shared by the GPU micro-benchmarks: a step's device time as CUDA-graph replays
(`optimizer_step.py`, `classifier_gemm.py`), and their results (`token_conv.py`,
`partial_sums.py`, `classifier_gemm.py`): one JSON with the run's device, torch version and
command, and a markdown page."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


def device_ms(fn: Callable[[], object], steps: int, cuda: bool) -> float:
    """A step's time: CUDA-graph replays timed with events (CUDA), wall time (CPU)."""
    if not cuda:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - start) / steps * 1e3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / steps

"""Host time of one `selective_scan_triton` call, its kernel launches stubbed: the wrapper,
the autograd and the operator dispatch alone, on any machine.

    python benchmarks/scan_host.py                  # writes benchmarks/results/scan_host.*

Why (issue 18): at L <= 64 the scan table's rows are host-bound (the kernels take ~0.15 ms of a
~1.2 ms step), so the Python around the launches is what those rows measure. This replaces the
Triton kernels (`fusion.ssm_triton`'s two, `fusion.ssm_staged`'s, `fusion.partial_sums`') by
recorders (`benchmarks.sass.recording`: a launch costs nothing) and times calls on small CPU
tensors (b 2, d 16, n 16, L 16, bf16: their torch ops cost little), forward and forward +
backward, in the head's channels-last views and on (b, d, L) tensors, through both paths the
wrapper has: eager (`_EagerScan`, a plain autograd.Function) and the `torch.library` operators
(what `torch.compile` runs; forced here by reporting `torch.compiler.is_compiling()` as true).
Median microseconds of `--repeats` calls after `--warmup`. A CPU's figures, not a GPU host's:
compare the paths within one run. Results: `--out` .md/.json.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sass import markdown_table, recording  # noqa: E402
from features.config import cli  # noqa: E402


@dataclass
class ScanHostConfig:
    """Host microseconds of a scan call, launches stubbed, eager path vs operators."""

    repeats: int = 300
    warmup: int = 20
    out: Path | None = None


def scan_inputs(layout: str):
    """Leaves and a function making the call's (u, Δ, A, B, C) from them."""
    import torch

    b, d, n, L = 2, 16, 16, 16
    bf16 = {"dtype": torch.bfloat16, "requires_grad": True}
    A = -torch.rand(d, n).requires_grad_()
    if layout == "views":
        u, delta = torch.randn(b, L, d, **bf16), torch.rand(b, L, d, **bf16)
        bc = torch.randn(b, L, 2 * n, **bf16)
        return [u, delta, bc, A], lambda: (u.transpose(1, 2), delta.transpose(1, 2), A,
                                           bc[..., :n].transpose(1, 2),
                                           bc[..., n:].transpose(1, 2))
    u, delta = torch.randn(b, d, L, **bf16), torch.rand(b, d, L, **bf16)
    B, C = torch.randn(b, n, L, **bf16), torch.randn(b, n, L, **bf16)
    return [u, delta, B, C, A], lambda: (u, delta, A, B, C)


def time_path(path: str, layout: str, backward: bool, c: ScanHostConfig) -> dict:
    import torch

    import fusion.ssm_triton as st

    leaves, args = scan_inputs(layout)
    gy = torch.randn(2, 16, 16, dtype=torch.bfloat16)
    times, grad_fn = [], None
    traced = mock.patch.object(torch.compiler, "is_compiling", lambda: True)
    with traced if path == "operators" else contextlib.nullcontext():
        for i in range(c.warmup + c.repeats):
            started = time.perf_counter()
            y = st.selective_scan_triton(*args())
            if backward:
                for t in leaves:
                    t.grad = None
                y.backward(gy)
            if i >= c.warmup:
                times.append(time.perf_counter() - started)
            grad_fn = type(y.grad_fn).__name__
    return {"path": path, "layout": layout, "mode": "fwd_bwd" if backward else "fwd",
            "us": round(1e6 * statistics.median(times), 1), "grad_fn": grad_fn}


def measure(c: ScanHostConfig) -> list[dict]:
    import fusion.partial_sums as sums
    import fusion.ssm_triton as st

    staged = contextlib.nullcontext()
    if st.GLUON_READY:  # the default forward on (b, d, L) tensors here: the staged one
        from fusion import ssm_staged

        staged = recording(ssm_staged, ("scan_fwd_staged_kernel",))
    with recording(st, ("_scan_fwd_kernel", "_scan_bwd_kernel")), recording(
            sums, ("_sum_middle_kernel",)), staged:
        return [time_path(path, layout, backward, c) for layout in ("views", "contiguous")
                for backward in (False, True) for path in ("eager", "operators")]


def main(argv: list[str] | None = None) -> Path:
    c = cli(ScanHostConfig, args=argv)
    rows = measure(c)
    out = c.out or ROOT / "benchmarks" / "results" / "scan_host"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scan_host.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    data = {"command": command.strip(), "cpu": platform.processor() or platform.machine(),
            "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    columns = ["layout", "mode", "path", "us", "grad_fn"]
    lines = ["# Host time of a scan call, kernel launches stubbed", "",
             f"`{data['command']}` on {data['cpu']}: b 2, d 16, n 16, L 16, bf16; median "
             f"microseconds of {c.repeats} calls.", "",
             *markdown_table(columns, [[r[k] for k in columns] for r in rows])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

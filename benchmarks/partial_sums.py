"""The scan backward's partial sums: aten sums and casts (before) vs `fusion.partial_sums`.

    python benchmarks/partial_sums.py --out benchmarks/results/partial_sums_h200   # one GPU
    python benchmarks/partial_sums.py --sweep --out /tmp/partial_sums_sweep        # tiles

Why (issue 18): the Triton scan's backward writes per-row dA, dD, dbias (b, d, ·) and dB, dC
partials per block of 16 channels (b, d / 16, n, L), summed after the kernel. As five aten
sums and three casts a call they were 10 of the 13 aten reductions (0.15 ms together) of the
3.74 ms compiled EK100 step. Here, on the Mamba head's two EK100 scan calls (video b 128,
L 16; questions b 256, L 32; d 1536, n 16):
the time of the old path (the sums and casts as `fusion.ssm_triton` did them before) and of
`sum_middle` (two launches: the per-row buffer, the stacked dB/dC buffer), median of
`triton.testing.do_bench`, and the largest relative difference between them. `--sweep` times
`sum_middle`'s tiles (BLOCK_K, BLOCK_Q, warps) on each of the two buffers instead.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kernel_report import write_kernel_results  # noqa: E402
from features.config import cli  # noqa: E402

CALLS = (("video", 128, 16), ("questions", 256, 32))  # (name, rows, tokens) of the head
D, N, BLOCK_D = 1536, 16, 16  # d_inner, states, the backward's channels a program
SWEEP = tuple(itertools.product((4, 16, 64), (32, 64, 128), (1, 2, 4)))


@dataclass
class PartialSumsBenchConfig:
    out: Path = ROOT / "benchmarks/results/partial_sums"
    sweep: bool = False
    """Time sum_middle's tiles instead of old vs new."""


def buffers(b: int, L: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    blocks = D // BLOCK_D
    rows = torch.randn(b, D * (N + 2), device="cuda", generator=g)
    dBC = torch.randn(2, b, blocks, N, L, device="cuda", generator=g)
    outs_rows = (torch.empty(D, N, device="cuda"), torch.empty(D, device="cuda"),
                 torch.empty(D, device="cuda"))
    outs_bc = tuple(torch.empty(b, N, L, device="cuda", dtype=torch.bfloat16) for _ in "BC")
    return {"rows": rows.view(1, b, -1), "dBC": dBC.view(2 * b, blocks, N * L),
            "outs_rows": outs_rows, "outs_bc": outs_bc, "b": b, "L": L}


def old_path(t: dict) -> tuple:
    b, rows, dBC = t["b"], t["rows"][0], t["dBC"].view(2, t["b"], -1, N, t["L"])
    dA, dD, dbias = rows[:, :D * N].view(b, D, N), rows[:, D * N:D * (N + 1)], rows[:, -D:]
    return (dA.sum(0), dD.sum(0), dbias.sum(0), dBC[0].sum(1).bfloat16(),
            dBC[1].sum(1).bfloat16())


def new_path(t: dict) -> tuple:
    from fusion.partial_sums import sum_middle

    sum_middle(t["rows"], *t["outs_rows"])
    sum_middle(t["dBC"], *t["outs_bc"])
    return (*t["outs_rows"], *t["outs_bc"])


def compare() -> tuple[list[dict], str]:
    from triton.testing import do_bench

    rows, lines = [], ["| call | MB read | old µs | new µs | new TB/s | max rel. diff |",
                       "|---|---|---|---|---|---|"]
    for name, b, L in CALLS:
        t = buffers(b, L)
        diff = max(((o.float() - n.float()).abs().max() / o.float().abs().max()).item()
                   for o, n in zip(old_path(t), new_path(t), strict=True))
        old = do_bench(lambda t=t: old_path(t), warmup=50, rep=300) * 1e3
        new = do_bench(lambda t=t: new_path(t), warmup=50, rep=300) * 1e3
        mb = (t["rows"].numel() + t["dBC"].numel()) * 4 / 1e6
        rows.append({"call": name, "b": b, "L": L, "mb_read": round(mb, 1),
                     "old_us": round(old, 1), "new_us": round(new, 1),
                     "max_rel_diff": diff})
        lines.append(f"| {name} (b {b}, L {L}) | {mb:.1f} | {old:.1f} | {new:.1f} | "
                     f"{mb / new:.2f} | {diff:.1e} |")  # MB per µs = TB/s
        print(lines[-1], flush=True)
    return rows, "\n".join(lines)


def sweep() -> tuple[list[dict], str]:
    from triton.testing import do_bench

    from fusion.partial_sums import sum_middle

    rows, lines = [], ["| call | buffer (P, K, Q) | BLOCK_K | BLOCK_Q | warps | µs |",
                       "|---|---|---|---|---|---|"]
    for name, b, L in CALLS:
        t = buffers(b, L)
        for buf, outs in (("rows", "outs_rows"), ("dBC", "outs_bc")):
            x = t[buf]
            for tiles in SWEEP:
                us = do_bench(lambda x=x, o=t[outs], tiles=tiles: sum_middle(x, *o, tiles=tiles),
                              warmup=20, rep=100) * 1e3
                rows.append({"call": name, "buffer": buf, "shape": list(x.shape),
                             "tiles": list(tiles), "us": round(us, 1)})
                lines.append(f"| {name} | {buf} {tuple(x.shape)} | "
                             + " | ".join(map(str, tiles)) + f" | {us:.1f} |")
    print("\n".join(lines), flush=True)
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    c = cli(PartialSumsBenchConfig, args=argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/partial_sums.py times CUDA kernels: run it on a GPU machine")
    rows, table = (sweep if c.sweep else compare)()
    command = "python benchmarks/partial_sums.py" + (" --sweep" if c.sweep else "")
    why = (__doc__ or "").split("\n\n")[2].strip().replace("\n", " ")
    return write_kernel_results(c.out, "Scan backward partial sums", command, "\n\n" + why,
                                rows, table)


if __name__ == "__main__":
    main()

"""Registers, spills and instruction mix of the Triton scan kernels, compiled for Hopper on any
machine (no GPU needed, only Triton).

    python benchmarks/scan_sass.py                         # the head's call, default tiles
    python benchmarks/scan_sass.py --block-t-bwd 8 --maxnreg-bwd 255 --out /tmp/sass_t8

Why (issue 18): Nsight Compute found the scan backward latency-bound by its register use (255
registers a thread, 12.5 % occupancy, spills: `benchmarks/results/ncu_scan_h200.txt`). Register
use, spill bytes and the instruction mix are properties of the compiled kernel, not of the run:
this compiles `fusion.ssm_triton`'s two kernels for sm_90 with `triton.compile` (the `ptxas`
bundled with Triton) and reads them back with the `cuobjdump` from the same wheel, so a kernel
change can be judged here before it spends GPU time.

The compiles are of recorded launches: `fusion.ssm_triton.selective_scan_triton` runs forward
and backward on CPU tensors shaped like the Mamba head's one-branch call (bf16 u, Δ, z as
transposed views of (1, L, ·) projections, B and C slices of one (1, L, 96) tensor with unit
state stride; fp32 A, D, Δ bias; no `lengths`) unless the flags say otherwise, with its two
kernels swapped for recorders (`benchmarks.sass`), and each launch is compiled as Triton's
launcher would specialise it: the wrapper's own tiles, flags and register cap. Checked
against Nsight Compute on the H200: the kernels before the unit-stride change compile here
to 128 (forward) and 255 (backward) registers, what `ncu_scan_h200.txt` reports for the
head's launches. Instruction counts are static (each instruction of the SASS once; the
chunk loop's body is unrolled BLOCK_T times), not executed counts. A second table counts the
main loop alone (`benchmarks.sass.main_loop`: one chunk, what a kernel repeats L / BLOCK_T
times), where the per-step cost shows without the prologue and tails.

A caution from the fifteenth session (issue18_status.md): fewer instructions did not always
mean faster. B and C in float32 cut the forward's loop by 19 % here and ran twice as slow on
the H200 (its loads were no longer hidden), so counts here pick candidates, the GPU decides.

Results: a markdown table at `--out` (+ `.json`); default `benchmarks/results/scan_sass`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sass import (  # noqa: E402
    LOOP_OPS,
    OPS,
    compile_launch,
    markdown_table,
    recording,
    resources,
)
from features.config import cli  # noqa: E402


@dataclass
class SassConfig:
    """Compile the scan kernels for sm_90 and report their resources."""

    L: int = 32
    d: int = 2048
    n: int = 16
    """Shape of the recorded call (one row)."""
    block_t: int | None = None
    block_d_fwd: int | None = None
    block_d_bwd: int | None = None
    num_warps_fwd: int | None = None
    num_warps_bwd: int | None = None
    block_t_bwd: int | None = None
    ckpt_t: int | None = None
    """Tile overrides, as `fusion.ssm_triton.ScanConfig` (None: its heuristic)."""
    maxnreg_fwd: int | None = None
    maxnreg_bwd: int | None = None
    """Register caps, as `ScanConfig.maxnreg_fwd` / `maxnreg_bwd`: the launches carry them to
    ptxas (None: Triton's choice forward, `backward_maxnreg` backward)."""
    lane_sums: bool = True
    """As `ScanConfig.lane_sums`: the backward's sums over channels in PTX where it can."""
    staged_fwd: bool | None = None
    """As `ScanConfig.staged_fwd`: the forward from `fusion.ssm_staged` (Gluon) where it
    applies (`--layout contiguous`; by default where Gluon is ready, `GLUON_READY`)."""
    has_d: bool = True
    has_z: bool = True
    has_bias: bool = True
    softplus: bool = True
    has_len: bool = False
    """Kernel flags (the head's one-branch call by default)."""
    layout: Literal["views", "contiguous"] = "views"
    """`views`: the head's call (u, Δ, z transposed views, B and C slices with contiguous
    states); `contiguous`: (1, d, L) u, Δ, z and (1, n, L) B, C tensors, as
    `scan_backends.py`'s `head` variant passes them (the wrapper copies B and C to contiguous
    states, so both layouts compile with unit state stride)."""
    out: Path | None = None


def recorded_launches(c: SassConfig) -> list[tuple[str, object, tuple, dict]]:
    """(name, kernel, args, kwargs) of the forward and backward launches of one call."""
    import torch

    import fusion.partial_sums as sums
    import fusion.ssm_triton as st

    L, d, n = c.L, c.d, c.n
    bf16 = {"dtype": torch.bfloat16, "requires_grad": True}
    if c.layout == "views":
        xz = torch.zeros(1, L, 2 * d, **bf16)  # in_proj's output: u and z its halves
        u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
        delta = torch.zeros(1, L, d, **bf16).transpose(1, 2)
        bc = torch.zeros(1, L, 64 + 2 * n, **bf16)  # x_proj's output, B and C its slices
        B, C = bc[..., 64:64 + n].transpose(1, 2), bc[..., 64 + n:].transpose(1, 2)
        leaves = [xz, delta, bc]
    else:
        u, z, delta = (torch.zeros(1, d, L, **bf16) for _ in range(3))
        B, C = torch.zeros(1, n, L, **bf16), torch.zeros(1, n, L, **bf16)
        leaves = [u, z, delta, B, C]
    A = torch.zeros(d, n, requires_grad=True)
    D = torch.zeros(d, requires_grad=True) if c.has_d else None
    bias = torch.zeros(d, requires_grad=True) if c.has_bias else None
    lengths = torch.full((1,), L, dtype=torch.int32) if c.has_len else None
    # every ScanConfig field by name (a field added there and not here fails here, loudly)
    config = st.ScanConfig(**{f.name: getattr(c, f.name) for f in fields(st.ScanConfig)})
    # the backward's partial sums (`fusion.partial_sums`) recorded too, so nothing launches
    with contextlib.ExitStack() as stack:
        recorders = stack.enter_context(recording(st, ("_scan_fwd_kernel", "_scan_bwd_kernel")))
        stack.enter_context(recording(sums, ("_sum_middle_kernel",)))
        if c.staged_fwd or (c.staged_fwd is None and st.GLUON_READY):
            from fusion import ssm_staged

            recorders |= stack.enter_context(recording(ssm_staged, ("scan_fwd_staged_kernel",)))
        y = st.selective_scan_triton(u, delta, A, B, C, D, z if c.has_z else None, bias,
                                     c.softplus, lengths=lengths, config=config)
        leaves += [t for t in (A, D, bias) if t is not None]
        torch.autograd.grad(y, leaves, torch.zeros_like(y), allow_unused=True)
    forward = next(r for name, r in recorders.items() if "fwd" in name and r.launches)
    backward = recorders["_scan_bwd_kernel"]
    (fwd,), (bwd,) = forward.launches, backward.launches
    return [("forward", forward.kernel, *fwd), ("backward", backward.kernel, *bwd)]


def measure(c: SassConfig) -> list[dict]:
    """Both kernels as the wrapper launches them (tiles, flags, register cap)."""
    rows = []
    for name, kernel, args, kwargs in recorded_launches(c):
        compiled = compile_launch(kernel, args, kwargs)
        staged = "STAGE" in kwargs  # `fusion.ssm_staged`: chunks of 8, 16 channels a warp
        rows.append({"kernel": name + (" (staged)" if staged else ""),
                     "BLOCK_T": 8 if staged else kwargs["BLOCK_T"],
                     "BLOCK_D": 16 * kwargs["WARPS"] if staged else kwargs["BLOCK_D"],
                     "warps": kwargs["num_warps"], "maxnreg": kwargs.get("maxnreg"),
                     **resources(compiled.asm["cubin"])})
    return rows


def main(argv: list[str] | None = None) -> Path:
    c = cli(SassConfig, args=argv)
    rows = measure(c)
    out = c.out or ROOT / "benchmarks" / "results" / "scan_sass"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scan_sass.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    columns = ["kernel", "BLOCK_T", "BLOCK_D", "warps", "maxnreg", "registers",
               "stack_bytes", "shared_bytes", "instructions", *OPS]
    flags = (f"D {c.has_d}, z {c.has_z}, Δ bias {c.has_bias}, softplus {c.softplus}, "
             f"lengths {c.has_len}, {c.layout} layout")
    lines = ["# Scan kernels compiled for sm_90 (static SASS counts)", "",
             f"`{command.strip()}`; L {c.L}, d {c.d}, n {c.n}; {flags}.", "",
             *markdown_table(columns, [[r[k] for k in columns] for r in rows]), "",
             "Main loop (a chunk; static, a nested run-up loop counted once: "
             "`benchmarks.sass.main_loop`):", "",
             *markdown_table(["kernel", "instructions", *LOOP_OPS],
                             [[r["kernel"], r["main_loop"]["instructions"],
                               *(r["main_loop"][op] for op in LOOP_OPS)] for r in rows])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"config": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(c).items()}, "rows": rows},
        indent=1))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

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

The compile matches a launch of the Mamba head's one-branch call (bf16 u, Δ, B, C, z, gradient;
fp32 A, D, Δ bias; B and C views with unit state stride; no `lengths`) unless the flags say
otherwise; pointers are taken as 16-byte aligned and L, d, n as Triton's launcher would
specialise them (divisible by 16 or not). Checked against Nsight Compute on the H200: the
kernels before the unit-stride change compile here to 128 (forward) and 255 (backward)
registers, what `ncu_scan_h200.txt` reports for the head's launches. Instruction counts are
static (each instruction of the SASS once; the chunk loop's body is unrolled BLOCK_T times),
not executed counts.

Results: a markdown table at `--out` (+ `.json`); default `benchmarks/results/scan_sass`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402

OPS = ("SHFL", "MUFU", "FFMA", "FMUL", "FADD", "LDG", "STG", "LDL", "STL", "LDS", "STS", "BAR")
"""SASS opcodes reported: shuffles, special functions (exp2, rcp), fp32 arithmetic, global,
local (spill) and shared memory traffic, barriers."""

FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "state_ptr", "dA_ptr", "dB_ptr", "dC_ptr",
                 "dD_ptr", "dbias_ptr"}


@dataclass
class SassConfig:
    """Compile the scan kernels for sm_90 and report their resources."""

    L: int = 32
    d: int = 2048
    n: int = 16
    """Shape the tiles are chosen for (`fusion.ssm_triton.scan_config`) and specialised on."""
    block_t: int | None = None
    block_d_fwd: int | None = None
    block_d_bwd: int | None = None
    num_warps_fwd: int | None = None
    num_warps_bwd: int | None = None
    block_t_bwd: int | None = None
    """Tile overrides, as `fusion.ssm_triton.ScanConfig` (None: its heuristic)."""
    maxnreg_fwd: int | None = None
    maxnreg_bwd: int | None = None
    """Register caps passed to ptxas (forward None: Triton's choice; backward None: the
    launch's cap, `ScanConfig.maxnreg_bwd`)."""
    has_d: bool = True
    has_z: bool = True
    has_bias: bool = True
    softplus: bool = True
    has_len: bool = False
    states_unit: bool = True
    """Kernel flags (the head's one-branch call by default)."""
    out: Path | None = None


def tool(name: str) -> str:
    """A binary from Triton's NVIDIA backend (`ptxas`, `cuobjdump`)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path}: not found; this Triton wheel has no NVIDIA binaries")
    return str(path)


def compile_kernel(kernel, constants: dict, shape: tuple[int, int, int], warps: int,
                   maxnreg: int | None):
    """`triton.compile` of one kernel for sm_90, arguments typed as a launch would type them."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sizes = dict(zip(("L", "d", "n"), shape, strict=True))
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = ("*i32" if name == "len_ptr" else
                               "*fp32" if name in FP32_POINTERS else "*bf16")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in sizes and sizes[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def resources(cubin: bytes) -> dict:
    """Registers, stack and shared bytes (`cuobjdump -res-usage`) and SASS opcode counts."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", str(path)], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([tool("cuobjdump"), "-sass", str(path)], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", usage))
    ops = Counter(m.group(1) for m in re.finditer(
        r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.MULTILINE))
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
            "shared_bytes": int(fields["SHARED"]), "instructions": sum(ops.values()),
            **{op: ops[op] for op in OPS}}


def measure(c: SassConfig) -> list[dict]:
    """Both kernels with the tiles and register cap a launch would use (`scan_config`)."""
    import fusion.ssm_triton as st

    tiles = st.scan_config(c.L, c.d, c.n, st.ScanConfig(
        c.block_t, c.block_d_fwd, c.block_d_bwd, c.num_warps_fwd, c.num_warps_bwd,
        c.block_t_bwd, c.maxnreg_bwd))
    flags = {"HAS_D": c.has_d, "HAS_Z": c.has_z, "HAS_BIAS": c.has_bias,
             "SOFTPLUS": c.softplus, "HAS_LEN": c.has_len, "STATES_UNIT": c.states_unit,
             "BLOCK_N": tiles["BLOCK_N"]}
    rows = []
    for name, kernel, extra, block_t, block_d, warps, maxnreg in (
            ("forward", st._scan_fwd_kernel,
             {"STORE_STATES": True, "CKPT_T": tiles["BLOCK_T_BWD"]}, tiles["BLOCK_T"],
             tiles["BLOCK_D_FWD"], tiles["WARPS_FWD"], c.maxnreg_fwd),
            ("backward", st._scan_bwd_kernel, {}, tiles["BLOCK_T_BWD"], tiles["BLOCK_D_BWD"],
             tiles["WARPS_BWD"], st.backward_maxnreg(tiles, c.states_unit))):
        constants = {**flags, **extra, "BLOCK_T": block_t, "BLOCK_D": block_d}
        compiled = compile_kernel(kernel, constants, (c.L, c.d, c.n), warps, maxnreg)
        rows.append({"kernel": name, "BLOCK_T": block_t, "BLOCK_D": block_d,
                     "warps": warps, "maxnreg": maxnreg, **resources(compiled.asm["cubin"])})
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
             f"lengths {c.has_len}, unit state stride {c.states_unit}")
    lines = ["# Scan kernels compiled for sm_90 (static SASS counts)", "",
             f"`{command.strip()}`; L {c.L}, d {c.d}, n {c.n}; {flags}.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in columns) + " |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"config": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(c).items()}, "rows": rows},
        indent=1))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

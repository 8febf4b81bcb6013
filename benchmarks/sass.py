"""Triton kernel launches recorded on CPU tensors, compiled for Hopper (sm_90) as Triton's
launcher would specialise them, and read back: registers, spills, instruction mix. No GPU
needed, only Triton (its bundled `ptxas` and `cuobjdump`).

Used by `benchmarks/scan_sass.py` and `benchmarks/conv_sass.py`: a kernel module's wrapper
runs on CPU tensors with its kernels swapped for recorders (`recording`), so each compile
gets exactly the arguments, flags, tiles and register cap the wrapper would launch with.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

OPS = ("SHFL", "MUFU", "FFMA", "FMUL", "FADD", "LDG", "STG", "LDL", "STL", "LDS", "STS", "BAR")
"""SASS opcodes reported: shuffles, special functions (exp2, rcp), fp32 arithmetic, global,
local (spill) and shared memory traffic, barriers."""
LOOP_OPS = (*OPS, "SHF", "PRMT")
"""Also counted in the main loop: shifts and byte permutes (16-bit unpacking, addresses)."""

_INSTRUCTION = re.compile(  # address, opcode, its suffixes (.E.64 ...), operands
    r"^\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^\s;]*)[ \t]*([^;\n]*);",
    re.MULTILINE)


def tool(name: str) -> str:
    """A binary from Triton's NVIDIA backend (`ptxas`, `cuobjdump`)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path}: not found; this Triton wheel has no NVIDIA binaries")
    return str(path)


class Recorder:
    """Stands in for a Triton kernel: `kernel[grid](*args, **kwargs)` records the launch;
    `kernel` is the one it replaces (what a recorded launch is compiled with)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


@contextlib.contextmanager
def recording(module: ModuleType, names: tuple[str, ...]) -> Iterator[dict[str, Recorder]]:
    """`module`'s kernels `names` replaced by recorders for the block, then restored."""
    recorders = {name: Recorder(getattr(module, name)) for name in names}
    try:
        for name, recorder in recorders.items():
            setattr(module, name, recorder)
        yield recorders
    finally:
        for name, recorder in recorders.items():
            setattr(module, name, recorder.kernel)


def launch_signature(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constants, attrs, options) of one recorded launch, specialised as Triton's
    launcher would: integer arguments equal to 1 become constants, multiples of 16 and
    16-byte aligned pointers get divisibility hints; `do_not_specialize` arguments neither."""
    import torch

    options = {key: kwargs[key] for key in ("num_warps", "num_stages", "maxnreg")
               if key in kwargs}
    constants = {key: value for key, value in kwargs.items() if key not in options}
    dtypes = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32",
              torch.int32: "*i32", torch.int64: "*i64"}
    fixed = set(kernel.do_not_specialize)  # names, or indices in older Triton
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args, strict=False)):
        free = name not in fixed and i not in fixed
        if isinstance(value, torch.Tensor):
            signature[name] = dtypes[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1 and free:
            signature[name], constants[name] = "constexpr", 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0 and free:
                attrs[(i,)] = [["tt.divisibility", 16]]
    for name in constants:
        signature[name] = "constexpr"
    return signature, constants, attrs, options


def compile_launch(kernel, args: tuple, kwargs: dict):
    """`triton.compile` for sm_90 of one recorded launch (`launch_signature`), with the
    launch's options (warps, register cap); Triton or Gluon kernels."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constants, attrs, options = launch_signature(kernel, args, kwargs)
    if getattr(kernel, "is_gluon", lambda: False)():  # a Gluon kernel (`fusion.ssm_staged`)
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
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
    ops = opcodes(sass)
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
            "shared_bytes": int(fields["SHARED"]), "instructions": sum(ops.values()),
            **{op: ops[op] for op in OPS}, "main_loop": main_loop(sass)}


def opcodes(sass: str) -> Counter:
    """Opcode counts (suffixes dropped: LDG.E.128 is LDG) of `cuobjdump -sass` text."""
    return Counter(m.group(2) for m in _INSTRUCTION.finditer(sass))


def main_loop(sass: str) -> dict:
    """Opcode counts of the kernel's main loop, static: the instructions from the target of
    its longest backward branch to that branch (a loop nested in it counted once). Where a
    kernel's time is spent per iteration (a scan's chunk), which whole-kernel counts blur
    with the prologue and tails. Empty counts when the kernel has no loop."""
    instructions = [(int(m.group(1), 16), m.group(2), m.group(4))
                    for m in _INSTRUCTION.finditer(sass)]
    loops = [(int(target.group(1), 16), address) for address, op, operands in instructions
             if op == "BRA" and (target := re.search(r"0x([0-9a-f]+)", operands))
             and int(target.group(1), 16) < address]
    start, end = max(loops, key=lambda loop: loop[1] - loop[0], default=(0, -1))
    ops = Counter(op for address, op, _ in instructions if start <= address <= end)
    return {"instructions": sum(ops.values()), **{op: ops[op] for op in LOOP_OPS}}


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines; None cells empty."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join("" if x is None else str(x) for x in row) + " |"
               for row in rows])

"""Registers and spills of the token-convolution kernels, compiled for Hopper on any machine
(no GPU needed, only Triton).

    python benchmarks/conv_sass.py                          # the head's calls, default tiles
    python benchmarks/conv_sass.py --block-d-bwd 128        # the backward's old 8 x 128 tiles

Why (issue 18): the backward's one-warp 8 x 128 tiles spilled (255 registers and 376 bytes of
stack a thread at the question call); 8 x 64 tiles did not and were faster on the H200 at
every size swept (`benchmarks/results/token_conv_h200_sweep_s8.md`). A spill is a property of
the compiled kernel: this runs `fusion.conv_triton.token_conv_triton` forward and backward on
CPU tensors with the kernels' launches recorded instead of run, compiles each recorded launch
for sm_90 as Triton's launcher would specialise it (integer arguments equal to 1 become
constants, multiples of 16 and 16-byte aligned pointers get divisibility hints) and reads
registers, stack and the instruction mix back (`benchmarks.sass`).

Calls: the Mamba layer's causal k = 4 convolution with SiLU on a channel half of in_proj's
(b, L, 4096) output, and eq. 5's centred k = 3 one on (b, L, 1024) inputs, bf16 with float32
weights, at the EK100 video (128, 16) and question (256, 32) sizes (`--quick`: the question
SiLU call only). Results: `--out` .md/.json (default `benchmarks/results/conv_sass`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sass import compile_launch, markdown_table, recording, resources  # noqa: E402
from features.config import cli  # noqa: E402

CALLS = (  # b, L, channels, k, causal, activation
    (128, 16, 2048, 4, True, "silu"), (256, 32, 2048, 4, True, "silu"),
    (128, 16, 1024, 3, False, "none"), (256, 32, 1024, 3, False, "none"))
COLUMNS = ("registers", "stack_bytes", "instructions", "LDG", "STG", "LDL", "STL")


@dataclass
class ConvSassConfig:
    """Compile the token-convolution kernels of the head's calls for sm_90."""

    block_l_fwd: int | None = None
    block_l_bwd: int | None = None
    block_d: int | None = None
    block_d_bwd: int | None = None
    num_warps_fwd: int | None = None
    num_warps_bwd: int | None = None
    """Tile overrides, as `fusion.conv_triton.ConvConfig` (None: its default)."""
    quick: bool = False
    out: Path | None = None


def recorded_launches(call: tuple, config) -> list[tuple[str, object, tuple, dict]]:
    """(name, kernel, args, kwargs) of each launch one forward + backward makes."""
    import torch

    import fusion.conv_triton as ct

    b, L, d, k, causal, activation = call
    wide = 2 * d if activation == "silu" else d  # SiLU: a channel half of in_proj's output
    x = torch.zeros(b, L, wide, dtype=torch.bfloat16)[..., :d].requires_grad_()
    weight = torch.zeros(d, 1, k, requires_grad=True)
    bias = torch.zeros(d, requires_grad=True)
    with recording(ct, ("_conv_fwd_kernel", "_conv_grad_kernel")) as recorders:
        y = ct.token_conv_triton(x, weight, bias, causal=causal, activation=activation,
                                 config=config)
        torch.autograd.grad(y, [x, weight, bias], torch.zeros_like(y))
    forward, grad = recorders["_conv_fwd_kernel"], recorders["_conv_grad_kernel"]
    (fwd, dx), (dw,) = forward.launches, grad.launches
    return [("forward", forward.kernel, *fwd), ("grad", grad.kernel, *dw),
            ("dx", forward.kernel, *dx)]


def measure(c: ConvSassConfig) -> list[dict]:
    from fusion.conv_triton import DEFAULT_CONFIG

    overrides = {f.name: getattr(c, f.name) for f in dataclasses.fields(ConvSassConfig)
                 if f.name not in ("quick", "out") and getattr(c, f.name) is not None}
    config = dataclasses.replace(DEFAULT_CONFIG, **overrides)
    rows = []
    for call in CALLS[1:2] if c.quick else CALLS:
        for name, kernel, args, kwargs in recorded_launches(call, config):
            compiled = compile_launch(kernel, args, kwargs)
            rows.append({"call": list(call), "kernel": name, "BLOCK_L": kwargs["BLOCK_L"],
                         "BLOCK_D": kwargs["BLOCK_D"], "warps": kwargs["num_warps"],
                         **resources(compiled.asm["cubin"])})
    return rows


def main(argv: list[str] | None = None) -> Path:
    c = cli(ConvSassConfig, args=argv)
    rows = measure(c)
    out = c.out or ROOT / "benchmarks" / "results" / "conv_sass"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/conv_sass.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    header = ["b, L, d", "k, activation", "kernel", "BLOCK_L", "BLOCK_D", "warps", *COLUMNS]
    table = [[f"{r['call'][0]}, {r['call'][1]}, {r['call'][2]}",
              f"{r['call'][3]}, {r['call'][5]}", r["kernel"], r["BLOCK_L"], r["BLOCK_D"],
              r["warps"], *(r[key] for key in COLUMNS)] for r in rows]
    lines = ["# Token-convolution kernels compiled for sm_90 (static SASS counts)", "",
             f"`{command.strip()}`; bf16 x, float32 weight and bias.", "",
             *markdown_table(header, table)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "rows": rows},
                                                   indent=1))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

"""Where the compiled Mamba step moves memory, read from its graphs on any machine (no GPU).

    python benchmarks/step_graphs.py                  # EK100 sizes: batch 128, d_model 1024
    python benchmarks/step_graphs.py --min-mb 0 --quick

Why (issue 18): a 31 us `triton_poi_fused_cat_transpose` kernel in the compiled step's GPU
profile was blamed on the wrong concatenation for a session; kernel names do not say which
line of the head a kernel comes from, the graphs do. This traces the head under
`torch.compile` with a backend that stops at AOTAutograd's partition, so nothing runs (fake
tensors): the forward and backward graphs inductor would receive, at EK100 sizes, in seconds
on a CPU. It lists their data-movement operators (concatenations, copies, casts, pads) with
the size of what they write and the head's source line they come from.

Caveats: the scan runs as its custom operators (`fusion::scan_fwd`/`scan_bwd`, traced
through their fake implementations; `TRITON_INTERPRET=1` lets the triton backend be chosen
without a GPU), but the token convolutions are the torch backend's (conv1d on transposed
views): their transposes and copies are this tool's, not the GPU step's. Inductor's fusion
happens after this point, so a listed copy may fuse into a neighbour. bf16 autocast as on
CUDA. Results: `--out` .md/.json (default `benchmarks/results/step_graphs`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402

MOVES = ("cat", "clone", "copy", "_to_copy", "constant_pad_nd", "index_put", "scatter",
         "slice_scatter", "select_scatter", "new_zeros", "zeros", "full")
"""aten operators that write memory without arithmetic worth the name."""


@dataclass
class StepGraphsConfig:
    """List the data-movement operators of the compiled Mamba step's graphs."""

    batch_size: int = 128
    video_shape: tuple[int, int] = (16, 1024)
    text_shape: tuple[int, int] = (32, 768)
    d_model: int | None = None
    """The head's width (None: the preset's, 1024)."""
    min_mb: float = 1.0
    """Only operators writing at least this many MB."""
    quick: bool = False
    """Tiny sizes (tests)."""
    out: Path | None = None


class _Captured(Exception):
    """Raised by the partitioner once both graphs are in hand: nothing needs to run."""


def step_graphs(c: StepGraphsConfig) -> dict:
    """AOTAutograd's forward and backward graph modules of the compiled head's step."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    import fusion.heads.mamba as mamba
    from benchmarks.profile_step import ProfileConfig, random_batch
    from fusion.token_conv import token_conv
    from fusion.train import HeadConfig, TrainConfig, build_training, step_loss

    sizes = ProfileConfig(batch_size=4, video_shape=(16, 64), text_shape=(32, 48)) if c.quick \
        else ProfileConfig(batch_size=c.batch_size, video_shape=c.video_shape,
                           text_shape=c.text_shape)
    cpu = torch.device("cpu")
    config = TrainConfig(fusion="mamba", batch_size=sizes.batch_size, epochs=1,
                         head=HeadConfig(backend="triton",
                                         d_model=64 if c.quick else c.d_model))
    batch = random_batch(sizes, cpu)
    dims = {k: int(v.shape[-1]) for k, v in batch.inputs.items()}
    model, _, _ = build_training(config, dims, {"num_verbs": 97, "num_nouns": 300}, 1, cpu)
    model.train()
    captured = {}

    def partition(joint, inputs, **kwargs):
        captured["forward"], captured["backward"] = min_cut_rematerialization_partition(
            joint, inputs, **kwargs)
        raise _Captured

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=lambda g, _: g,
                                     partition_fn=partition)

    convolve = mamba.token_conv
    mamba.token_conv = lambda *args, backend=None, **kwargs: token_conv(
        *args, backend="torch", **kwargs)  # the triton one would run under the interpreter
    try:
        torch._dynamo.reset()
        step_loss(torch.compile(model, backend=backend, fullgraph=True), batch, config,
                  amp=True)
    except Exception as error:  # dynamo wraps what the backend raises
        if "forward" not in captured:
            raise RuntimeError(f"tracing the compiled step failed: {error}") from error
    finally:
        mamba.token_conv = convolve
        torch._dynamo.reset()
    return captured


def moves(graph, min_mb: float) -> list[dict]:
    """The graph's data-movement nodes writing >= min_mb, largest first, with their source."""
    rows = []
    for node in graph.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        value = node.meta.get("val")
        if node.op != "call_function" or name not in MOVES or not hasattr(value, "shape"):
            continue
        mb = value.numel() * value.element_size() / 2**20
        if mb < min_mb:
            continue
        where, code = _source(node.meta.get("stack_trace", ""))
        rows.append({"op": name, "shape": list(value.shape), "dtype": str(value.dtype),
                     "mb": round(mb, 1), "source": where, "code": code})
    return sorted(rows, key=lambda r: -r["mb"])


def _source(stack_trace: str) -> tuple[str, str]:
    """(file:line, code) of the innermost frame in the harness's `fusion/` package."""
    lines = [line.strip() for line in stack_trace.splitlines() if line.strip()]
    frames = [(i, m) for i, line in enumerate(lines)
              if (m := re.match(r'File "(.*/fusion/[^"]+)", line (\d+)', line))]
    if not frames:
        return "", ""
    i, match = frames[-1]
    code = lines[i + 1] if i + 1 < len(lines) else ""
    return f"{match.group(1).rsplit('/', 1)[-1]}:{match.group(2)}", code[:100]


def main(argv: list[str] | None = None) -> Path:
    c = cli(StepGraphsConfig, args=argv)
    graphs = step_graphs(c)
    result = {part: moves(graphs[part], c.min_mb) for part in ("forward", "backward")}
    out = c.out or ROOT / "benchmarks" / "results" / "step_graphs"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/step_graphs.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    lines = ["# Data movement in the compiled Mamba step's graphs (AOTAutograd, no GPU)", "",
             f"`{command.strip()}`; operators writing >= {c.min_mb} MB, largest first "
             "(token convolutions: the torch backend's, see the script's caveats).", ""]
    for part, rows in result.items():
        lines += [f"## {part}", "", "| op | shape | dtype | MB | source | code |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['mb']} | {r['source']} | "
                  f"`{r['code']}` |" for r in rows]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), **result},
                                                   indent=1))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()

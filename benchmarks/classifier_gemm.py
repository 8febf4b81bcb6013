"""The heads' float32 classifiers (verb 97, noun 300 classes), forward and backward, timed
as computed today and in alternatives that keep float32 logits.

    python benchmarks/classifier_gemm.py --out benchmarks/results/classifier_gemm_h200  # GPU
    python benchmarks/classifier_gemm.py --quick                                        # CPU

Why (issue 18): `FusionHead.classify` keeps the classifiers in float32 (bf16 logits tie; see
its docstring), and in the compiled, graphed EK100 step the one float32 GEMM kernel cuBLAS
picks, `cutlass_80_simt_sgemm_64x64_8x5_tn_align1`, took 41 us a step in 2 launches
(`benchmarks/results/profile_step_h200_compiled_s10_sums.md`) for ~0.2 GFLOP. The guess,
tested here: a 128 x 97 output is four 64 x 64 tiles, each looping over all 1024 inputs on
CUDA cores, and 97 columns rule out aligned loads. Variants, all float32 in and out:

- `fp32`: `F.linear`, as today;
- `tf32`: the same with TF32 tensor cores allowed (inputs rounded to 10-bit mantissas);
- `padded`: the weight and bias zero-padded to a multiple of 8 classes, the logits sliced;
- `split_k`: the inputs in `--chunks` slices, one batched GEMM, the partial logits summed.

Each variant's forward and backward (gradients of the input, weight and bias) is captured
in a CUDA graph and replayed (`--steps`, CUDA events). Its logits and gradients are compared
with a float64 computation (largest error relative to the largest value). `--quick` runs on
the CPU without graphs or `tf32`: it checks the variants agree; its timings mean nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kernel_report import device_ms, write_kernel_results  # noqa: E402
from features.config import cli  # noqa: E402

Classifier = Callable[[Tensor, Tensor, Tensor], Tensor]


def fp32(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.linear(x, weight, bias)


def padded(x: Tensor, weight: Tensor, bias: Tensor, multiple: int = 8) -> Tensor:
    pad = -weight.shape[0] % multiple
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)), F.pad(bias, (0, pad)))[:, :weight.shape[0]]


def split_k(x: Tensor, weight: Tensor, bias: Tensor, chunks: int = 8) -> Tensor:
    rows, width = x.shape
    xs = x.view(rows, chunks, width // chunks).transpose(0, 1)
    ws = weight.view(weight.shape[0], chunks, width // chunks).permute(1, 2, 0)
    return torch.bmm(xs, ws).sum(0) + bias


VARIANTS: dict[str, Classifier] = {"fp32": fp32, "tf32": fp32, "padded": padded,
                                   "split_k": split_k}


@dataclass
class ClassifierGemmConfig:
    rows: tuple[int, ...] = (128, 256)
    """Batch rows: training (128) and validation (256) batches."""
    classes: tuple[int, ...] = (97, 300)
    width: int = 1024
    chunks: int = 8
    steps: int = 500
    quick: bool = False
    out: Path = Path("benchmarks/results/classifier_gemm")


def _pass(fn: Classifier, x: Tensor, w: Tensor, b: Tensor, g: Tensor) -> list[Tensor]:
    """Logits and the input, weight and bias gradients for upstream gradient `g`."""
    out = fn(x, w, b)
    return [out, *torch.autograd.grad(out, (x, w, b), g)]


def _tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled


def time_variant(name: str, fn: Classifier, tensors: list[Tensor], steps: int,
                 cuda: bool) -> tuple[float, list[Tensor]]:
    """Microseconds a forward + backward, and its results."""
    before = torch.backends.cuda.matmul.allow_tf32
    _tf32(name == "tf32")
    try:
        results = _pass(fn, *tensors)
        return device_ms(lambda: _pass(fn, *tensors), steps, cuda) * 1e3, results
    finally:
        _tf32(before)


def run(c: ClassifierGemmConfig) -> list[dict]:
    cuda = torch.cuda.is_available() and not c.quick
    device = torch.device("cuda" if cuda else "cpu")
    names = [n for n in VARIANTS if cuda or n != "tf32"]
    if not cuda:
        print("not run: tf32 (CUDA only)", flush=True)
    rows_out = []
    for rows in c.rows:
        for classes in c.classes:
            g = torch.Generator(device).manual_seed(0)
            x = torch.randn(rows, c.width, device=device, generator=g, requires_grad=True)
            w = (torch.randn(classes, c.width, device=device, generator=g) / c.width**0.5
                 ).requires_grad_()
            b = torch.randn(classes, device=device, generator=g).requires_grad_()
            up = torch.randn(rows, classes, device=device, generator=g)
            exact = _pass(fp32, *(t.detach().double().requires_grad_() for t in (x, w, b)),
                          up.double())
            for name in names:
                fn = VARIANTS[name]
                if name == "split_k":
                    fn = functools.partial(split_k, chunks=c.chunks)
                us, got = time_variant(name, fn, [x, w, b, up], c.steps, cuda)
                errors = [float((r.double() - e).abs().max() / e.abs().max())
                          for r, e in zip(got, exact, strict=True)]
                row = {"rows": rows, "classes": classes, "variant": name,
                       "us": round(us, 2), "max_rel_error": max(errors)}
                print(row, flush=True)
                rows_out.append(row)
    return rows_out


def table(rows: list[dict]) -> str:
    lines = ["| rows | classes | variant | us (fwd+bwd) | largest error / largest value |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['rows']} | {r['classes']} | {r['variant']} | {r['us']} | "
              f"{r['max_rel_error']:.1e} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    c = cli(ClassifierGemmConfig, args=argv, description=__doc__.split("\n\n")[0])
    rows = run(c)
    if torch.cuda.is_available() and not c.quick:
        intro = (f"; x (rows, {c.width}) float32, forward and backward as one CUDA graph, "
                 f"{c.steps} replays; errors against float64.")
        print(write_kernel_results(c.out, "Float32 classifier GEMMs",
                                   "python benchmarks/classifier_gemm.py", intro, rows,
                                   table(rows)))
    else:
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()

"""Depthwise token convolution: PyTorch's conv1d (the head's old path) vs `fusion.token_conv`.

    python benchmarks/token_conv.py --out benchmarks/results/token_conv_h200   # one GPU
    python benchmarks/token_conv.py --sweep --out /tmp/token_conv_sweep        # backward tiles

Why (issue 18): the Mamba layer's causal conv + SiLU and the eq. 5 convolution ran as
PyTorch's depthwise `conv1d` on a transposed (b, d, L) copy; `fusion.token_conv` convolves in
the (b, L, d) layout the head already has. Per shape, bf16 x a channel half of a (b, L, 2d)
tensor (as `in_proj`'s output is), fp32 weights under bf16 autocast, gradients of x, weight and
bias: the forward and forward+backward time of (a) `F.conv1d` on the transposed view (+ SiLU),
(b) the torch backend of `token_conv`, (c) its triton backend. Times are the kernels' summed
device time under torch.profiler (what a CUDA-graph replay approaches: no launch gaps), in
microseconds; 'eager' is wall time with launches (`triton.testing.do_bench`). `--sweep` times
the backward's tile choices instead (`fusion.conv_triton.ConvConfig`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kernel_report import write_kernel_results  # noqa: E402
from features.config import cli  # noqa: E402
from fusion.token_conv import token_conv  # noqa: E402

SHAPES = ((128, 16, 2048), (128, 64, 2048), (256, 32, 2048), (128, 80, 1536), (32, 3137, 2048))
CASES = ((4, True, "silu"), (3, False, "none"))  # Mamba's causal conv; the eq. 5 convolution
SWEEP = ((8, 128, 1), (8, 64, 1), (16, 64, 1), (8, 32, 1), (16, 32, 1), (4, 128, 1),
         (8, 128, 2), (16, 128, 4))  # backward (block_l, block_d, warps)


@dataclass
class TokenConvBenchConfig:
    out: Path = ROOT / "benchmarks/results/token_conv"
    sweep: bool = False
    """Time the backward's tile sizes instead of the three paths."""
    iters: int = 10


def kernel_us(fn: Callable[[], object], iters: int) -> float:
    """Summed device time of fn's kernels per call, in microseconds (after 3 warm-up calls)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters


def calls(b: int, L: int, d: int, k: int, causal: bool, act: str,
          path: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward without grad, forward + backward) of one path on fresh random inputs."""
    g = torch.Generator(device="cuda").manual_seed(0)
    xz = torch.randn(b, L, 2 * d, device="cuda", dtype=torch.bfloat16, generator=g,
                     requires_grad=True)
    x = xz[..., :d]
    w = (torch.randn(d, 1, k, device="cuda", generator=g) / k).requires_grad_()
    bias = torch.randn(d, device="cuda", generator=g).requires_grad_()
    gy = torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
    pad = k - 1 if causal else k // 2

    def forward() -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16):
            if path == "conv1d":  # the head's code before token_conv
                y = F.conv1d(x.transpose(1, 2), w, bias, padding=pad, groups=d)[..., :L]
                y = (F.silu(y) if act == "silu" else y).transpose(1, 2)
                return y
            return token_conv(x, w, bias, causal=causal, activation=act, backend=path)

    def forward_only() -> object:
        with torch.no_grad():
            return forward()

    def both() -> object:
        return torch.autograd.grad(forward(), [xz, w, bias], gy)

    return forward_only, both


def compare(c: TokenConvBenchConfig) -> tuple[list[dict], str]:
    from triton.testing import do_bench

    rows, lines = [], [
        "| b, L, d | k, activation | fwd µs: conv1d / torch / triton | fwd+bwd µs: conv1d / "
        "torch / triton | eager fwd+bwd µs: conv1d / triton |", "|---|---|---|---|---|"]
    for (b, L, d), (k, causal, act) in itertools.product(SHAPES, CASES):
        t = {}
        for path in ("conv1d", "torch", "triton"):
            fwd, both = calls(b, L, d, k, causal, act, path)
            t[path] = (kernel_us(fwd, c.iters), kernel_us(both, c.iters),
                       do_bench(both, rep=100) * 1e3)
        rows.append({"shape": [b, L, d], "k": k, "causal": causal, "activation": act,
                     **{f"{p}_{m}_us": round(v, 1) for p in t
                        for m, v in zip(("fwd", "fwd_bwd", "eager_fwd_bwd"), t[p], strict=True)}})
        lines.append(f"| {b}, {L}, {d} | {k}, {act} | "
                     + " / ".join(f"{t[p][0]:.0f}" for p in t) + " | "
                     + " / ".join(f"{t[p][1]:.0f}" for p in t) + " | "
                     + f"{t['conv1d'][2]:.0f} / {t['triton'][2]:.0f} |")
        print(lines[-1], flush=True)
    return rows, "\n".join(lines)


def sweep(c: TokenConvBenchConfig) -> tuple[list[dict], str]:
    from fusion import conv_triton
    from fusion.conv_triton import ConvConfig

    rows, lines = [], ["| b, L, d | k, activation | block_l_bwd | block_d_bwd | warps | "
                       "fwd+bwd µs |", "|---|---|---|---|---|---|"]
    default = conv_triton.DEFAULT_CONFIG
    try:
        for (b, L, d), (k, causal, act), (bl, bd, warps) in itertools.product(
                SHAPES, CASES, SWEEP):
            conv_triton.DEFAULT_CONFIG = ConvConfig(block_l_bwd=bl, block_d_bwd=bd,
                                                    num_warps_bwd=warps)
            us = kernel_us(calls(b, L, d, k, causal, act, "triton")[1], c.iters)
            rows.append({"shape": [b, L, d], "k": k, "activation": act, "block_l_bwd": bl,
                         "block_d_bwd": bd, "num_warps_bwd": warps, "fwd_bwd_us": round(us, 1)})
            lines.append(f"| {b}, {L}, {d} | {k}, {act} | {bl} | {bd} | {warps} | {us:.0f} |")
            print(lines[-1], flush=True)
    finally:
        conv_triton.DEFAULT_CONFIG = default
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    c = cli(TokenConvBenchConfig, args=argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/token_conv.py times CUDA kernels: run it on a GPU machine")
    rows, table = (sweep if c.sweep else compare)(c)
    command = "python benchmarks/token_conv.py" + (" --sweep" if c.sweep else "")
    return write_kernel_results(
        c.out, "Token convolution", command, "; bf16 x (a channel half of a (b, L, 2d) "
        "tensor), fp32 weights under autocast; summed kernel time (torch.profiler), eager = "
        "wall time with launches.", rows, table)


if __name__ == "__main__":
    print(main())

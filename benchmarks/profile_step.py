"""Where a training step's time goes: torch.profiler over real `fusion.train.train_step` calls.

    python benchmarks/profile_step.py                         # H100: every head, EK100 widths
    python benchmarks/profile_step.py --heads mamba --backends triton mamba_ssm torch
    python benchmarks/profile_step.py --quick                 # CPU smoke check

Why: the epoch benchmark (`train_epoch.py`) says how long an epoch takes; this says why. It
runs the training step exactly as `fusion.train` does (the same head, AdamW groups, schedule,
bf16 autocast, gradient clipping) on one random EK100-shaped batch (batch 128; video 16 x
1024; two questions of 32 x 768 with ragged masks), times it with CUDA events, and profiles a
few steps. Reported per head: ms per step, the share of GPU time spent in the selective scan
(kernels whose name contains "scan"), GPU-busy share of the step (low = launch/CPU bound),
kernels launched per step, the top kernels, and (on a GPU) the step's time by kernel group
(scan, GEMMs, token convolutions, inductor's fused kernels, optimizer, reductions, copies:
`kernel_group_table`, readable under compile and CUDA graphs). Results:
`benchmarks/results/profile_step.md` (`--quick`: `profile_step_quick.md`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sweep_throughput import device_name, random_tensors  # noqa: E402
from features.config import cli  # noqa: E402


@dataclass
class ProfileConfig:
    """Profile the training step of each head on one EK100-shaped batch."""

    heads: tuple[str, ...] = ("mamba", "mlp", "transformer_6x4", "transformer_12x12")
    backends: tuple[str, ...] = ("auto",)
    """Scan backends of the Mamba head (auto, torch, mamba_ssm, triton)."""
    batch_size: int = 128
    video_shape: tuple[int, int] = (16, 1024)
    text_shape: tuple[int, int] = (32, 768)
    steps: int = 20
    """Timed steps (after 5 warm-up steps); the profiler records 5 more."""
    top: int = 12
    compile: bool = False
    """torch.compile the head (TrainConfig.compile)."""
    cuda_graphs: bool = False
    """Replay the step as a CUDA graph (TrainConfig.cuda_graphs)."""
    ops: int = 0
    """Also list the N operators whose own kernels take the most GPU time (eager steps only:
    a CUDA graph's replay names no operators): which part of the model the kernels serve."""
    quick: bool = False
    out: Path | None = None


def random_batch(c: ProfileConfig, device):
    """One batch of two ragged questions and a video (`random_tensors`)."""
    import torch

    from fusion.data import Batch

    g = torch.Generator(device).manual_seed(0)
    inputs, masks, verb, noun = random_tensors(c.batch_size, c.video_shape,
                                               (2, *c.text_shape), device, g)
    return Batch(torch.arange(c.batch_size, device=device), inputs, masks, verb, noun)


def profile_head(c: ProfileConfig, fusion: str, backend: str) -> tuple[dict, str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fusion.data import FeatureSplit, Rows
    from fusion.graphs import GraphedTrainStep
    from fusion.train import HeadConfig, TrainConfig, build_training, resolve_device, train_step

    device = resolve_device("auto")
    cuda = device.type == "cuda"
    head = HeadConfig(d_model=48 if c.quick else None,
                      backend=backend if fusion == "mamba" else None)
    config = TrainConfig(fusion=fusion, head=head, batch_size=c.batch_size, epochs=100,
                         cuda_graphs=c.cuda_graphs, compile=c.compile)
    batch = random_batch(c, device)
    dims = {k: int(v.shape[-1]) for k, v in batch.inputs.items()}
    model, optimizer, scheduler = build_training(
        config, dims, {"num_verbs": 97, "num_nouns": 300}, 1000, device)
    model.train()

    forward = torch.compile(model) if c.compile else model
    graphed = GraphedTrainStep(forward, optimizer, scheduler, config, cuda) if (
        c.cuda_graphs and cuda) else None

    # what training feeds a graphed step: row indices of a device-resident split
    split = FeatureSplit([str(i) for i in range(c.batch_size)], batch.inputs, batch.masks,
                         batch.verb, batch.noun)
    rows = Rows(split, batch.index)

    def step() -> None:
        if graphed is not None:
            graphed(rows)
        else:
            train_step(forward, batch, optimizer, scheduler, config, amp=cuda)

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(c.steps):
        step()
    sync()
    ms = (time.perf_counter() - started) * 1e3 / c.steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        sync()
    events = prof.key_averages()
    key = "device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in events if (getattr(e, "device_type", None) is not None
                                     and str(e.device_type).endswith("CUDA"))] if cuda else []
    gpu_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels)
    scan_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels
                  if kernel_group(e.key) == "scan")
    launches = sum(e.count for e in kernels) / 5
    row = {"head": fusion + (" (compiled)" if c.compile else "")
           + (" (CUDA graph)" if c.cuda_graphs else ""),
           "backend": backend if fusion == "mamba" else "-",
           "ms_per_step": round(ms, 2),
           "gpu_busy_share": round(gpu_us / 5 / 1e3 / ms, 3) if cuda else None,
           "scan_share_of_gpu": round(scan_us / gpu_us, 3) if gpu_us else None,
           "kernels_per_step": round(launches, 1) if cuda else None,
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    table = events.table(sort_by=key, row_limit=c.top)
    if kernels:
        table += ("\n\n" + kernel_group_table(kernels, steps=5)
                  + "\n\n" + kernel_names(kernels, steps=5, top=c.top))
    if c.ops and not (c.cuda_graphs and cuda):
        table += "\n\n" + operator_table(events, c.ops, cuda, steps=5)
    return row, table


KERNEL_GROUPS = (
    ("scan", ("scan",)),  # also the scan share of the summary row
    ("token convolutions", ("_conv_fwd_kernel", "_conv_grad_kernel")),
    ("GEMMs", ("nvjet", "gemm", "cutlass", "cublas", "triton_mm", "triton_tem")),
    ("optimizer and clipping (multi-tensor)", ("multi_tensor", "lpnorm")),
    ("reductions (aten)", ("reduce_kernel",)),
    ("inductor's fused kernels", ("triton_poi", "triton_per", "triton_red")),
    ("copies", ("Memcpy", "Memset")),
    ("other aten elementwise", ("elementwise_kernel", "vectorized_", "softmax")),
)
"""Kernel-name fragments of each group of `kernel_group_table`, first match wins."""


def kernel_group(name: str) -> str:
    """The `KERNEL_GROUPS` group of a CUDA kernel's name, `other` if none matches."""
    return next((group for group, parts in KERNEL_GROUPS
                 if any(part.lower() in name.lower() for part in parts)), "other")


def kernel_group_table(kernels, steps: int) -> str:
    """GPU time and kernel count per step by kernel group: what part of the step (scan, GEMMs,
    the fused elementwise work, the optimizer) a change has to beat; readable under CUDA
    graphs and compile, where operator names are gone but kernel names stay."""
    totals: dict[str, list[float]] = {}
    for e in kernels:
        group = totals.setdefault(kernel_group(e.key), [0.0, 0.0])
        group[0] += getattr(e, "self_device_time_total", 0) / steps
        group[1] += e.count / steps
    everything = sum(t for t, _ in totals.values()) or 1.0
    lines = [f"{'kernel group':<40} {'us/step':>9} {'kernels/step':>12} {'share':>6}"]
    for group, (us, count) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{group:<40} {us:>9.1f} {count:>12.1f} {us / everything:>6.1%}")
    return "\n".join(lines)


def kernel_names(kernels, steps: int, top: int, width: int = 160) -> str:
    """The `top` kernels by GPU time per step with their names whole (up to `width`): the
    profiler's table cuts them at ~55 characters, where e.g. every multi-tensor optimizer
    kernel reads `multi_tensor...` and which one is AdamW and which the norm is lost."""
    ranked = sorted(kernels, key=lambda e: -getattr(e, "self_device_time_total", 0))
    lines = [f"{'us/step':>9} {'calls/step':>10}  kernel (whole name)"]
    for e in ranked[:top]:
        lines.append(f"{getattr(e, 'self_device_time_total', 0) / steps:>9.1f} "
                     f"{e.count / steps:>10.1f}  {e.key[:width]}")
    return "\n".join(lines)


def operator_table(events, top: int, cuda: bool, steps: int) -> str:
    """The `top` operators (aten::*) by the time of the kernels they launched themselves
    (self time: a kernel counts once, for the innermost operator), per step."""
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted((e for e in events if e.key.startswith("aten::")),
                 key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ops) or 1
    lines = [f"{'operator':<40} {'calls/step':>10} {'us/step':>9} {'share':>6}"]
    for e in ops[:top]:
        t = getattr(e, key)
        lines.append(f"{e.key:<40} {e.count / steps:>10.1f} {t / steps:>9.1f} "
                     f"{t / total:>6.1%}")
    lines.append(f"{'all operators':<40} {sum(e.count for e in ops) / steps:>10.1f} "
                 f"{total / steps:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    c = cli(ProfileConfig, args=argv)
    if c.quick:
        c = dataclasses.replace(c, batch_size=16, video_shape=(16, 32), text_shape=(8, 32),
                                steps=3, top=8)
    out = c.out or ROOT / "benchmarks" / "results" / ("profile_step_quick" if c.quick
                                                        else "profile_step")
    command = "python benchmarks/profile_step.py " + " ".join(argv or sys.argv[1:])
    summary = [f"# Training-step profile on {device_name()}", "", f"`{command}`; batch "
               f"{c.batch_size}, video {c.video_shape}, questions 2 x {c.text_shape} (ragged "
               "masks), the real `fusion.train.train_step` (bf16 autocast on CUDA, AdamW, "
               "clipping); mean of the timed steps.", "",
               "| head | scan backend | ms/step | GPU busy share | scan share of GPU time | "
               "kernels/step | params (M) |", "|---|---|---|---|---|---|---|"]
    details = []
    for fusion in c.heads:
        for backend in (c.backends if fusion == "mamba" else ("auto",)):
            row, table = profile_head(c, fusion, backend)
            print(row, flush=True)
            summary.append(f"| {row['head']} | {row['backend']} | {row['ms_per_step']} | "
                           f"{row['gpu_busy_share']} | {row['scan_share_of_gpu']} | "
                           f"{row['kernels_per_step']} | {row['params_m']} |")
            details += ["", f"## {fusion} [{row['backend']}], 5 profiled steps", "", "```",
                        table, "```"]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.with_suffix(".md").write_text("\n".join(summary + details) + "\n")
    return out


if __name__ == "__main__":
    main()

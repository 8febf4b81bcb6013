"""Forward+backward time and peak memory of the fusion heads against sequence length.

    python benchmarks/fusion_heads.py                       # on the GPU: the committed results
    python benchmarks/fusion_heads.py --batch 8 --lengths 1024 2048 4096 8192 16384 \
        --transformer-max-len 16384 --out benchmarks/results/fusion_heads_long
    python benchmarks/fusion_heads.py --quick --out /tmp/x  # CPU smoke check

Why: the paper claims the Mamba fusion scales linearly with sequence length and the
Transformer fusion quadratically. Each head (and each scan backend of the Mamba head: triton,
the default on CUDA, mamba_ssm and torch) runs a training step's forward and backward (bf16
autocast on CUDA, as `fusion.train` does; no optimizer step) on a batch of 128 random clips
at EK100 shapes: video tokens of width 1024 (AVION ViT-L) and two questions of 32 tokens of
width 768 (RoBERTa-base). The video length L runs over 16 (EK100: 16 frame tokens) ... 4096;
the questions stay 2 x 32. Every head keeps its defaults (d_model = video width; Transformer
widths rounded to a multiple of 8 x heads).

Per point: the median of several timed steps after warm-up (CUDA synchronised), and the peak
memory allocated during one step (`torch.cuda.max_memory_allocated`, model and inputs
included), `peak_mem_mib` in MiB (2**20 bytes; files written before it was renamed call the
same number `peak_mem_mb`, and `reports/plots.py` reads both). A series stops at the first
out-of-memory or too-slow point (recorded as such). `meta.dtype` says what ran: bf16 autocast
on CUDA, fp32 on CPU.
The Markdown table adds a log-log slope over the last points of each series: ~1 is linear,
~2 quadratic. Results: `benchmarks/results/fusion_heads.{json,md,png}` (the JSON is what
`python -m reports` plots as "scaling"); the second command (batch 8, up to 16k tokens) reaches
the lengths where attention outweighs the Transformer's matrix products, which batch 128 cannot
(out of memory first). Findings: `benchmarks/results/fusion_heads_notes.md`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.config import cli  # noqa: E402
from fusion.heads import build_head  # noqa: E402
from fusion.profile import count_params  # noqa: E402
from fusion.ssm import available_backends  # noqa: E402


@dataclass
class BenchConfig:
    """fwd+bwd time and peak memory of every fusion head against video length."""

    series: tuple[str, ...] = ("mamba:triton", "mamba:mamba_ssm", "mamba:torch", "mlp",
                               "transformer_6x4", "transformer_12x12")
    """Heads, `head:backend` for the Mamba head's scan backend (triton: the default on CUDA)."""
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    """Video token counts L."""
    batch: int = 128
    video_dim: int = 1024
    text_dim: int = 768
    question_len: int = 32
    """Tokens of each of the two questions."""
    amp: bool = True
    """bf16 autocast on CUDA."""
    transformer_max_len: int = 5000
    """Position-table size of the Transformer heads (their longest video sequence)."""
    target_seconds: float = 1.5
    """Timed steps per point: about this long in all (3 to 20 steps)."""
    max_step_seconds: float = 20.0
    """A series stops after a point whose step takes longer than this."""
    max_seconds: float = 480.0
    """Whole-run budget; points past it are recorded as not run."""
    out: Path = ROOT / "benchmarks" / "results" / "fusion_heads"
    """Output stem: writes .json, .md and .png."""
    quick: bool = False
    """Tiny CPU smoke run (batch 4, widths 64/32, L up to 64)."""
    command: str = field(default_factory=lambda: " ".join(["python", *sys.argv]))


def make_batch(config: BenchConfig, length: int, device: torch.device) -> tuple[dict, dict]:
    b = config.batch
    inputs = {
        "video": torch.randn(b, length, config.video_dim, device=device),
        "verb_question": torch.randn(b, config.question_len, config.text_dim, device=device),
        "noun_question": torch.randn(b, config.question_len, config.text_dim, device=device),
    }
    labels = {"verb": torch.randint(0, 97, (b,), device=device),
              "noun": torch.randint(0, 300, (b,), device=device)}
    return inputs, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(head, inputs, labels, device, config: BenchConfig) -> dict:
    amp = config.amp and device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = head(inputs, None)
        loss = F.cross_entropy(out["verb"].float(), labels["verb"]) + \
            F.cross_entropy(out["noun"].float(), labels["noun"])
        loss.backward()
        head.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # warm-up (kernel selection, autotuning, allocator)
    sync(device)
    first = time.perf_counter() - start
    if first < config.max_step_seconds:
        step()
        sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reps = int(min(20, max(3, config.target_seconds / max(first, 1e-4))))
    times = []
    for _ in range(reps if first < config.max_step_seconds else 1):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"fwd_bwd_ms": 1e3 * times[len(times) // 2], "fwd_bwd_ms_min": 1e3 * times[0],
            "steps": len(times), "peak_mem_mib": peak}


def run(config: BenchConfig) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    deadline = time.perf_counter() + config.max_seconds
    results = []
    for series in config.series:
        name, _, backend = series.partition(":")
        kwargs = {"backend": backend} if backend else {}
        if name.startswith("transformer"):
            kwargs["max_len"] = config.transformer_max_len
        stopped = None
        for length in config.lengths:
            record = {"head": name, "backend": backend or None, "seq_len": length,
                      "text_len": 2 * config.question_len, "batch": config.batch}
            if backend and backend not in available_backends(device):
                stopped = f"backend {backend} unavailable on {device.type}"
            if stopped or time.perf_counter() > deadline:
                results.append({**record, "status": stopped or "not run (time budget)"})
                continue
            torch.manual_seed(0)
            head = inputs = labels = None
            try:
                head = build_head(name, modality_dims={"video": config.video_dim,
                                                       "verb_question": config.text_dim,
                                                       "noun_question": config.text_dim},
                                  **kwargs).to(device)
                inputs, labels = make_batch(config, length, device)
                record |= {"params": count_params(head),
                           **measure(head, inputs, labels, device, config), "status": "ok"}
                if record["fwd_bwd_ms"] > 1e3 * config.max_step_seconds:
                    stopped = f"stopped: L={length} took {record['fwd_bwd_ms'] / 1e3:.1f} s"
            except torch.OutOfMemoryError:
                record["status"] = "out of memory"
                stopped = f"skipped: out of memory at L={length}"
            finally:
                del head, inputs, labels
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(record)
            print(json.dumps(record), flush=True)
    return results


def label(record: dict) -> str:
    return record["head"] + (f" [{record['backend']}]" if record.get("backend") else "")


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x) over the last 4 points (>= 3 needed)."""
    points = points[-4:]
    if len(points) < 3:
        return None
    xs, ys = [math.log(p[0]) for p in points], [math.log(p[1]) for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def series_of(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(label(r), []).append(r)
    return out


def markdown(results: list[dict], meta: dict) -> str:
    groups = series_of(results)
    lengths = sorted({r["seq_len"] for r in results})
    lines = [f"# Fusion heads: fwd+bwd time and peak memory vs video length ({meta['device']})",
             "", f"Command: `{meta['command']}`", "",
             f"Batch {meta['batch']}, video L x {meta['video_dim']}, questions 2 x "
             f"{meta['question_len']} x {meta['text_dim']}, "
             f"{meta['dtype']}; torch {meta['torch']}, "
             f"mamba-ssm {meta['mamba_ssm']}. Median ms of the timed steps / peak MiB allocated.",
             "", "| L | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for length in lengths:
        cells = []
        for records in groups.values():
            r = next((r for r in records if r["seq_len"] == length), None)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"].split(":")[0])
            else:
                mem = f" / {r['peak_mem_mib']:,.0f}" if r.get("peak_mem_mib") is not None else ""
                cells.append(f"{r['fwd_bwd_ms']:,.1f}{mem}")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    lines += ["", "Log-log slope over the last four measured lengths (1: linear, 2: quadratic):",
              "", "| series | params | time slope | memory slope |", "|---|---|---|---|"]
    for name, records in groups.items():
        ok = [r for r in records if r["status"] == "ok"]
        t = slope([(r["seq_len"], r["fwd_bwd_ms"]) for r in ok])
        m = slope([(r["seq_len"], r["peak_mem_mib"]) for r in ok if r.get("peak_mem_mib")])
        params = f"{ok[0]['params'] / 1e6:.1f} M" if ok else ""
        lines.append(f"| {name} | {params} | {'' if t is None else f'{t:.2f}'} | "
                     f"{'' if m is None else f'{m:.2f}'} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, records) in enumerate(series_of(results).items()):
        ok = [r for r in records if r["status"] == "ok"]
        if not ok:
            continue
        style = {"marker": "o", "label": name, "color": f"C{i}"}
        t_ax.plot([r["seq_len"] for r in ok], [r["fwd_bwd_ms"] for r in ok], **style)
        mem = [r for r in ok if r.get("peak_mem_mib")]
        if mem:
            m_ax.plot([r["seq_len"] for r in mem], [r["peak_mem_mib"] for r in mem], **style)
    for ax, ylabel in ((t_ax, "fwd+bwd time (ms)"), (m_ax, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("video tokens L (+ 2 x 32 question tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    t_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    config = cli(BenchConfig, args=argv)
    if config.quick:
        config = dataclasses.replace(config, batch=4, video_dim=64, text_dim=32, question_len=8,
                                     lengths=(16, 32, 64), target_seconds=0.1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        from importlib.metadata import version

        mamba_version = version("mamba_ssm")
    except Exception:
        mamba_version = "not installed"
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else
            platform.processor() or "cpu", "torch": torch.__version__, "mamba_ssm": mamba_version,
            "backends": available_backends(device), "batch": config.batch,
            "video_dim": config.video_dim, "text_dim": config.text_dim,
            "question_len": config.question_len, "amp": config.amp and device.type == "cuda",
            "dtype": "bf16 autocast" if config.amp and device.type == "cuda" else "fp32",
            "command": config.command, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results = run(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "results": results}
    config.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    table = markdown(results, meta)
    config.out.with_suffix(".md").write_text(table)
    plot(results, config.out.with_suffix(".png"),
         f"Fusion heads, batch {config.batch}, {meta['device']}")
    print(table)
    return data


if __name__ == "__main__":
    main(sys.argv[1:])

"""The report's figures (PNG for the page, PDF for a paper), from the tables' own picks.

Why from the picks: a figure must show exactly the runs a table names, never a different
selection. Each plot that cannot be drawn comes back as a note saying why, not an error.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from reports.tables import HEAD_NAMES, Pick, RunInfo, Table, head_family  # noqa: E402

History = Callable[[str, str], list[tuple[int, float]]]
MARKERS = "os^Dv<>P*X"


@dataclass(frozen=True)
class Plot:
    """One figure: its files, or the note that explains why it was skipped."""

    name: str
    title: str
    png: Path | None = None
    pdf: Path | None = None
    note: str = ""


def _save(fig: plt.Figure, out: Path, name: str, title: str, note: str = "",
          layout: bool = True) -> Plot:
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    if layout:
        fig.tight_layout()
    fig.savefig(png, dpi=130)
    fig.savefig(pdf)
    plt.close(fig)
    return Plot(name, title, png, pdf, note)


def _runs(table: Table) -> list[tuple[str, Pick]]:
    return [(label, pick) for label, pick in table.picks if pick.run is not None]


def _datasets(picks: Sequence[tuple[str, Pick]]) -> str:
    return ", ".join(sorted({p.run.dataset for _, p in picks if p.run is not None}))


ClipCount = Callable[[RunInfo], "int | None"]
"""A run's number of validation clips (the n behind its accuracies), or None if unknown."""


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for z = 1.96) of a binomial proportion: top-1 is the
    share of n clips classified right, and Wilson stays inside [0, 1] for small n."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cost_accuracy(table3: Table, out: Path, clips: ClipCount = lambda run: None) -> Plot:
    """Action top-1 (with its 95 % Wilson interval over the n validation clips) against head
    parameters and head GFLOPs, one point per Table 3 run."""
    title = "Action top-1 vs fusion-head cost"
    picks = [(label, p) for label, p in _runs(table3)
             if {"params", "flops", "best_action_top1"} <= set(p.run.metrics)]
    if not picks:
        return Plot("cost_accuracy", title, note="skipped: no Table 3 run logged params, flops "
                    "and best_action_top1")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    backbones = sorted({p.run.tags.get("backbone", "?") for _, p in picks})
    colors = {head: f"C{i}" for i, head in enumerate(HEAD_NAMES)}
    sizes = {pick.run.run_id: clips(pick.run) for _, pick in picks}
    for ax, metric, scale, xlabel in ((axes[0], "params", 1e6, "head parameters (millions)"),
                                      (axes[1], "flops", 1e9, "head GFLOPs per clip")):
        for label, pick in picks:
            run = pick.run
            head = head_family(run.tags.get("fusion", "?"))
            accuracy = run.metrics["best_action_top1"]
            x, y = run.metrics[metric] / scale, 100 * accuracy
            n = sizes[run.run_id]
            if n:
                low, high = wilson_interval(accuracy, n)
                ax.errorbar(x, y, yerr=[[y - 100 * low], [100 * high - y]], fmt="none",
                            ecolor=colors.get(head, "k"), elinewidth=1.2, capsize=4, zorder=2)
            ax.scatter(x, y, s=60, color=colors.get(head, "k"),
                       marker=MARKERS[backbones.index(run.tags.get("backbone", "?")) % 10],
                       label=f"{label}" + (f", n = {n}" if n else ", n unknown"),
                       edgecolor="black", linewidth=0.5, zorder=3)
            ax.annotate(HEAD_NAMES.get(head, head), (x, y), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.3, y=0.12)  # room for the labels beside the points
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("validation action top-1 (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), fontsize=7,
               frameon=False)
    known = sorted({n for n in sizes.values() if n})
    size_text = (f"n = {known[0]} validation clips" if len(known) == 1 else
                 f"n = {', '.join(map(str, known))} validation clips" if known else
                 "n validation clips unknown: no interval")
    unknown = sum(1 for n in sizes.values() if not n)
    if known and unknown:
        size_text += f" ({unknown} run(s) without a known n: no interval)"
    fig.suptitle(f"{title} (dataset: {_datasets(picks)})\n{size_text}; bars: 95 % Wilson "
                 f"interval of top-1 over those clips", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(names) - 1) // 3), 1, 1))
    return _save(fig, out, "cost_accuracy", title, size_text, layout=False)


def mlflow_clips(tracking_uri: str) -> ClipCount:
    """A run's validation clip count: its `val_clips` metric if it logged one, else the sum
    of the verb rows' `count` in its per_class_accuracy.csv artifact (fusion.tracking writes
    one row per validation verb class with its number of clips); None if neither exists."""

    def clips(run: RunInfo) -> int | None:
        if "val_clips" in run.metrics:
            return int(run.metrics["val_clips"])
        import tempfile

        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        with tempfile.TemporaryDirectory() as folder:
            try:
                path = MlflowClient(tracking_uri).download_artifacts(
                    run.run_id, "per_class_accuracy.csv", folder)
            except (MlflowException, OSError):
                return None
            frame = pd.read_csv(path)
        if not {"head", "count"} <= set(frame.columns):
            return None
        return int(frame.loc[frame["head"] == "verb", "count"].sum()) or None

    return clips


def training_curves(table3: Table, history: History, out: Path) -> Plot:
    """Per-epoch validation action top-1 and training loss of the runs behind Table 3."""
    title = "Training curves of the Table 3 runs"
    picks = _runs(table3)
    if not picks:
        return Plot("training_curves", title, note="skipped: Table 3 has no runs")
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, (label, pick) in enumerate(picks):
        name = f"{label} ({pick.run.run_id[:8]})"
        for ax, key, scale in ((acc, "action_top1", 100), (loss, "train_loss", 1)):
            points = history(pick.run.run_id, key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, [v * scale for v in values], label=name, color=f"C{i % 10}",
                        marker="." if len(points) < 30 else None)
    acc.set_title("validation action top-1 after each epoch", fontsize=9)
    acc.set_ylabel("action top-1 (%)")
    loss.set_title("training loss: verb + noun cross-entropy, mean per clip", fontsize=9)
    loss.set_ylabel("loss (nats)")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, names = acc.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), fontsize=7,
               frameon=False)
    fig.suptitle(f"{title} (dataset: {_datasets(picks)})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(names) - 1) // 3), 1, 1))
    return _save(fig, out, "training_curves", title, layout=False)


# Accepted spellings in the benchmark file: a list of records, or {"results": [...]}.
_HEAD = ("head", "fusion", "model")
_LENGTH = ("seq_len", "length", "L", "sequence_length", "video_len")
_TIME = ("fwd_bwd_ms", "time_ms", "ms", "median_ms")
_MEMORY = ("peak_mem_mb", "peak_memory_mb", "memory_mb", "peak_mem_mib")
DEFAULT_CUDA_BACKEND = "triton"
"""fusion.ssm's default selective scan on CUDA: the scaling plot says when a file lacks it."""


def _first(record: dict[str, Any], keys: Sequence[str]) -> Any:
    return next((record[k] for k in keys if record.get(k) is not None), None)


def setup_line(meta: dict[str, Any]) -> str:
    """GPU, batch and dtype of a benchmark file's `meta` (fusion_heads.py writes them)."""
    amp = meta.get("amp")
    dtype = meta.get("dtype") or ("bf16 autocast" if amp else "fp32" if amp is not None
                                  else "dtype not recorded")
    parts = [str(meta.get("device", "device not recorded")),
             f"batch {meta['batch']}" if "batch" in meta else "batch not recorded", dtype]
    if meta.get("torch"):
        parts.append(f"torch {meta['torch']}")
    return ", ".join(parts)


def scaling(path: Path, out: Path) -> Plot:
    """fwd+bwd time and peak memory against video length (log-log), one line per head and
    scan backend; lengths that ran out of memory (or were skipped after one did) are marked
    at the top of the axes, not dropped."""
    title = "Fusion heads: one training step's time and memory vs video length"
    if not path.exists():
        return Plot("scaling", title, note=f"skipped: {path} not found (run the fusion "
                    "benchmark of issue 3 first)")
    data = json.loads(path.read_text())
    meta = data.get("meta", {}) if isinstance(data, dict) else {}
    records = data.get("results", data.get("records")) if isinstance(data, dict) else data
    series: dict[str, list[tuple[float, float, float | None]]] = defaultdict(list)
    failed: dict[str, list[tuple[float, str]]] = defaultdict(list)
    backends: set[str] = set()
    for record in records if isinstance(records, list) else []:
        head, length, time = (_first(record, keys) for keys in (_HEAD, _LENGTH, _TIME))
        if head is None or length is None:
            continue
        backend = record.get("backend")
        if backend:
            backends.add(backend)
        label = HEAD_NAMES.get(head, head) + (f" [{backend} scan]" if backend else "")
        status = str(record.get("status", "ok"))
        if status != "ok" or time is None:
            failed[label].append((float(length), "OOM" if "out of memory" in status
                                  else "not run"))
        else:
            series[label].append((float(length), float(time), _first(record, _MEMORY)))
    if not series:
        return Plot("scaling", title, note=f"skipped: no records in {path} with a head "
                    f"({'/'.join(_HEAD)}), a length ({'/'.join(_LENGTH)}) and a time "
                    f"({'/'.join(_TIME)})")
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 5.2))
    labels = sorted(set(series) | set(failed))
    stacked = [label for label in labels if label in failed]
    for i, label in enumerate(labels):
        points = sorted(series.get(label, []))
        color = f"C{i % 10}"
        for ax, values in ((t_ax, [(p[0], p[1]) for p in points]),
                           (m_ax, [(p[0], p[2]) for p in points if p[2] is not None])):
            if values:
                ax.plot(*zip(*values, strict=True), marker="o", label=label, color=color)
            for length, why in failed.get(label, []):
                # near the top edge, one row per head: the point exists, its value does not
                top = 0.96 - 0.08 * stacked.index(label)
                ax.plot(length, top, marker="x", markersize=8, markeredgewidth=2, color=color,
                        transform=ax.get_xaxis_transform(), clip_on=False)
                ax.annotate(why, (length, top), xycoords=ax.get_xaxis_transform(),
                            textcoords="offset points", xytext=(-7, 0), ha="right",
                            va="center", fontsize=7, color=color)
    if not any(p[2] is not None for points in series.values() for p in points):
        m_ax.set_ylim(1, 10)  # nothing to log-scale: a CPU run records no GPU memory
        m_ax.text(0.5, 0.5, "no memory recorded (CPU run)", transform=m_ax.transAxes,
                  ha="center", va="center", color="0.4")
    for ax, ylabel, sub in ((t_ax, "fwd+bwd time per step (ms, median)", "time"),
                            (m_ax, "peak GPU memory allocated (MiB)", "memory")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel("video length L (tokens per clip)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{sub} (× at the top: out of memory or not run)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = t_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8,
               frameon=False)
    missing = "" if DEFAULT_CUDA_BACKEND in backends or not backends else (
        f"; no {DEFAULT_CUDA_BACKEND} scan (the default on CUDA) in this file: rerun the "
        f"benchmark")
    fig.suptitle(f"{title}\n{setup_line(meta)}\nscan backends: "
                 f"{', '.join(sorted(backends)) or 'none named'}{missing}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    note = (f"{setup_line(meta)}; from {path.name}" + (f" ({meta['command']})"
                                                        if meta.get("command") else ""))
    return _save(fig, out, "scaling", title, note, layout=False)


def mlflow_history(tracking_uri: str) -> History:
    """Per-epoch metric history from the MLflow store, as (step, value) pairs."""

    def history(run_id: str, key: str) -> list[tuple[int, float]]:
        from mlflow.tracking import MlflowClient  # opened only when a run exists

        client = MlflowClient(tracking_uri)
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    return history


def make_plots(tables: Sequence[Table], tracking_uri: str, out: Path,
               benchmark: Path) -> list[Plot]:
    table3 = next(t for t in tables if t.name == "table3")
    return [cost_accuracy(table3, out, mlflow_clips(tracking_uri)), scaling(benchmark, out),
            training_curves(table3, mlflow_history(tracking_uri), out)]

"""The report's figures (PNG for the page, PDF for a paper), from the tables' own picks.

Why from the picks: a figure must show exactly the runs a table names, never a different
selection. Each plot that cannot be drawn comes back as a note saying why, not an error.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.tables import HEAD_NAMES, Pick, Table  # noqa: E402

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


def _save(fig: plt.Figure, out: Path, name: str, title: str, note: str = "") -> Plot:
    out.mkdir(parents=True, exist_ok=True)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    fig.tight_layout()
    fig.savefig(png, dpi=130)
    fig.savefig(pdf)
    plt.close(fig)
    return Plot(name, title, png, pdf, note)


def _runs(table: Table) -> list[tuple[str, Pick]]:
    return [(label, pick) for label, pick in table.picks if pick.run is not None]


def _datasets(picks: Sequence[tuple[str, Pick]]) -> str:
    return ", ".join(sorted({p.run.dataset for _, p in picks if p.run is not None}))


def cost_accuracy(table3: Table, out: Path) -> Plot:
    """Action top-1 against head parameters and head GFLOPs, one point per Table 3 run."""
    title = "Accuracy vs fusion-head cost"
    picks = [(label, p) for label, p in _runs(table3)
             if {"params", "flops", "best_action_top1"} <= set(p.run.metrics)]
    if not picks:
        return Plot("cost_accuracy", title, note="skipped: no Table 3 run logged params, flops "
                    "and best_action_top1")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    backbones = sorted({p.run.tags.get("backbone", "?") for _, p in picks})
    colors = {head: f"C{i}" for i, head in enumerate(HEAD_NAMES)}
    for ax, metric, scale, xlabel in ((axes[0], "params", 1e6, "head parameters (M)"),
                                      (axes[1], "flops", 1e9, "head GFLOPs per clip")):
        for label, pick in picks:
            run = pick.run
            head = run.tags.get("fusion", "?")
            x, y = run.metrics[metric] / scale, 100 * run.metrics["best_action_top1"]
            ax.scatter(x, y, s=60, color=colors.get(head, "k"),
                       marker=MARKERS[backbones.index(run.tags.get("backbone", "?")) % 10],
                       label=label, edgecolor="black", linewidth=0.5, zorder=3)
            ax.annotate(HEAD_NAMES.get(head, head), (x, y), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.margins(x=0.3, y=0.12)  # room for the labels beside the points
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("action top-1 (%)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title} (dataset: {_datasets(picks)})", fontsize=11)
    return _save(fig, out, "cost_accuracy", title)


def training_curves(table3: Table, history: History, out: Path) -> Plot:
    """Per-epoch validation action top-1 and training loss of the runs behind Table 3."""
    title = "Training curves of the Table 3 runs"
    picks = _runs(table3)
    if not picks:
        return Plot("training_curves", title, note="skipped: Table 3 has no runs")
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, pick) in enumerate(picks):
        name = f"{label} {pick.run.run_id[:8]}"
        for ax, key, scale in ((acc, "action_top1", 100), (loss, "train_loss", 1)):
            points = history(pick.run.run_id, key)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, [v * scale for v in values], label=name, color=f"C{i % 10}",
                        marker="." if len(points) < 30 else None)
    acc.set_ylabel("validation action top-1 (%)")
    loss.set_ylabel("training loss")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    acc.legend(fontsize=7)
    fig.suptitle(f"{title} (dataset: {_datasets(picks)})", fontsize=11)
    return _save(fig, out, "training_curves", title)


# Accepted spellings in the benchmark file: a list of records, or {"results": [...]}.
_HEAD = ("head", "fusion", "model")
_LENGTH = ("seq_len", "length", "L", "sequence_length", "video_len")
_TIME = ("fwd_bwd_ms", "time_ms", "ms", "median_ms")
_MEMORY = ("peak_mem_mb", "peak_memory_mb", "memory_mb", "peak_mem_mib")


def _first(record: dict[str, Any], keys: Sequence[str]) -> Any:
    return next((record[k] for k in keys if record.get(k) is not None), None)


def scaling(path: Path, out: Path) -> Plot:
    """fwd+bwd time and peak memory against sequence length (log-log), per head and backend."""
    title = "Sequence-length scaling of the fusion heads"
    if not path.exists():
        return Plot("scaling", title, note=f"skipped: {path} not found (run the fusion "
                    "benchmark of issue 3 first)")
    data = json.loads(path.read_text())
    records = data.get("results", data.get("records")) if isinstance(data, dict) else data
    series: dict[str, list[tuple[float, float, float | None]]] = defaultdict(list)
    for record in records if isinstance(records, list) else []:
        head, length, time = (_first(record, keys) for keys in (_HEAD, _LENGTH, _TIME))
        if head is None or length is None or time is None:
            continue
        backend = record.get("backend")
        label = HEAD_NAMES.get(head, head) + (f" [{backend}]" if backend else "")
        series[label].append((float(length), float(time), _first(record, _MEMORY)))
    if not series:
        return Plot("scaling", title, note=f"skipped: no records in {path} with a head "
                    f"({'/'.join(_HEAD)}), a length ({'/'.join(_LENGTH)}) and a time "
                    f"({'/'.join(_TIME)})")
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, points) in enumerate(sorted(series.items())):
        points.sort()
        t_ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                  color=f"C{i % 10}")
        mem = [(p[0], p[2]) for p in points if p[2] is not None]
        if mem:
            m_ax.plot(*zip(*mem, strict=True), marker="o", label=label, color=f"C{i % 10}")
    for ax, ylabel in ((t_ax, "fwd+bwd time (ms)"), (m_ax, "peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    t_ax.legend(fontsize=7)
    fig.suptitle(f"{title} ({path})", fontsize=11)
    return _save(fig, out, "scaling", title)


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
    return [cost_accuracy(table3, out), scaling(benchmark, out),
            training_curves(table3, mlflow_history(tracking_uri), out)]

"""The report's plots: the scaling plot's setup line and out-of-memory marks, the Wilson
interval of the cost-accuracy plot, and the validation size read from a run's artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reports.plots import (
    DEFAULT_CUDA_BACKEND,
    cost_accuracy,
    mlflow_clips,
    scaling,
    setup_line,
    wilson_interval,
)
from reports.tables import load_runs, table3
from tests.reports.test_tables import EXPERIMENT, log_run


def test_wilson_interval_matches_the_closed_form() -> None:
    # 7 of 66 right: p = 0.1061; Wilson 95 % by hand = (0.0523, 0.2031)
    low, high = wilson_interval(7 / 66, 66)
    assert (low, high) == pytest.approx((0.0523, 0.2031), abs=5e-4)
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(1.0, 10)[1] == 1.0
    low, high = wilson_interval(0.5, 10_000)  # large n: close to the normal interval
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 10_000), rel=1e-3)


def test_setup_line_names_gpu_batch_and_dtype() -> None:
    meta = {"device": "NVIDIA H200", "batch": 128, "amp": True, "torch": "2.13.0"}
    assert setup_line(meta) == "NVIDIA H200, batch 128, bf16 autocast, torch 2.13.0"
    assert "fp32" in setup_line({**meta, "amp": False})
    assert setup_line({}) == "device not recorded, batch not recorded, dtype not recorded"


def test_scaling_plot_keeps_out_of_memory_points(tmp_path: Path) -> None:
    records = [{"head": "mamba", "backend": b, "seq_len": n, "fwd_bwd_ms": n / 8,
                "peak_mem_mb": n, "status": "ok"}
               for b in ("torch", DEFAULT_CUDA_BACKEND) for n in (16, 64, 256)]
    records += [{"head": "transformer_6x4", "backend": None, "seq_len": 16, "fwd_bwd_ms": 3.0,
                 "peak_mem_mb": 90.0, "status": "ok"},
                {"head": "transformer_6x4", "backend": None, "seq_len": 64,
                 "status": "out of memory"},
                {"head": "transformer_6x4", "backend": None, "seq_len": 256,
                 "status": "skipped: out of memory at L=64"}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"device": "NVIDIA H200", "batch": 32, "amp": True,
                                         "command": "python benchmarks/fusion_heads.py"},
                                "results": records}))
    plot = scaling(path, tmp_path / "plots")
    assert plot.png is not None and plot.png.stat().st_size > 10_000
    assert plot.note.startswith("NVIDIA H200, batch 32, bf16 autocast")
    import matplotlib.pyplot as plt

    # drawn again to inspect: the two OOM lengths are marked, the triton line is there
    figure = _last_figure(path, tmp_path)
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts.count("OOM") == 4  # 2 lengths x (time, memory)
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "MambaVL [triton scan]" in legend and "Transformer 6×4" in legend
    assert "no triton" not in figure.texts[0].get_text()
    plt.close(figure)


def _last_figure(path: Path, tmp_path: Path):
    """Re-run `scaling` with savefig's close suppressed, returning its figure."""
    import matplotlib.pyplot as plt

    from reports import plots

    close = plots.plt.close
    plots.plt.close = lambda fig=None: None
    try:
        scaling(path, tmp_path / "again")
    finally:
        plots.plt.close = close
    return plt.gcf()


def test_scaling_plot_says_when_the_default_backend_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"device": "NVIDIA H100", "batch": 128, "amp": True},
                                "results": [{"head": "mamba", "backend": "torch", "seq_len": 16,
                                             "fwd_bwd_ms": 2.0, "status": "ok"}]}))
    figure = _last_figure(path, tmp_path)
    assert f"no {DEFAULT_CUDA_BACKEND} scan" in figure.texts[0].get_text()


def test_scaling_plot_of_a_cpu_run_without_memory(tmp_path: Path) -> None:
    """`fusion_heads.py --quick` on a CPU records no GPU memory: the plot says so instead of
    failing to log-scale an empty axis."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"device": "cpu", "batch": 4, "dtype": "fp32"},
                                "results": [{"head": h, "backend": None, "seq_len": n,
                                             "fwd_bwd_ms": n / 4, "peak_mem_mib": None,
                                             "status": "ok"}
                                            for h in ("mlp", "transformer_6x4")
                                            for n in (16, 64)]}))
    assert scaling(path, tmp_path / "plots").png is not None
    figure = _last_figure(path, tmp_path)
    assert "no memory recorded (CPU run)" in [t.get_text() for t in figure.axes[1].texts]


def test_cost_accuracy_reads_n_from_the_runs_artifact(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    with_csv = log_run(client, exp, fusion="mamba", backbone="orvit", best=0.3)
    log_run(client, exp, fusion="mlp", backbone="orvit", best=0.2, start=1)  # no artifact
    per_class = tmp_path / "per_class_accuracy.csv"
    per_class.write_text("head,class_id,count,top1\nverb,0,40,0.5\nverb,3,26,0.1\n"
                         "noun,1,66,0.2\n")
    client.log_artifact(with_csv, str(per_class))
    runs, _ = load_runs(uri, EXPERIMENT)
    clips = mlflow_clips(uri)
    by_id = {r.run_id: r for r in runs}
    assert clips(by_id[with_csv]) == 66
    assert clips(next(r for r in runs if r.run_id != with_csv)) is None
    plot = cost_accuracy(table3(runs, "best"), tmp_path / "plots", clips)
    assert plot.note == "n = 66 validation clips (1 run(s) without a known n: no interval)"

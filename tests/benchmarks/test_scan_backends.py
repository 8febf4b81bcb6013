"""benchmarks/scan_backends.py: each call variant passes the inputs its name says."""

import pytest
import torch

from benchmarks.scan_backends import BenchConfig, make_inputs, scan_args

CPU = torch.device("cpu")
SMALL = BenchConfig(batch=2, d_inner=8, d_state=4, dtype="fp32")


def test_head_variant_is_the_heads_call():
    """`head`: u, softplus'd Δ, A, B, C and nothing else. Commit 20230aa's `else` gave it the
    `full` variant's z, D, Δ bias and a raw (mostly negative) Δ: its table rows timed another
    call than the one named, with states overflowing to inf."""
    inputs = make_inputs(SMALL, 2, 16, "head", CPU)
    assert set(inputs) == {"u", "delta", "A", "B", "C"}
    assert bool((inputs["delta"] > 0).all())
    assert all(t.requires_grad for t in inputs.values())


def test_head_views_hold_the_same_values_in_the_heads_layout():
    head = make_inputs(SMALL, 2, 16, "head", CPU)
    args = scan_args(make_inputs(SMALL, 2, 16, "head_views", CPU), "head_views")
    assert set(args) == {"u", "delta", "A", "B", "C"}
    for name in args:
        torch.testing.assert_close(args[name], head[name], rtol=0, atol=0)
    assert args["u"].stride(1) == 1 and args["B"].stride(1) == 1  # channels-last, states unit


def test_full_variant_has_every_option():
    inputs = make_inputs(SMALL, 2, 16, "full", CPU)
    assert set(inputs) == {"u", "delta", "A", "B", "C", "z", "D", "delta_bias"}


def test_the_triton_config_option_sets_the_backends_default(monkeypatch):
    """`--triton-config staged_fwd=true`: the triton backend's calls without a config (all
    of this benchmark's) then use it."""
    pytest.importorskip("triton")
    from benchmarks.scan_backends import set_triton_config
    from fusion import ssm_triton

    monkeypatch.setattr(ssm_triton, "DEFAULT_CONFIG", ssm_triton.DEFAULT_CONFIG)
    config = set_triton_config("staged_fwd=true,block_t=4")
    assert ssm_triton.DEFAULT_CONFIG is config
    assert config == ssm_triton.ScanConfig(staged_fwd=True, block_t=4)
    assert ssm_triton.scan_config(256, 1536, 16, time_unit=True)["STAGED_FWD"] == 1


def test_the_table_judges_gpu_time_apart_and_flags_host_bound_rows():
    """A triton step whose events' time is over 1.5x its kernels' is marked host-bound; the
    goal is judged on the events' time and, in its own column, on the GPU's."""
    from benchmarks.scan_backends import markdown

    meta = {"device": "test", "command": "c", "batch": 2, "d_inner": 8, "d_state": 4,
            "dtype": "bf16", "torch": "t", "triton": "t", "mamba_ssm": "m",
            "available": ["triton", "mamba_ssm"]}
    row = {"variant": "head", "seq_len": 16, "status": "ok"}
    results = [{**row, "backend": "triton", "mode": "fwd_bwd", "ms": 1.5, "gpu_ms": 0.2},
               {**row, "backend": "mamba_ssm", "mode": "fwd_bwd", "ms": 2.8, "gpu_ms": 2.8},
               {**row, "backend": "triton", "mode": "fwd", "ms": 0.3, "gpu_ms": 0.25},
               {**row, "backend": "mamba_ssm", "mode": "fwd", "ms": 0.8, "gpu_ms": 0.8}]
    text = markdown({"meta": meta, "results": results})
    assert ("| 16 | fwd_bwd | 1.500 | 2.800 | 0.54x |  | NO (host-bound) | 0.200 | 2.800 | "
            "0.07x | yes |") in text
    assert "| 16 | fwd | 0.300 | 0.800 | 0.37x |  | yes | 0.250 | 0.800 | 0.31x | yes |" in text

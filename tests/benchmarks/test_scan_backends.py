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

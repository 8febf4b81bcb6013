"""The staged scan forward (`fusion.ssm_staged`, Gluon): its staging layout, its sm_90
compile, where `fusion.ssm_triton` takes it, and (GPU) its results against the Triton
forward's."""

import itertools
import json

import pytest
import torch

from tests.fusion.test_ssm import assert_close, run_and_grads
from tests.fusion.test_ssm_triton import TOL, cuda_inputs, grads_equal


def gluon():
    pytest.importorskip("triton")
    return pytest.importorskip("triton.experimental.gluon")


def element(layout, reg: int, lane: int, warp: int) -> tuple[int, ...]:
    """The element a register of a lane of a warp holds in a linear layout (its bases
    combined by XOR over the set bits of each index)."""
    at = [0] * len(layout.shape)
    for bases, index in ((layout.reg_bases, reg), (layout.lane_bases, lane),
                         (layout.warp_bases, warp)):
        for bit, basis in enumerate(bases):
            if index >> bit & 1:
                at = [a ^ b for a, b in zip(at, basis, strict=True)]
    return tuple(at)


@pytest.mark.parametrize("warps", [1, 2, 4])
def test_the_staging_layout_loads_whole_lines_once(warps):
    """A staged block, row = chunk * channels + channel, holds each element once, and the 8
    lanes that share a register and a channel hold its 8 consecutive chunks: one 128-byte
    line of bf16 (each lane 8 steps, 16 bytes), where a chunk's own tile read 16 bytes a
    line."""
    gluon()
    from fusion.ssm_staged import CHUNK as STEPS
    from fusion.ssm_staged import staging_layout

    layout = staging_layout(warps)
    block_d = 16 * warps
    regs, lanes = 1 << len(layout.reg_bases), 1 << len(layout.lane_bases)
    held = [element(layout, r, lane, w) for r, lane, w in
            itertools.product(range(regs), range(lanes), range(warps))]
    assert sorted(held) == list(itertools.product(range(STEPS * block_d), range(STEPS)))
    for r, w in itertools.product(range(0, regs, STEPS), range(warps)):
        for group in range(0, 32, 8):
            steps = set()
            for lane in range(group, group + 8):
                row = element(layout, r, lane, w)[0]
                steps |= {(row // block_d) * STEPS + element(layout, r + k, lane, w)[1]
                          for k in range(STEPS)}
                assert row % block_d == element(layout, r, group, w)[0] % block_d  # a channel
            assert steps == set(range(STEPS * STEPS))  # its 64 steps: one 128-byte line


def test_the_staged_forward_only_where_it_applies(monkeypatch):
    """Asked for, on 16-byte-aligned time-contiguous tensors with 16 states and a warp per 16
    channels; by default only without per-row lengths; not under Triton's interpreter
    (Gluon has none), not when turned off."""
    pytest.importorskip("triton")
    from fusion import ssm_triton
    from fusion.ssm_triton import ScanConfig, scan_config, staged_forward

    on = scan_config(256, 1536, 16, ScanConfig(staged_fwd=True), time_unit=True)
    monkeypatch.setattr(ssm_triton, "triton_interpreted", lambda: False)
    assert staged_forward(on, 8, 16, ragged=False) and staged_forward(on, 8, 16, ragged=True)
    monkeypatch.setattr(ssm_triton, "GLUON_READY", True)
    default = scan_config(256, 1536, 16, time_unit=True)
    assert staged_forward(default, 8, 16, ragged=False)
    assert not staged_forward(default, 8, 16, ragged=True)  # slower with lengths
    off = scan_config(256, 1536, 16, ScanConfig(staged_fwd=False), time_unit=True)
    assert not staged_forward(off, 8, 16, ragged=False)
    assert not staged_forward(on, 4, 16, ragged=False)  # rows not on 16 bytes
    assert not staged_forward(on, 0, 16, ragged=False)  # channels-last views
    assert not staged_forward(on, 8, 12, ragged=False)
    lanes = scan_config(256, 1536, 16, ScanConfig(staged_fwd=True, block_d_fwd=16), True)
    assert not staged_forward(lanes, 8, 16, ragged=False)  # 16 channels on 2 warps
    monkeypatch.setattr(ssm_triton, "triton_interpreted", lambda: True)
    assert not staged_forward(on, 8, 16, ragged=False)


def test_the_staged_forward_compiles_for_sm90_reading_u_and_delta_from_shared_memory(tmp_path):
    """sm_90 compile of the head's (b, d, L) call: no spill, u and Δ through shared memory
    (stores once a block, loads a chunk), no shuffle to pick a step (the Triton forward's
    (16 channels, 2 lanes) tiles split a chunk's steps over the lane pair: 24 a chunk)."""
    gluon()
    from benchmarks import scan_sass

    flags = ["--L", "256", "--d", "1536", "--layout", "contiguous", "--no-has-d",
             "--no-has-z", "--no-has-bias", "--no-softplus"]
    rows = {}
    for name, asked in (("staged", "True"), ("triton", "False")):
        extra = ["--staged-fwd", asked]
        out = scan_sass.main([*flags, *extra, "--out", str(tmp_path / name)])
        rows[name] = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    staged, plain = rows["staged"], rows["triton"]
    assert staged["kernel"] == "forward (staged)" and plain["kernel"] == "forward"
    assert staged["stack_bytes"] == 0
    assert staged["main_loop"]["STS"] > 0 and staged["main_loop"]["LDS"] > 0
    assert staged["main_loop"]["SHFL"] <= 8 < plain["main_loop"]["SHFL"]  # y's lane pair only
    assert staged["main_loop"]["instructions"] < plain["main_loop"]["instructions"]


@pytest.mark.gpu
@pytest.mark.parametrize(("b", "d", "L", "lengths", "options", "dtype"), [
    (3, 96, 200, [200, 77, 5], True, torch.bfloat16),
    (2, 64, 64, None, False, torch.bfloat16),
    (2, 160, 136, [136, 64], False, torch.float16),
    (2, 32, 256, [256, 1], True, torch.float32),
    (2, 48, 16, [16, 9], True, torch.bfloat16),
    (2, 1536, 256, None, False, torch.bfloat16),
])
def test_the_staged_forward_matches_the_triton_forward(b, d, L, lengths, options, dtype,
                                                      monkeypatch):
    """y and every gradient (the backward reads the staged forward's states) against the
    Triton forward's, ragged rows, partial channel blocks and blocks of 64 steps included."""
    gluon()
    from fusion import ssm_staged
    from fusion.ssm_triton import ScanConfig, selective_scan_triton

    launched, kernel = [], ssm_staged.scan_fwd_staged_kernel

    class Spy:  # counts the staged kernel's launches: the comparison is not Triton vs Triton
        def __getitem__(self, grid):
            launched.append(grid)
            return kernel[grid]

    monkeypatch.setattr(ssm_staged, "scan_fwd_staged_kernel", Spy())

    inputs = cuda_inputs(b, d, 16, L, dtype, seed=L + d, options=options)
    kwargs = {"delta_softplus": options,
              "lengths": None if lengths is None else torch.tensor(lengths, device="cuda")}
    y, grads = run_and_grads(selective_scan_triton, inputs,
                             config=ScanConfig(staged_fwd=True), **kwargs)
    assert len(launched) == 1
    y_ref, grads_ref = run_and_grads(selective_scan_triton, inputs,
                                     config=ScanConfig(staged_fwd=False), **kwargs)
    assert len(launched) == 1
    tol = TOL[dtype]  # bf16 / fp16 outputs may differ by a rounding step
    assert_close(y.float(), y_ref.float(), tol)
    grads_equal(grads, grads_ref, tol)


@pytest.mark.parametrize(("version", "has_gluon", "ready"), [
    ("3.6.0", True, True), ("3.6.1+git1234", True, True),
    ("3.5.1", True, False), ("3.7.0", True, False), ("3.6.0", False, False),
])
def test_the_default_takes_it_only_on_the_triton_it_was_written_for(monkeypatch, version,
                                                                     has_gluon, ready):
    """`staged_fwd=None` (the default) means Triton 3.6 with Gluon (`GLUON_READY`); True and
    False are kept as asked, whatever the Triton."""
    triton = pytest.importorskip("triton")
    import importlib.util

    from fusion import ssm_triton
    from fusion.ssm_triton import ScanConfig, scan_config

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        find_spec(name, *a) if has_gluon or "gluon" not in name else None))
    assert ssm_triton.gluon_ready() is ready
    assert ScanConfig().staged_fwd is None
    for default in (True, False):
        monkeypatch.setattr(ssm_triton, "GLUON_READY", default)
        cfg = scan_config(256, 1536, 16, time_unit=True)
        assert cfg["STAGED_FWD"] == (ssm_triton.STAGED_DEFAULT if default else 0)
        for asked in (True, False):
            cfg = scan_config(256, 1536, 16, ScanConfig(staged_fwd=asked), time_unit=True)
            assert cfg["STAGED_FWD"] == (ssm_triton.STAGED_ASKED if asked else 0)


def test_asking_for_it_without_gluon_names_the_fix(monkeypatch):
    """On a Triton without Gluon, `staged_fwd=True` fails at the call with what to do, not
    with a bare import error (and never falls back unannounced)."""
    pytest.importorskip("triton")
    import sys

    from fusion import ssm_triton
    from fusion.ssm_triton import ScanConfig, selective_scan_triton

    monkeypatch.setattr(ssm_triton, "triton_interpreted", lambda: False)
    import fusion

    monkeypatch.setitem(sys.modules, "fusion.ssm_staged", None)  # import fails
    monkeypatch.delattr(fusion, "ssm_staged", raising=False)  # (an earlier import's binding)
    b, d, n, L = 1, 32, 16, 64
    u, delta = torch.zeros(b, d, L), torch.zeros(b, d, L)
    B, C = torch.zeros(b, n, L), torch.zeros(b, n, L)
    with pytest.raises(ImportError, match="staged_fwd=True.*leave staged_fwd off"):
        selective_scan_triton(u, delta, torch.zeros(d, n), B, C,
                              config=ScanConfig(staged_fwd=True))

"""`fusion.launch`: a cached launch runs only arguments its kernel was compiled for, and gives
what `kernel[grid](...)` gives."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from fusion import launch as launch_module  # noqa: E402
from fusion.launch import _spec, launch  # noqa: E402


def test_spec_keeps_what_triton_specialises_on():
    """Tensors apart by dtype and 16-byte alignment; integers by 1, multiples of 16 and
    width; bools apart from the integers they equal."""
    x = torch.zeros(8)
    assert _spec(x) != _spec(x[1:])  # 4 bytes off: not 16-byte aligned
    assert _spec(x) == _spec(torch.ones(8))
    assert _spec(x) != _spec(x.double())
    assert _spec(1) != _spec(2)
    assert _spec(16) != _spec(17)
    assert _spec(17) == _spec(19)
    assert _spec(2**31 - 1) != _spec(2**31)  # i32 / i64
    assert _spec(2**63) != _spec(2**63 - 1)  # u64 / i64
    assert _spec(True) != _spec(1)
    assert _spec(2.0) == _spec(3.5)  # fp32 arguments: never specialised
    assert _spec(None) is None


def test_launch_of_anything_else_is_the_plain_launch():
    """A recorder, or the interpreter's kernel: `kernel[grid](...)`, nothing cached."""
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs)) or "ran"

    assert launch(Recorder(), (2, 1), 3, BLOCK=4) == "ran"
    assert calls == [((2, 1), (3,), {"BLOCK": 4})]


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, scale, BLOCK: triton.language.constexpr):
    offs = triton.language.program_id(0) * BLOCK + triton.language.arange(0, BLOCK)
    mask = offs < n
    x = triton.language.load(x_ptr + offs, mask=mask)
    triton.language.store(y_ptr + offs, x * scale, mask=mask)


@pytest.mark.gpu
def test_cached_launch_equals_the_plain_launch(monkeypatch):
    """The second call of a key skips `JITFunction.run` and computes the same; a new
    alignment or integer class goes through `run` again (its own compiled kernel)."""
    if not launch_module.FAST:
        pytest.skip(f"fast launches are for Triton {launch_module.FAST_TRITON}")
    runs = []
    run = triton.runtime.jit.JITFunction.run
    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run",
                        lambda self, *a, **k: runs.append(1) or run(self, *a, **k))
    x = torch.randn(1024, device="cuda")

    def scaled(x, n, scale):
        y = torch.full_like(x, -1.0)
        launch(_scale_kernel, (triton.cdiv(n, 128),), x, y, n, scale, BLOCK=128)
        return y

    def expected(x, n, scale):
        return torch.cat([x[:n] * scale, torch.full_like(x[n:], -1.0)])

    for n, scale, fresh in [(1024, 2.0, True), (1024, 3.0, False), (1000, 2.0, True),
                            (999, 0.5, False), (1024, 2.0, False)]:
        before = len(runs)
        torch.testing.assert_close(scaled(x, n, scale), expected(x, n, scale))
        assert len(runs) - before == int(fresh), (n, scale)
    before = len(runs)  # 4 bytes off the allocation: not aligned, compiled for that
    torch.testing.assert_close(scaled(x[1:], 1000, 2.0), expected(x[1:], 1000, 2.0))
    assert len(runs) - before == 1


def test_a_launch_hook_means_the_plain_launch():
    """A profiler's launch hook gets its calls: with one set, `launch` is `kernel[grid]`."""
    from triton import knobs

    from fusion.launch import _hooked

    assert not _hooked()

    def hook(*args):
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert _hooked()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not _hooked()

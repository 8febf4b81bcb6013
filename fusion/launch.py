"""Triton kernel launches without `JITFunction.run`'s per-call Python.

Why (issue 18): at short lengths the scan's eager steps are host-bound, the GPU idle between
launches. On the H200's host a `kernel[grid](...)` launch of the scan's backward took 57 us
where the compiled kernel's own launcher took 13 (`benchmarks/scan_launches.py`,
scan_launches_h200_s19.md); a scan forward + backward makes four. This cache took 48: its
key, built in Python over 70 arguments, costs most of what it saves.

How: `launch(kernel, grid, *args, **kwargs)` is `kernel[grid](*args, **kwargs)`. The first
call with a given key goes through it: Triton compiles the kernel, or finds it in its caches,
and returns it. Later calls with that key run the compiled kernel's launcher directly
(`CompiledKernel[grid](...)`, every argument in signature order). The key holds what Triton
specialises a kernel on, never less: each tensor's dtype and whether its data is 16-byte
aligned; each integer's type class (i32 / i64 / u64), whether it is 1 and whether a multiple
of 16; a float's type; any other argument, every keyword (constexprs, compile options) and
the device, by value; and Triton's debug and instrumentation switches. So a cached kernel
only runs arguments it was compiled for.

Only on `FAST_TRITON` (the `CompiledKernel` interface this was written against and tested
with), without Triton's launch hooks (a profiler's) and outside `torch.compile`'s tracing
(which knows `kernel[grid](...)` calls, not this cache); elsewhere, and for anything that is
not a `JITFunction` (the interpreter's kernels, the benchmarks' launch recorders), the plain
launch. The results are the same either way (tests/fusion/test_launch.py).
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

FAST_TRITON = "3.6."
"""The Triton release whose `CompiledKernel[grid](...)` launcher this calls."""

FAST = triton.__version__.startswith(FAST_TRITON)

_compiled: dict[tuple, tuple] = {}  # key -> (compiled kernel, its keyword parameters in order)


def _spec(value):
    """What Triton's launcher specialises an argument on (a superset of it)."""
    if isinstance(value, Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if type(value) is int:  # not bool: Triton types those apart, by value here
        return value == 1, value % 16 == 0, -2**31 <= value < 2**31, value >= 2**63
    if type(value) is float:  # fp32, never specialised
        return float
    return value


def launch(kernel, grid: tuple[int, ...], *args, **kwargs):
    """`kernel[grid](*args, **kwargs)`, the compiled kernel it returns, with Triton's
    per-call binding and cache lookup skipped after the first call of each key (module
    docstring). Constexprs and options go in `kwargs`."""
    if torch.compiler.is_compiling():
        return kernel[grid](*args, **kwargs)
    if not FAST or _hooked() or not isinstance(kernel, JITFunction):
        return kernel[grid](*args, **kwargs)
    device = driver.active.get_current_device()
    key = (kernel, device, knobs.runtime.debug, knobs.compilation.instrumentation_mode,
           tuple(map(_spec, args)), tuple(kwargs.items()))
    hit = _compiled.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **kwargs)
        rest = kernel.arg_names[len(args):]
        if compiled is not None and all(name in kwargs for name in rest):
            _compiled[key] = compiled, rest
        return compiled
    compiled, rest = hit
    grid = tuple(grid) + (1,) * (3 - len(grid))
    # as `JITFunction.run` launches, without hooks (none set) or launch metadata (for hooks)
    compiled.run(*grid, driver.active.get_current_stream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *args,
                 *[kwargs[name] for name in rest])
    return compiled


def _hooked() -> bool:
    """Whether a launch hook is set (a profiler's): Triton 3.6 keeps them in `HookChain`s,
    empty by default."""
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)

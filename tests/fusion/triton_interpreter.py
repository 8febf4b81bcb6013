"""Shared by the Triton tests: scripts run in a subprocess, since `TRITON_INTERPRET` must be
set (or unset) before Triton is imported and `sys.modules` must start without it:
`run_interpreted` runs kernels under Triton's interpreter, `run_without_triton` a CPU run that
must never import Triton."""

from __future__ import annotations


def patch_numpy_index() -> None:
    """Triton's interpreter turns scalars into 1-element arrays and calls int() on them for a
    loop bound, which NumPy >= 2.4 refuses; index the element instead (test-only shim)."""
    import numpy as np

    try:
        int(np.array([1]))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor


def run_interpreted(script: str) -> str:
    """Runs `script` (which ends by printing "all cases match") in a subprocess under
    `TRITON_INTERPRET=1` on CPU tensors; its stdout. Skips where Triton is not installed."""
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                            env=env, capture_output=True, text=True, timeout=600)
    print(result.stdout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert "all cases match" in result.stdout
    return result.stdout


def run_without_triton(code: str) -> str:
    """Runs `code` (dedented) in a fresh interpreter on the CPU (`CUDA_VISIBLE_DEVICES=""`,
    `TRITON_INTERPRET` unset) from the repository root; its stdout. The test fails when the
    script does (its own asserts, e.g. `"triton" not in sys.modules`), with its stderr."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            cwd=Path(__file__).parents[2], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout

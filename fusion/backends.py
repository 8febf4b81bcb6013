"""Kernel-backend choice, shared by `fusion.ssm` (selective scan) and `fusion.token_conv`.

Each op lists the backends that can run on a device, least preferred first (`torch` always
can); `auto` takes the last. Naming one that cannot run here is an error, not a fallback,
except `triton` on the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, the tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable


def triton_interpreted() -> bool:
    """`TRITON_INTERPRET` is set: Triton kernels run on the CPU, interpreted."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(op: str, backend: str, choices: tuple[str, ...], available: list[str],
            triton_imports: Callable[[], bool]) -> str:
    """The concrete backend `backend` means for `op`, given what is `available` here;
    `triton_imports` is only called under the interpreter (a CPU run never imports Triton)."""
    if backend not in choices:
        raise ValueError(f"unknown {op} backend {backend!r}; have {choices}")
    if backend == "auto":
        return available[-1]
    if backend == "triton":
        if "triton" not in available and not (triton_interpreted() and triton_imports()):
            raise RuntimeError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1) "
                               "and an importable triton")
    elif backend not in available:
        raise RuntimeError(f"backend {backend!r} needs CUDA tensors and an importable "
                           f"{backend.replace('_', '-')}")
    return backend

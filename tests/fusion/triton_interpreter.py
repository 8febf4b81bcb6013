"""Shared by the Triton tests that run kernels under `TRITON_INTERPRET=1` (in a subprocess,
since the variable must be set before Triton is imported)."""

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

"""Load pickled files a user passes in without running the code a pickle can carry.

Why: a `.pkl` or `.pt` is a program for the unpickler; a downloaded checkpoint, C1 results
file or annotation pickle could run anything on load. Every reader of such files goes
through `load_pickle` / `load_torch`:

- `load_pickle`: a restricted unpickler whose `find_class` admits only the globals in
  `PICKLE_GLOBALS` (the data constructors of numpy arrays and of pandas DataFrames with
  EK100 columns), everything else is refused with an `UnsafePickleError` naming the file,
  the global and `--trust-pickle`. It extends pandas' own compat unpickler (what
  `pd.read_pickle` falls back to) so annotation pickles of older pandas versions load too.
- `load_torch`: `torch.load(weights_only=True)` with torch's own hardened unpickler, plus
  `TORCH_GLOBALS` (the same data constructors and `argparse.Namespace`, which AVION
  checkpoints pickle beside the tensors) as `torch.serialization.safe_globals`.

Only `trust_pickle=True` (the CLIs' `--trust-pickle`) fully unpickles a file the safe path
refuses, after a one-line warning on stderr. Unreadable files become one-line errors.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from features.errors import HarnessError, one_line

TRUST_HINT = "pass --trust-pickle if you trust this file (it runs the code it holds)"

# Every global the restricted unpickler admits, as `module.name` exactly as pickles spell it.
# Built by pickling C1 results and EK100 DataFrames (str / list / int / timestamp columns,
# RangeIndex or narration_id index, protocols 2, 4, 5) with the installed numpy 2.4 /
# pandas 3.1 / pyarrow and listing their globals with `pickletools.genops`. The
# `numpy.core.*` and `pandas.core.*` spellings are the same objects as numpy < 2 and
# pandas < 3 name them (mapped by pandas' compat table where they moved); not verified
# against files written by those versions.
NUMPY_GLOBALS = frozenset({
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy._core.numeric._frombuffer",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy.core.numeric._frombuffer",
})
BUILTIN_GLOBALS = frozenset({
    "builtins.slice",  # block placements
    "__builtin__.slice",  # protocol 2 spelling
    "builtins.bytearray",  # protocol 4 buffers
    "__builtin__.bytearray",
    "_codecs.encode",  # protocol 2 bytes
})
PANDAS_GLOBALS = frozenset({
    "pandas.DataFrame",
    "pandas.Index",
    "pandas.RangeIndex",
    "pandas.StringDtype",
    "pandas.NA",  # the missing value of string columns
    "pandas.arrays.ArrowStringArray",
    "pandas.arrays.StringArray",
    "pandas.arrays.DatetimeArray",
    "pandas.arrays.TimedeltaArray",
    "pandas.core.indexes.base._new_Index",
    "pandas.core.internals.managers.BlockManager",
    "pandas._libs.internals._unpickle_block",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked",
    # pandas < 3 spellings of the same classes
    "pandas.core.frame.DataFrame",
    "pandas.core.indexes.base.Index",
    "pandas.core.indexes.range.RangeIndex",
    "pandas.core.indexes.numeric.Int64Index",
    "pandas.core.internals.blocks.new_block",
    # pyarrow-backed string columns (pandas 3 default): buffers and a type by its alias
    "pyarrow.lib._restore_array",
    "pyarrow.lib.py_buffer",
    "pyarrow.lib.type_for_alias",
})
PICKLE_GLOBALS = NUMPY_GLOBALS | BUILTIN_GLOBALS | PANDAS_GLOBALS
# AVION checkpoints: `{'epoch', 'state_dict', 'optimizer', 'scaler', 'best_acc1', 'args'}`
# with `args` an argparse.Namespace that holds, for EK100 fine-tuning, `actions`, a
# pandas DataFrame of int columns (zhaoyue-zephyrus/AVION@9763533,
# scripts/main_lavila_finetune_cls.py: `args.actions = pd.DataFrame.from_dict(...)` and
# `dist_utils.save_on_master({... 'args': args})`; avion/utils/distributed.py saves it
# with plain `torch.save`). `best_acc1` may be a numpy scalar (pretraining's mAP).
TORCH_GLOBALS = PICKLE_GLOBALS | {"argparse.Namespace"}


class UnsafePickleError(HarnessError):
    """A pickle that needs a global outside the allow-list; the message names it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}; {TRUST_HINT}")
        self.reason = reason


class UnreadableFileError(HarnessError):
    """A file that is empty, truncated or not in the format its suffix says."""


def resolve(full_name: str) -> Any:
    """The object `module.name` names (the module part is the longest importable prefix)."""
    parts = full_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        module_name = {"__builtin__": "builtins"}.get(module_name, module_name)
        with warnings.catch_warnings():  # numpy.core.* spellings warn on numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                obj: Any = importlib.import_module(module_name)
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        return obj
    raise ImportError(full_name)


def warn_trusted(path: Path, reason: str) -> None:
    """The one-line warning printed before a file is fully unpickled."""
    print(f"warning: {path}: {reason}; fully unpickling it because of --trust-pickle "
          "(this runs any code it holds)", file=sys.stderr)


def _compat_unpickler() -> type:
    from pandas.compat.pickle_compat import Unpickler

    return Unpickler


def restricted_unpickler(path: Path, allowed: Iterable[str] = PICKLE_GLOBALS) -> type:
    """An unpickler class for `path` that admits only the globals in `allowed`."""
    allowed = frozenset(allowed)

    class RestrictedUnpickler(_compat_unpickler()):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            if f"{module}.{name}" not in allowed:
                raise UnsafePickleError(path, f"refused to unpickle global {module}.{name} "
                                        "(not a plain data type this format holds)")
            return super().find_class(module, name)

        def persistent_load(self, pid: Any) -> Any:
            raise UnsafePickleError(path, "refused a persistent id in the pickle")

    return RestrictedUnpickler


def load_pickle(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """Unpickle `path` with the allow-list; fully only if refused and `trust_pickle`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return restricted_unpickler(path)(handle).load()
    except UnsafePickleError as error:
        if not trust_pickle:
            raise
        warn_trusted(path, error.reason)
    except OSError:
        raise
    except Exception as error:  # any failure of the data constructors: a bad file
        raise unreadable(path, "pickle", error) from None
    try:
        import pandas as pd

        return pd.read_pickle(path)  # full unpickling, with pandas' compat for old files
    except Exception as error:
        raise unreadable(path, "pickle", error) from None


def unreadable(path: Path, what: str, error: BaseException | str) -> UnreadableFileError:
    """A one-line error for a file that is empty, cut short or of another format."""
    if path.stat().st_size == 0:
        return UnreadableFileError(f"{path}: empty file (0 bytes); expected a {what}; "
                                   "was the download or copy cut short?")
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {one_line(error)}"
    if len(reason) > 160:  # torch's zip errors run on for several sentences
        reason = reason.split(". ")[0]
    return UnreadableFileError(f"{path}: not a readable {what} ({reason}); is it complete "
                               "and in this format?")


# numpy dtype instances are rebuilt with BUILD, which torch admits only for allowed types:
# the dtypes of plain bool/int/float/complex/object/str/bytes/datetime arrays.
NUMPY_DTYPE_CODES = "?bBhHiIlLqQefdFDOUSMm"


@cache
def torch_safe_globals() -> tuple[tuple[Any, str], ...]:
    """`TORCH_GLOBALS` and numpy's dtype types as (object, name) pairs for torch."""
    import numpy as np

    pairs = []
    for name in sorted(TORCH_GLOBALS):
        try:
            pairs.append((resolve(name), name))
        except (ImportError, AttributeError):  # a spelling this environment does not have
            continue
    dtypes = {type(np.dtype(code)) for code in NUMPY_DTYPE_CODES}
    pairs += [(t, f"numpy.dtypes.{t.__name__}") for t in sorted(dtypes, key=str)]
    return tuple(pairs)


def _refused_globals(path: Path) -> list[str]:
    """Globals of a torch checkpoint outside torch's and our allow-lists (best effort)."""
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy or broken files: fall back to torch's own message
        return []
    return [g for g in found if g not in TORCH_GLOBALS]


def torch_reason(error: BaseException) -> str:
    """The informative part of torch's multi-paragraph weights-only error."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.S)
    reason = one_line(match.group(1) if match else text)
    return re.split(r"\.? Please use `torch", reason)[0]


def _refusal(path: Path, error: BaseException) -> str | None:
    """Why the weights-only loader refused `path`, or None if it is not a torch file."""
    refused = _refused_globals(path)
    if refused:
        return f"refused to unpickle global(s) {', '.join(refused)}"
    reason = torch_reason(error)
    named = re.search(r"GLOBAL (\S+)", reason)
    if named:
        return f"refused to unpickle global {named.group(1)}"
    if zipfile.is_zipfile(path):  # a torch.save archive whose pickle needs more
        return f"torch.load(weights_only=True) refused it: {reason}"
    return None


def load_torch(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[Any, bool]:
    """`torch.load` a user file safely; returns (object, fully_unpickled).

    `weights_only=True` with `TORCH_GLOBALS` admitted; a refused file is loaded fully only
    with `trust_pickle` (after a warning), else an `UnsafePickleError` names the globals.
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(torch_safe_globals())), \
                warnings.catch_warnings():  # a second, multi-line message for a bad file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as error:
        reason = _refusal(path, error)
        if reason is None:
            raise unreadable(path, "PyTorch file", torch_reason(error)) from None
        if not trust_pickle:
            raise UnsafePickleError(path, reason) from None
        warn_trusted(path, reason)
    except OSError as error:
        if error.filename is not None:
            raise
        raise unreadable(path, "PyTorch file", error) from None
    except (RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError) as error:
        raise unreadable(path, "PyTorch file", error) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except Exception as error:
        raise unreadable(path, "PyTorch file", error) from None

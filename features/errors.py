"""The one error boundary of every CLI: expected failures become one line and exit status 2.

Why: a user who passes a bad file should read what is wrong, where, and what to do, not a
traceback; a bug should still show its traceback. Every module raises a `HarnessError`
(or a subclass: `StoreError`, `AnnotationError`, `PredictionsError`, ...) for input or
environment problems, with a message naming the file/row and the fix. Each `python -m`
entry point calls `run_cli(main)`, which prints

    error: <what, where, what to do>

on stderr and exits 2. `--debug` (anywhere on the command line) or `MAMBAVL_DEBUG=1` shows
the traceback instead. Library errors on bad input (pandas, json, zipfile, zarr, OS errors)
that escape the read sites are translated here as a last resort; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = "MAMBAVL_DEBUG"
EXIT_ERROR = 2


class HarnessError(Exception):
    """An expected failure from input or environment; the message says what, where, what to do."""


def one_line(message: object) -> str:
    """The message on one line (listings joined with '; ')."""
    parts = [p.strip() for p in str(message).strip().splitlines() if p.strip()]
    return "; ".join(parts) or "failed (no message)"


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors that third-party readers raise on bad input (imported lazily: CLIs start fast)."""
    errors: list[type[BaseException]] = [json.JSONDecodeError, UnicodeDecodeError,
                                          zipfile.BadZipFile, EOFError]
    try:
        import pandas as pd

        errors += [pd.errors.ParserError, pd.errors.EmptyDataError]
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    try:
        from zarr.errors import BaseZarrError

        errors.append(BaseZarrError)
    except ImportError:  # pragma: no cover - older zarr
        pass
    return tuple(errors)


def describe(error: BaseException) -> str | None:
    """The one-line message of an expected error, or None for a bug (traceback wanted)."""
    if isinstance(error, HarnessError):
        return one_line(error)
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or type(error).__name__
        return f"{error.filename}: {reason}"
    if isinstance(error, OSError) and str(error):
        return one_line(f"{type(error).__name__}: {error}")
    if isinstance(error, _library_errors()):
        return one_line(f"{type(error).__name__}: {error} (rerun with --debug for where)")
    return None


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` behind the error boundary; returns the process exit status.

    `--debug` is removed from argv before `main` sees it. A `SystemExit` with a message
    (argument errors, `raise SystemExit("...")`) is printed the same way as a HarnessError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as stop:
        code = stop.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        if debug:
            raise
        text = one_line(code)
        print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:
        message = describe(error)
        if message is None or debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return result if isinstance(result, int) else 0


def resolve_device(name: str) -> Any:
    """`auto` -> CUDA when present, else CPU; a device that is not there is a HarnessError.

    Checked before any work, so a run on a missing GPU fails in its first second and leaves
    nothing behind (no run folder, no sweep trial).
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise HarnessError(f"--device {name!r}: not a device ({error}); use auto, cpu, "
                           "cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"--device {name}: no CUDA GPU is visible here "
                               "(torch.cuda.is_available() is False); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HarnessError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                               "device(s) are visible")
    return device

"""The CLI error boundary: expected errors are one line and exit 2; bugs keep tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from features.errors import HarnessError, describe, one_line, run_cli
from features.store import StoreError
from tests.cli import one_error_line


def _fail(error: BaseException):
    def main(argv: list[str]) -> None:
        raise error

    return main


def test_harness_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(_fail(StoreError("a.zarr: broken\n  shard 3 missing")), [])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "error: a.zarr: broken; shard 3 missing\n"


def test_debug_flag_shows_the_traceback() -> None:
    with pytest.raises(StoreError):
        run_cli(_fail(StoreError("x")), ["--debug"])


def test_debug_flag_is_removed_before_main() -> None:
    seen = []
    assert run_cli(lambda argv: seen.append(argv) or 0, ["--a", "--debug", "b"]) == 0
    assert seen == [["--a", "b"]]


def test_bugs_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_cli(_fail(ZeroDivisionError("bug")), [])


def test_os_error_names_the_file(tmp_path) -> None:
    with pytest.raises(OSError) as caught:
        (tmp_path / "absent.csv").read_text()
    assert describe(caught.value) == f"{tmp_path / 'absent.csv'}: No such file or directory"


def test_system_exit_message_becomes_an_error_line(capsys) -> None:
    assert run_cli(_fail(SystemExit("error: bad flag")), []) == 2
    assert capsys.readouterr().err == "error: bad flag\n"
    assert run_cli(_fail(SystemExit(0)), []) == 0


def test_subclasses_are_harness_errors() -> None:
    assert issubclass(StoreError, HarnessError) and issubclass(StoreError, ValueError)
    assert one_line("") == "failed (no message)"


def test_real_cli_prints_one_line(tmp_path) -> None:
    missing = tmp_path / "nothing.npz"
    result = subprocess.run(
        [sys.executable, "-m", "fusion.evaluate", "--predictions", str(missing),
         "--annotations", str(tmp_path / "EPIC_100_validation.csv")],
        capture_output=True, text=True,
    )
    one_error_line(result)


def test_missing_gpu_is_a_harness_error() -> None:
    import torch

    from features.errors import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HarnessError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="no CUDA GPU"):
            resolve_device("cuda")

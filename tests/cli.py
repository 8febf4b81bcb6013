"""The CLI contract every bad-input test checks: exit status 2 and one `error: ` line."""

from __future__ import annotations

import subprocess


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `error: ` line of a CLI that refused its input (exit status 2)."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]

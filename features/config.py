"""The one config system of the harness: typed dataclasses, parsed by `tyro`.

Every stage declares its settings as a dataclass and calls `cli(Config, presets)`. Named
presets (the paper's settings) are plain instances of that dataclass; `--preset NAME`
selects one and any flag after it overrides single fields. The effective config is saved
with the outputs via `save_config`, so a run can always be reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def cli(
    config_type: type[T],
    presets: Mapping[str, T] | None = None,
    args: Sequence[str] | None = None,
    description: str | None = None,
) -> T:
    """Parse `config_type` from `args` (default: `sys.argv[1:]`), starting from a preset."""
    args = list(sys.argv[1:] if args is None else args)
    default = None
    if presets:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--preset", choices=sorted(presets))
        known, args = pre.parse_known_args(args)
        if known.preset:
            default = presets[known.preset]
        names = ", ".join(sorted(presets))
        description = f"{description or config_type.__doc__ or ''}\n\n--preset NAME: {names}"
    return tyro.cli(config_type, args=args, default=default, description=description)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; paths become strings."""

    def plain(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the effective config next to a stage's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    return path

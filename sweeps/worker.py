"""One worker process of a sweep: `python -m sweeps.worker CONFIG_JSON INDEX [PARENT_RUN]`.

The launcher starts these; they can also be started by hand on another machine against a
shared PostgreSQL study (`python -m sweeps` does the same with `--workers`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sweeps.config import SweepConfig
from sweeps.launch import die_with_launcher
from sweeps.study import run_worker


def main(argv: list[str]) -> None:
    die_with_launcher()
    config = SweepConfig.from_json(Path(argv[0]).read_text())
    index = int(argv[1]) if len(argv) > 1 else 0
    parent = argv[2] if len(argv) > 2 and argv[2] else None
    try:
        result = run_worker(config, index, parent)
    except KeyboardInterrupt:
        sys.exit(130)
    print(json.dumps({"worker": index, **result}))


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))

"""`python -m sweeps --fusion mamba --trials 50 [--workers N] [--parallel K] ...`"""

from __future__ import annotations

from features.config import cli
from sweeps.config import SweepConfig
from sweeps.launch import main

if __name__ == "__main__":
    import sys

    from features.errors import run_cli

    sys.exit(run_cli(lambda argv: main(cli(SweepConfig, args=argv))))

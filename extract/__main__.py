"""`python -m extract {video,text,tiny-roberta} ...`: see `extract.run`."""

import sys

from extract.run import main
from features.errors import run_cli

sys.exit(run_cli(main))

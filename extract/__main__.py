"""`python -m extract {video,text,tiny-roberta} ...`: see `extract.run`."""

import sys

from extract.run import main

sys.exit(main())

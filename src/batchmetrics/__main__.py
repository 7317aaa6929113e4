"""``python -m batchmetrics``: the command line (see ``batchmetrics --help``)."""

import sys

from ._cli import main

sys.exit(main())

"""``python -m mg3_eval``: the same command as ``mg3 eval``."""

import sys

from mg3_eval.cli import main

sys.exit(main())

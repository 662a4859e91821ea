"""``python -m mg3_env.eval_cli``: the old module path of ``mg3 eval``, kept for scripts that call it
(``bench/gpu/eval_export.sh``). The command lives in :mod:`mg3_eval.cli`; ``python -m mg3_eval`` is
the same."""

import sys

from mg3_eval.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

"""`python tools/score.py ...`: rlvr_jax/cli/score.py, whose docstring has the usage."""

import sys

from rlvr_jax.cli.score import main

if __name__ == "__main__":
    sys.exit(main())

"""`python tools/sample.py ...`: rlvr_jax/cli/sample.py, whose docstring has the usage."""

import sys

from rlvr_jax.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())

"""`python tools/onpolicy_answers.py ...`: rlvr_jax/cli/onpolicy_answers.py, whose docstring has
the usage."""

import sys

from rlvr_jax.cli.onpolicy_answers import main

if __name__ == "__main__":
    sys.exit(main())

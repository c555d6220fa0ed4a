"""`python tools/convert_checkpoint.py ...`: the command in rlvr_jax/cli/convert_checkpoint.py."""

import sys

from rlvr_jax.cli.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())

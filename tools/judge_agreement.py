"""`python tools/judge_agreement.py ...`: the command in rlvr_jax/cli/judge_agreement.py."""

import sys

from rlvr_jax.cli.judge_agreement import main

if __name__ == "__main__":
    sys.exit(main())

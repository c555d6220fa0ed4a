"""`python -m rlvr_jax.onpolicy --judge MODEL_DIR [--split heldout] [--out report.json]`: judges
and rules on the policy's own labelled answers (rlvr_jax/judge/onpolicy.py has the details)."""

import sys

from rlvr_jax.judge.onpolicy import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m rlvr_jax.onpolicy --judge MODEL_DIR [--policy default] [--split heldout] [--out F]`:
judges, rules and likelihood rewards on the policy's own labelled answers (the details are in
rlvr_jax/judge/onpolicy.py)."""

import sys

from rlvr_jax.judge.onpolicy import main

if __name__ == "__main__":
    sys.exit(main())

"""`python tools/mesh_bench.py ...`: rlvr_jax/cli/mesh_bench.py, whose docstring has the usage."""

import sys

from rlvr_jax.cli.mesh_bench import main

if __name__ == "__main__":
    sys.exit(main())

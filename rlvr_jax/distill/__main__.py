"""`python -m rlvr_jax.distill --config configs/judge_econ.py [--workdir DIR] [--config.KEY=VALUE]`

Distil a small generative judge from teacher verdicts (see rlvr_jax/distill/__init__.py).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rlvr_jax import checkpoint, data, host_memory
from rlvr_jax.distill.examples import LeakError
from rlvr_jax.models.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config (a Python file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every write at INFO
    cfg = _CONFIG.value
    if cfg is None:
        raise app.UsageError("--config is required, e.g. --config configs/judge_econ.py")
    from rlvr_jax import multihost
    from rlvr_jax.distill import run_in_job

    multihost.join(cfg.get("mesh"))  # the same environment and config fields as rlvr_jax.train
    try:
        run_in_job(cfg, _WORKDIR.value)
    except (data.DataError, checkpoint.CheckpointError, ConfigError, LeakError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    host_memory.keep_freed_memory()  # before the first JAX computation
    app.run(main)

"""`python -m rlvr_jax.distill --config configs/judge_econ.py [--workdir DIR] [--config.KEY=VALUE]`

Distil a small generative judge from teacher verdicts (see rlvr_jax/judge/distill/__init__.py).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from rlvr_jax import checkpoint, data, host_memory, shipped
from rlvr_jax.judge.distill.examples import LeakError
from rlvr_jax.models.config import ConfigError


def define_flags() -> dict:
    """The command's flags, defined only when it runs: importing this module defines none, so it
    never clashes with another command's --config."""
    return {
        "config": shipped.define_config_flag("config", "Distillation config (a Python file)."),
        "workdir": flags.DEFINE_string(
            "workdir", None, "Run directory (default: runs/<config name>)."
        ),
    }


def main(argv: list[str], fl: dict) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every write at INFO
    cfg = fl["config"].value
    if cfg is None:
        raise app.UsageError("--config is required, e.g. --config configs/judge_econ.py")
    from rlvr_jax import multihost
    from rlvr_jax.judge.distill import run_in_job

    multihost.join(cfg.get("mesh"))  # the same environment and config fields as rlvr_jax.train
    try:
        run_in_job(cfg, fl["workdir"].value)
    except (data.DataError, checkpoint.CheckpointError, ConfigError, LeakError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    host_memory.keep_freed_memory()  # before the first JAX computation
    fl = define_flags()
    app.run(lambda argv: main(argv, fl))

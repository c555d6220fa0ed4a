"""The implementations of the tools/ commands (`python tools/X.py` runs `rlvr_jax.cli.X.main`)."""

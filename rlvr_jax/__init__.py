"""rlvr_jax: RL with verifiable rewards beyond math and code, in JAX."""

import os

import flax

# transformers (used for tokenizers only) warns at import that PyTorch is missing; rlvr_jax never
# needs torch, so that line would only mislead. Its other advisory notes go with it; setting the
# variable to "" brings them back.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Parameters carry *logical* axis names as metadata; `rlvr_jax.mesh` maps them to mesh axes and
# places arrays itself. Flax's eager sharding would instead demand a global mesh at construction.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"

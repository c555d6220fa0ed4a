"""rlvr_jax: RL with verifiable rewards beyond math and code, in JAX."""

import flax

# Parameters carry *logical* axis names as metadata; `rlvr_jax.mesh` maps them to mesh axes and
# places arrays itself. Flax's eager sharding would instead demand a global mesh at construction.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"

"""Low-rank adapters (LoRA) on the model's dense products, and the operations on them.

An adapter on a weight W (ours are [in..., out...], see transformer.py) holds A [in..., r] and
B [r, out...]; the adapted product is x W + (alpha / r) (x A) B. The adapters live in the model
state beside the weights they adapt (`layers.i.attn.q_lora.a`, `...q_lora.b`), so the sampler and
the trainer run on the same arrays: there is no adapter sync to forget. The base model is the same
state without the adapter leaves (`split_adapters`), under the graphdef of `cfg.replace(lora=None)`;
exports merge W + (alpha / r) A B (`merge_adapters`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.matmul import project

SUFFIX = "_lora"  # the adapter of weight `q` is the submodule `q_lora`


class LoRA(nnx.Module):
    """The adapter of one weight: in_shape + out_shape are the weight's shape, with logical axis
    names in_names + out_names. A is drawn from the `lora` rng stream (its own, so the base
    weights of a random init do not depend on the adapters), B is zero."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        in_names: tuple[str, ...],
        out_names: tuple[str, ...],
        rank: int,
        scale: float,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        fan_in = int(np.prod(in_shape))
        # PEFT's default draw for A is uniform with bound 1/sqrt(fan_in); a normal with that std
        # keeps the same scale.
        a = jax.random.normal(rngs.lora(), (*in_shape, rank), jnp.float32) / np.sqrt(fan_in)
        self.a = nnx.Param(a.astype(dtype), out_sharding=(*in_names, "lora_rank"))
        self.b = nnx.Param(
            jnp.zeros((rank, *out_shape), dtype), out_sharding=("lora_rank", *out_names)
        )
        self.n_in = len(in_shape)
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        """The adapter's term (alpha / r) (x A) B for x [..., in...] -> [..., out...]."""
        return project(project(x, self.a[...], self.n_in), self.b[...]) * self.scale


def adapted(module: nnx.Module, name: str, x: jax.Array, n_in: int = 1) -> jax.Array:
    """x times the module's weight `name` (contracting x's last n_in axes), plus its adapter's
    term when it has one."""
    y = project(x, getattr(module, name)[...], n_in)
    lora = getattr(module, name + SUFFIX, None)
    return y if lora is None else y + lora(x)


def is_adapter(path: tuple, x: Any = None) -> bool:
    """nnx filter: the parameters of LoRA adapters."""
    return any(str(p).endswith(SUFFIX) for p in path)


def split_adapters(state: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) parts of a model state. The base part is a state of the model with
    `lora=None` (same arrays, no copy): the policy with its adapters off."""
    return nnx.split_state(state, is_adapter, ...)


def merge_adapters(cfg: ModelConfig, state: nnx.State) -> tuple[ModelConfig, nnx.State]:
    """(base config, state with every adapter merged into its weight) of an adapted model: a plain
    model that computes what the adapted one does. Unchanged when cfg has no adapters. The merge
    is computed in fp32 and cast back to each weight's dtype."""
    if cfg.lora is None:
        return cfg, state
    adapters, base = split_adapters(state)
    scale = cfg.lora.scale
    values = {p: v for p, v in nnx.to_flat_state(adapters)}
    out = []
    for path, var in nnx.to_flat_state(base):
        a = values.get((*path[:-1], path[-1] + SUFFIX, "a"))
        if a is not None:
            b = values[(*path[:-1], path[-1] + SUFFIX, "b")]
            w = var[...]
            delta = jnp.tensordot(
                jnp.asarray(a[...], jnp.float32), jnp.asarray(b[...], jnp.float32), axes=1
            )
            var = var.replace(value=(jnp.asarray(w, jnp.float32) + scale * delta).astype(w.dtype))
        out.append((path, var))
    return cfg.replace(lora=None), nnx.from_flat_state(out)

"""Supervised fine-tuning of the judge's top blocks on the teacher's verdict token.

The loss is the cross-entropy of the teacher's verdict at the last prompt position, with the
verdict's probability taken over the FULL vocabulary and summed over its spellings (YES, Yes, yes,
" YES", ...). Why not the two-way softmax P(YES)/(P(YES)+P(NO)): the paper's soft reward (Eq. 4)
reads the unnormalised P(YES), and the verdict is the judge's greedy first token, so the mass must
move onto the verdict tokens, not only between them. Why summed spellings rather than one target
spelling: that is how the scorer reads P(YES), and it does not fight the model's own preferred
spelling.

Only the top K blocks and the final norm are trained (`update.trainable_filter`); the frozen part
(embedding, which is also the tied head, and lower blocks) enters the step as an argument.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlvr_jax.distill import split_model as sm


@flax.struct.dataclass
class SFTState:
    """step [] int32, params (the trainable part of the judge's state), opt_state (for params)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


def init_state(params: nnx.State, optimizer: optax.GradientTransformation) -> SFTState:
    return SFTState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def batch_loss(
    graphdef: nnx.GraphDef,
    split: int,
    params: nnx.State,
    frozen: nnx.State,
    h: sm.Hidden,
    labels: jax.Array,
    weights: jax.Array,
    yes_ids: jax.Array,
    no_ids: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted verdict cross-entropy of a batch of split-layer states h; labels, weights [N]."""
    logits = sm.top_logits(graphdef, nnx.merge_state(frozen, params), split, h)
    lp_yes, lp_no = sm.verdict_logprobs(logits, yes_ids, no_ids)
    loss = sm.verdict_loss(lp_yes, lp_no, labels, weights)
    real = weights > 0
    hit = (lp_yes > lp_no) == labels.astype(bool)
    acc = jnp.sum(real & hit) / jnp.maximum(jnp.sum(real), 1)
    mass = jnp.sum(jnp.where(real, jnp.exp(jnp.logaddexp(lp_yes, lp_no)), 0.0))
    return loss, {"acc": acc, "verdict_mass": mass / jnp.maximum(jnp.sum(real), 1)}


def make_train_step(graphdef: nnx.GraphDef, split: int, optimizer: optax.GradientTransformation):
    """Jitted `(SFTState, frozen, h, labels, weights, yes_ids, no_ids) -> (SFTState, metrics)`.

    The SFTState is donated. A non-finite loss or gradient leaves the params and optimizer state
    unchanged (metrics["nonfinite"] = 1).
    """
    grad_fn = jax.value_and_grad(functools.partial(batch_loss, graphdef, split), has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(st: SFTState, frozen, h, labels, weights, yes_ids, no_ids):
        (loss, aux), grads = grad_fn(st.params, frozen, h, labels, weights, yes_ids, no_ids)
        gnorm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new = SFTState(st.step + 1, keep(params, st.params), keep(opt_state, st.opt_state))
        return new, {"loss": loss, "grad_norm": gnorm, "nonfinite": 1 - ok.astype(jnp.int32), **aux}

    return step


def flat_leaves(st: SFTState) -> list[Any]:
    """The state's leaves (a plain list is what the checkpoint stores; the tree is rebuilt from
    a fresh state's structure on restore)."""
    return jax.tree.leaves(st)

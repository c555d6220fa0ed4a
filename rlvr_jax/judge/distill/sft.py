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

from rlvr_jax import finite
from rlvr_jax.judge.distill import split_model as sm


@flax.struct.dataclass
class SFTState:
    """step [] int32, params (the trainable part of the judge's state), opt_state (for params),
    ema (the exponential moving average of params, or None when none is kept)."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    ema: nnx.State | None = None

    @property
    def judge_params(self) -> nnx.State:
        """What the judge is made of: the average when one is kept, else the params."""
        return self.params if self.ema is None else self.ema


def init_state(
    params: nnx.State, optimizer: optax.GradientTransformation, ema_decay: float = 0.0
) -> SFTState:
    """A fresh state; with ema_decay > 0 (make_train_step's), a moving average of the params is
    kept too, starting at params."""
    avg = jax.tree.map(jnp.copy, params) if float(ema_decay) > 0 else None
    return SFTState(jnp.zeros((), jnp.int32), params, optimizer.init(params), avg)


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
    pair_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted verdict cross-entropy of a batch of split-layer states h; labels, weights [N].
    pair_weight > 0 adds that times `split_model.pair_loss` (candidates of one prompt ranked)."""
    logits = sm.top_logits(graphdef, nnx.merge_state(frozen, params), split, h)
    lp_yes, lp_no = sm.verdict_logprobs(logits, yes_ids, no_ids)
    loss = sm.verdict_loss(lp_yes, lp_no, labels, weights)
    if pair_weight:
        loss = loss + pair_weight * sm.pair_loss(lp_yes, lp_no, labels, weights, h.owner)
    real = weights > 0
    hit = (lp_yes > lp_no) == labels.astype(bool)
    acc = jnp.sum(real & hit) / jnp.maximum(jnp.sum(real), 1)
    mass = jnp.sum(jnp.where(real, jnp.exp(jnp.logaddexp(lp_yes, lp_no)), 0.0))
    return loss, {"acc": acc, "verdict_mass": mass / jnp.maximum(jnp.sum(real), 1)}


def make_train_step(
    graphdef: nnx.GraphDef,
    split: int,
    optimizer: optax.GradientTransformation,
    ema_decay: float = 0.0,
    pair_weight: float = 0.0,
):
    """Jitted `(SFTState, frozen, h, labels, weights, yes_ids, no_ids) -> (SFTState, metrics)`.

    The SFTState is donated. A non-finite loss or gradient leaves the params and optimizer state
    unchanged (metrics["nonfinite"] = 1). With ema_decay d > 0 (and a state made with the same d),
    ema <- d * ema + (1 - d) * params after each step: an average over about 1 / (1 - d) steps,
    which evens out the last batches' pull on a judge trained on a few thousand rows.
    pair_weight: see `batch_loss`.
    """
    d = float(ema_decay)
    if not 0.0 <= d < 1.0:
        raise ValueError(f"config distill.ema_decay: {d} is not in [0, 1)")
    loss_fn = functools.partial(batch_loss, graphdef, split, pair_weight=float(pair_weight))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(st: SFTState, frozen, h, labels, weights, yes_ids, no_ids):
        if (st.ema is None) != (d == 0):  # at trace time: a state made for another decay
            have = "no average" if st.ema is None else "an average"
            raise ValueError(f"config distill.ema_decay: {d}, but the SFT state holds {have}")
        (loss, aux), grads = grad_fn(st.params, frozen, h, labels, weights, yes_ids, no_ids)

        def apply(params_and_opt):
            params, opt_state = params_and_opt
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        (params, opt_state), ok, gnorm = finite.apply_if_finite(
            loss, grads, apply, lambda unchanged: unchanged, (st.params, st.opt_state)
        )
        ema = st.ema
        if ema is not None:
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        new = SFTState(st.step + 1, params, opt_state, ema)
        return new, {"loss": loss, "grad_norm": gnorm, "nonfinite": 1 - ok.astype(jnp.int32), **aux}

    return step


def flat_leaves(st: SFTState) -> list[Any]:
    """The state's leaves (a plain list is what the checkpoint stores; the tree is rebuilt from
    a fresh state's structure on restore)."""
    return jax.tree.leaves(st)

"""The rule for a train step whose loss or gradients are not finite.

Such a step is skipped: params and optimizer state stay as they were (one NaN or inf moment would
poison every later step), and the caller reports it (metrics "nonfinite"). A jitted train step
calls `apply_if_finite` with its optimizer update as `apply` and its bookkeeping as `skip`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import optax

S = TypeVar("S")


def apply_if_finite(
    loss: jax.Array,
    grads: object,
    apply: Callable[[S], S],
    skip: Callable[[S], S],
    state: S,
) -> tuple[S, jax.Array, jax.Array]:
    """(new state, ok [] bool, grad_norm [] fp32): `apply(state)` when the loss [] and the global
    norm of the gradient tree `grads` are both finite, else `skip(state)`. Both branches must
    return a state of the same structure; `skip` is where a caller counts the skipped step.

    lax.cond rather than a jnp.where per leaf: on CPU a select over every parameter and moment
    costs a full pass over them, and the optimizer's work is not done for a skipped step.
    """
    gnorm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    return jax.lax.cond(ok, apply, skip, state), ok, gnorm

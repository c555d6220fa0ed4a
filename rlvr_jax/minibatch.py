"""The update schedule of one rollout: shuffled mini-batches, several clipped optimizer steps.

OpenRLHF's schedule, which the paper ran: a rollout of N samples is shuffled and cut into
mini-batches of `train_batch` rows; each mini-batch is one optimizer step (itself micro-batched,
see `update.loss_and_grads`), and `epochs` passes are made over the rollout. Every step's PPO
ratio is taken against the rollout's log-probs, so from the second step on the policy has moved
and the clip acts. With train_batch = N and one epoch this is one step on the whole rollout.

Shapes: N rollout rows, M = train_batch rows per step, S = epochs * N / M steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from rlvr_jax import multihost as mh
from rlvr_jax.data import DataError


def resolve_train_batch(n: int, train_batch: int, micro_batch: int) -> tuple[int, int]:
    """(rows per optimizer step, rows per micro-batch) for a rollout of n rows.

    train_batch <= 0 means the whole rollout. ConfigError names the config field when the sizes
    do not divide: every step must see the same number of rows (one compiled step).
    """
    tb = n if train_batch <= 0 else int(train_batch)
    if tb > n or n % tb:
        raise DataError(
            f"config rl.train_batch={train_batch} must divide the rollout's {n} samples "
            "(rollout.prompts_per_step x rollout.samples_per_prompt)"
        )
    micro = min(int(micro_batch), tb)
    if tb % micro:
        raise DataError(
            f"config optim.micro_batch={micro_batch} must divide rl.train_batch={tb} "
            "(rows per optimizer step)"
        )
    return tb, micro


def steps_per_rollout(n: int, train_batch: int, epochs: int) -> int:
    """Optimizer steps one rollout makes: epochs * n / train_batch (train_batch as resolved)."""
    return int(epochs) * (n // int(train_batch))


def shuffled_order(key: jax.Array, n: int, train_batch: int, epochs: int) -> np.ndarray:
    """Row indices [S, M] of each optimizer step: a fresh permutation of the rollout per epoch.

    With train_batch = n the rows stay in rollout order (one step per epoch sees every row, so
    the order changes nothing but the rounding of the sums).
    """
    if train_batch >= n:
        return np.tile(np.arange(n), (int(epochs), 1))
    perms = [
        np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n)) for e in range(epochs)
    ]
    return np.concatenate(perms).reshape(-1, train_batch)


@jax.jit
def _gather(batch: Any, idx: jax.Array) -> Any:
    # Inside jit: the rows may be sharded over devices (or hosts); XLA does the exchange.
    return jax.tree.map(lambda x: x[idx], batch)


def take_rows(batch: Any, idx: np.ndarray) -> Any:
    """The rows idx [M] of every array of a batch pytree (None leaves stay None)."""
    if idx.shape[0] == jax.tree.leaves(batch)[0].shape[0] and np.all(idx == np.arange(idx.size)):
        return batch
    return _gather(batch, np.asarray(idx, np.int32))


# How each metric of a step becomes the rollout's: the default is the mean over its steps.
_FIRST = ("logp_drift",)  # measured before the policy moved
_LAST = ("nonfinite_total", "nonfinite_streak")
_SUM = ("nonfinite",)


def run_steps(
    train_step: Callable[[Any, Any], tuple[Any, dict]], state: Any, batch: Any, order: np.ndarray
) -> tuple[Any, dict[str, np.ndarray]]:
    """Apply train_step to the mini-batches order [S, M] of batch in turn.

    Returns (state, metrics): each step metric reduced over the S steps (mean; logp_drift of the
    first step; nonfinite summed; the nonfinite counters of the last), plus opt_steps (updates
    applied), clip_frac_max and approx_kl_max (the largest step values: the clip and the KL grow
    as the policy moves away from the one that sampled).
    """
    mets = []
    for idx in order:
        state, m = train_step(state, take_rows(batch, idx))
        mets.append(m)
    mets = mh.tree_to_host(mets)
    out = {}
    for k in mets[0]:
        vals = np.stack([np.asarray(m[k], np.float64) for m in mets])
        if k in _FIRST:
            out[k] = vals[0]
        elif k in _LAST:
            out[k] = vals[-1]
        elif k in _SUM:
            out[k] = vals.sum()
        else:
            out[k] = vals.mean()
    out["opt_steps"] = np.float64(len(mets)) - out.get("nonfinite", 0.0)
    for k in ("clip_frac", "approx_kl"):
        if k in mets[0]:
            out[f"{k}_max"] = max(float(m[k]) for m in mets)
    return state, out

"""rlvr_jax.minibatch: the shuffled mini-batch schedule of one rollout."""

import jax
import numpy as np
import pytest

from rlvr_jax import data, minibatch


def test_resolve_train_batch_and_errors():
    assert minibatch.resolve_train_batch(512, 0, 8) == (512, 8)  # 0: the whole rollout
    assert minibatch.resolve_train_batch(512, 128, 8) == (128, 8)
    assert minibatch.resolve_train_batch(16, 0, 128) == (16, 16)  # micro-batch capped
    assert minibatch.steps_per_rollout(512, 128, 1) == 4
    assert minibatch.steps_per_rollout(512, 128, 2) == 8
    with pytest.raises(data.DataError, match="rl.train_batch=100"):
        minibatch.resolve_train_batch(512, 100, 4)
    with pytest.raises(data.DataError, match="optim.micro_batch=48"):
        minibatch.resolve_train_batch(512, 128, 48)


def test_shuffled_order_is_a_fresh_permutation_per_epoch():
    key = jax.random.key(7)
    order = minibatch.shuffled_order(key, 32, 8, 2)
    assert order.shape == (8, 8)
    for epoch in (order[:4], order[4:]):
        assert sorted(epoch.ravel().tolist()) == list(range(32))  # every row once per epoch
    assert not np.array_equal(order[:4], order[4:])
    assert not np.array_equal(order[:4].ravel(), np.arange(32))  # shuffled
    np.testing.assert_array_equal(order, minibatch.shuffled_order(key, 32, 8, 2))  # same key
    other = minibatch.shuffled_order(jax.random.key(8), 32, 8, 2)
    assert not np.array_equal(order, other)
    # The whole rollout per step: rollout order, one row of indices per epoch.
    np.testing.assert_array_equal(
        minibatch.shuffled_order(key, 32, 32, 2), np.tile(np.arange(32), (2, 1))
    )


def test_run_steps_feeds_each_mini_batch_and_reduces_metrics():
    seen = []

    def step(state, batch):
        seen.append(np.asarray(batch["x"]).tolist())
        k = len(seen)
        met = {"loss": float(k), "clip_frac": 0.1 * (k - 1), "logp_drift": 10.0 * k,
               "nonfinite": int(k == 2), "nonfinite_total": k, "approx_kl": 0.0}  # fmt: skip
        return state + 1, met

    batch = {"x": np.arange(6) * 10, "none": None}
    order = np.array([[4, 0], [1, 5], [2, 3]])
    state, m = minibatch.run_steps(step, 0, batch, order)
    assert state == 3 and seen == [[40, 0], [10, 50], [20, 30]]
    assert m["loss"] == pytest.approx(2.0) and m["clip_frac"] == pytest.approx(0.1)
    assert m["clip_frac_max"] == pytest.approx(0.2)
    assert m["logp_drift"] == 10.0  # the first step's: before the policy moved
    assert m["nonfinite"] == 1 and m["nonfinite_total"] == 3 and m["opt_steps"] == 2

"""rlvr_jax.losses against numbers worked out by hand (the expected values are written out)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import losses

A = lambda x: jnp.asarray(x, jnp.float32)


def close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want, np.float32), rtol=tol, atol=tol)


def test_zscore_per_group():
    # [1,0,0,1]: mu .5, std .5 -> +-1; [3,1] and [2,6] for G=2; constant group -> 0.
    close(losses.zscore(A([1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5]), 4), [1, -1, -1, 1, 0, 0, 0, 0])
    close(losses.zscore(A([3, 1, 2, 6]), 2), [1, -1, -1, 1])


def test_zscore_constant_group_is_exactly_zero():
    # 0.1*3/3 != 0.1 in fp32: a naive (r - mu) / (std + eps) would give non-zero advantages.
    out = np.asarray(losses.zscore(A([0.1, 0.1, 0.1, 0.7, 0.7, 0.7]), 3))
    assert np.all(out == 0.0)


def test_zscore_per_batch():
    # mean .5; deviations +-.5 on four rows, 0 on four; var = 1/8, std = 0.353553 -> +-sqrt(2).
    r = A([1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5])
    s2 = 1.4142135
    close(losses.normalize_rewards(r, 4, "batch"), [s2, -s2, -s2, s2, 0, 0, 0, 0])
    close(losses.normalize_rewards(r, 4, "none"), r)


def test_rloo_raw_and_normalised():
    # Raw [1,0,0,0]: baselines 0 and 1/3.
    close(losses.rloo_advantages(A([1, 0, 0, 0]), 4), [1, -1 / 3, -1 / 3, -1 / 3])
    # Group z-score (sample std .5) of [1,0,0,0] = [1.5, -.5 x3]; leave-one-out scales it by
    # G/(G-1) = 4/3.
    got = losses.sequence_advantages("rloo", A([1, 0, 0, 0]), 4, "group")
    close(got, [2.0, -2 / 3, -2 / 3, -2 / 3])
    # Batch z-score (the default, Eq. 5): [1,0,0,0,1,1,0,0] has mean .375, population std
    # .4841229; leave-one-out of the first group [1.2909944, -.7745967 x3] -> [2.7537908, ...].
    got = losses.sequence_advantages("rloo", A([1, 0, 0, 0, 1, 1, 0, 0]), 4)
    z1, z0 = 0.625 / 0.4841229, -0.375 / 0.4841229
    close(got[:4], [z1 - z0, (z0 - (z1 + 2 * z0) / 3)] + [z0 - (z1 + 2 * z0) / 3] * 2)
    with pytest.raises(ValueError):
        losses.rloo_advantages(A([1, 0]), 1)


def test_grpo_and_dr_grpo():
    # Sample std (ddof 1) of [1,0,0,0] is .5: advantages [1.5, -.5 x3].
    close(losses.sequence_advantages("grpo", A([1, 0, 0, 0]), 4), [1.5] + [-0.5] * 3)
    close(losses.sequence_advantages("dr_grpo", A([1, 0, 0, 0]), 4), [0.75, -0.25, -0.25, -0.25])
    # GRPO ignores reward_norm (its own group statistics); [3,1]: sample std sqrt(2).
    close(losses.sequence_advantages("grpo", A([3, 1]), 2, "none"), [0.7071068, -0.7071068])
    # std_eps (TRL adds 1e-4): [1,0] -> +-.5 / (.7071068 + .1) with std_eps .1.
    close(losses.group_advantages(A([1, 0]), 2, std_eps=0.1), [0.6194967, -0.6194967])


def test_reward_norm_defaults_to_the_batch():
    # Eq. 5 over the batch: [1,0,1,1] has mean .75, population std .4330127.
    want = [0.5773503, -1.7320508, 0.5773503, 0.5773503]
    close(losses.sequence_advantages("reinforce", A([1, 0, 1, 1]), 2), want)
    # Per group (an option): [1,0] -> +-.7071 (sample std), [1,1] -> 0.
    close(
        losses.sequence_advantages("reinforce", A([1, 0, 1, 1]), 2, "group"),
        [0.7071068, -0.7071068, 0, 0],
    )
    # All rewards equal: exactly 0, not rounding noise.
    out = np.asarray(losses.sequence_advantages("reinforce", A([0.1] * 6), 3))
    assert np.all(out == 0.0)


def test_aggregation_table_and_override():
    assert [losses.loss_aggregation(a) for a in losses.ALGOS] == [
        "token_mean",
        "token_mean",
        "token_mean",
        "seq_mean",
        "seq_sum",
    ]
    assert losses.loss_aggregation("reinforce++") == "token_mean"
    assert losses.loss_aggregation("grpo", "token_mean") == "token_mean"  # TRL's "dapo"
    with pytest.raises(ValueError, match="rl.loss_agg"):
        losses.loss_aggregation("grpo", "mean")


def test_five_algorithms_differ_under_the_defaults():
    """Same rollout, shipped defaults (batch z-score, beta .01 KL in the reward): no two
    algorithms' token advantages are equal or equal up to a constant factor.

    Two pairs are close by definition, not by a defaults choice: leave-one-out gives
    r_i - mean_{-i} = G/(G-1) (r_i - group mean) for any rewards, so rloo and dr_grpo differ only
    through the scale of the batch z-score against the KL term (residual ~3% here); and
    reinforce_pp whitens reinforce's token advantages, an affine map (residual ~2%)."""
    rng = np.random.default_rng(3)
    g, n, big_l = 4, 16, 6
    r = A(rng.random(n).round(1))
    old = A(-rng.random((n, big_l)) * 2)
    ref = old + A(rng.normal(0, 0.3, (n, big_l)))
    m = A(np.arange(big_l)[None] < rng.integers(2, big_l + 1, n)[:, None])
    adv = {a: np.asarray(losses.compute_advantages(a, r, g, old, ref, m))[np.asarray(m) > 0]
           for a in losses.ALGOS}  # fmt: skip
    names = list(adv)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = adv[a], adv[b]
            scale = (x @ y) / (y @ y)  # the best constant factor: the residual must stay large
            resid = np.abs(x - scale * y).max()
            assert resid > 1e-2 * np.abs(x).max(), (a, b, scale, resid)


def test_kl_estimators():
    logp, ref = A([-1.0, -2.0]), A([-2.0, -1.0])  # d = +1, -1
    close(losses.kl_estimate(logp, ref, "k1"), [1, -1])
    close(losses.kl_estimate(logp, ref, "k2"), [0.5, 0.5])
    close(losses.kl_estimate(logp, ref, "k3"), [0.36787944, 0.71828183])  # e^-1, e - 2


# Two rows (G=2): rewards [1,0] -> batch z-score [1,-1] (population std .5).
# Row 1's last token is padding.
OLD = A([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
REF = A([[-1.5, -2.0, -1.0], [-1.0, -3.0, -1.0]])
MASK = A([[1, 1, 1], [1, 1, 0]])
# k1 = [[.5,0,.5],[0,2,-]]; -0.1*k1 = [[-.05,0,-.05],[0,-.2,-]]; return-to-go [[-.1,-.05,-.05],
# [-.2,-.2,0]]; plus the sequence advantage.
KL_SHAPED_REINFORCE = [[0.9, 0.95, 0.95], [-1.2, -1.2, 0.0]]


def test_reinforce_with_kl_in_reward():
    got = losses.compute_advantages("reinforce", A([1, 0]), 2, OLD, REF, MASK, beta=0.1)
    close(got, KL_SHAPED_REINFORCE)


def test_rloo_with_kl_in_reward():
    got = losses.compute_advantages("rloo", A([1, 0]), 2, OLD, REF, MASK, beta=0.1)
    close(got, [[1.9, 1.95, 1.95], [-2.2, -2.2, 0.0]])


def test_reinforce_pp_whitens_over_valid_tokens():
    # Valid tokens [.9,.95,.95,-1.2,-1.2]: mean .08, std 1.0452751.
    want = [[0.7844825, 0.8323168, 0.8323168], [-1.2245580, -1.2245580, 0.0]]
    for name in ("reinforce_pp", "reinforce++"):
        got = losses.compute_advantages(name, A([1, 0]), 2, OLD, REF, MASK, beta=0.1)
        close(got, want)


def test_kl_loss_mode_leaves_advantage_per_sequence():
    for mode in ("loss", "none"):
        got = losses.compute_advantages("grpo", A([1, 0]), 2, None, None, MASK, kl_mode=mode)
        s = 0.7071068  # +-.5 over the sample std of [1, 0]
        close(got, [[s, s, s], [-s, -s, 0]])
    with pytest.raises(ValueError):
        losses.compute_advantages("reinforce", A([1, 0]), 2, None, None, MASK)
    with pytest.raises(ValueError):
        losses.compute_advantages("ppo", A([1, 0]), 2, OLD, REF, MASK)


def test_aggregation_modes_and_micro_batch_split():
    x = A([[1, 2, 3], [4, 5, 6]])
    m = A([[1, 1, 0], [1, 0, 0]])
    close(losses.aggregate(x, m, "token_mean"), 7 / 3)
    close(losses.aggregate(x, m, "seq_mean"), 2.75)  # (1.5 + 4) / 2
    close(losses.aggregate(x, m, "seq_sum"), 7 / 6)  # 7 / (2 rows * L=3)
    close(losses.aggregate(x, m, "seq_sum", norm_len=4), 7 / 8)
    # With the whole batch's counts, the per-row pieces sum to the batch value.
    for mode in ("token_mean", "seq_mean", "seq_sum"):
        parts = [losses.aggregate(x[i : i + 1], m[i : i + 1], mode, 3.0, 2.0) for i in range(2)]
        close(sum(parts), losses.aggregate(x, m, mode))


RATIO = A([[1.5, 0.5, 1.1, 0.7]])
ADV = A([[1.0, 1.0, -1.0, -1.0]])
ONES = A([[1, 1, 1, 1]])


def test_clipped_policy_loss_values():
    # Per token max(-A r, -A clip(r, .8, 1.2)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped).
    loss, met = losses.policy_loss(jnp.log(RATIO), jnp.zeros_like(RATIO), ADV, ONES)
    close(loss, 0.05)
    close(met["clip_frac"], 0.5)
    # (r - 1) - log r: .0945349, .1931472, .0046898, .0566749.
    close(met["approx_kl"], 0.0872617)
    close(met["kl_ref"], 0.0)
    loss_hi, _ = losses.policy_loss(
        jnp.log(RATIO), jnp.zeros_like(RATIO), ADV, ONES, clip_eps_high=0.28
    )
    close(loss_hi, 0.03)  # token 0 now -1.28


def test_clipped_policy_loss_gradient():
    # Clipped tokens get no gradient; unclipped: -A * r / 4.
    g = jax.grad(lambda lp: losses.policy_loss(lp, jnp.zeros_like(lp), ADV, ONES)[0])(
        jnp.log(RATIO)
    )
    close(g, [[0.0, -0.125, 0.275, 0.0]])


def test_k3_kl_loss_term():
    # k3 vs ref=0 with d = log r: 1/r - 1 + log r = .0721318, .3068528, .0044011, .0718965.
    lp = jnp.log(RATIO)
    loss, met = losses.policy_loss(
        lp, jnp.zeros_like(lp), ADV, ONES, logp_ref=jnp.zeros_like(lp), kl_coef=0.1
    )
    close(met["kl_ref"], 0.1138206)
    close(loss, 0.05 + 0.01138206)


def test_entropy_from_logits():
    close(losses.entropy_from_logits(A([[0.0, 0.0], [0.0, np.log(3.0)]])), [0.6931472, 0.5623351])
    close(losses.entropy_from_logits(A([1000.0] * 4)), 1.3862944)  # ln 4, no overflow


def test_zero_advantage_groups():
    close(losses.frac_zero_adv_groups(A([1, 0, 0.5, 0.5, 1, 1]), 2), 2 / 3)
    stats = losses.reward_stats(A([1, 0, 0.5, 0.5]), 2)
    close(stats["reward_mean"], 0.5)
    close(stats["frac_zero_adv_groups"], 0.5)

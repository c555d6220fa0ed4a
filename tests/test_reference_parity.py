"""Advantages and policy loss against the implementations users trust: TRL and OpenRLHF.

TRL (the `trl` pin of the test extra) is called wherever its code is a function: `nanstd` for the
group statistics and `GRPOTrainer._compute_loss` itself for the loss (on a stand-in trainer that
carries only the attributes the method reads, its log-prob forward replaced by given log-probs).
TRL computes GRPO advantages inline in `GRPOTrainer._generate_and_score_completions`
(trl/trainer/grpo_trainer.py), so that formula is reproduced below around TRL's own `nanstd`.

OpenRLHF cannot be imported here (it pulls deepspeed and ray); its formulas are reproduced in
torch from openrlhf/trainer/ppo_utils/experience_maker.py (`compute_advantages_and_returns`,
`get_cumulative_returns`) and openrlhf/models/utils.py (`compute_approx_kl`, `compute_reward`).

Inputs: fixed-seed random rewards in groups of G in {2, 4, 8, 16}: mixed 0/1, soft, all-equal
soft (0.1: its mean is not exactly 0.1 in float32) and near-constant (spread 1e-2); per-token
log-probs with padded completions of random lengths. Each comparison prints its max |diff|
(`pytest -s`).

Where rlvr_jax deliberately differs, the test says so:
- a group (GRPO) or batch whose reward std is <= 1e-6 gets advantage exactly 0; OpenRLHF's
  group_norm divides the rounding of the mean by std + 1e-9 and TRL by std + 1e-4;
- GRPO divides by the plain sample std (std_eps 0), the textbook z-score: OpenRLHF's 1e-9 is
  invisible, TRL's 1e-4 is reproduced with std_eps=1e-4;
- padding tokens get advantage 0 (OpenRLHF's whitening leaves (0 - mean) / std there, which its
  loss masks out), so advantages are compared on valid tokens.
"""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

from rlvr_jax import losses

GROUPS = (2, 4, 8, 16)
BETA = 0.05


def report(name: str, got, want, tol: float) -> None:
    d = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    print(f"\n  {name}: max |diff| = {d:.2e}")
    assert d <= tol, (name, d)


def rollout(g: int, seed: int = 0, l_max: int = 7):
    """Rewards [N] (4 groups: mixed, soft, all-equal, near-constant), masks and log-probs [N,L]."""
    rng = np.random.default_rng(seed + g)
    mixed = rng.integers(0, 2, g).astype(np.float32)
    mixed[:2] = [0.0, 1.0]  # never all equal
    soft = rng.random(g).astype(np.float32)
    equal = np.full(g, 0.1, np.float32)
    near = (0.5 + 1e-2 * rng.standard_normal(g)).astype(np.float32)
    r = np.concatenate([mixed, soft, equal, near])
    n = r.size
    lengths = rng.integers(1, l_max + 1, n)
    mask = (np.arange(l_max)[None] < lengths[:, None]).astype(np.float32)
    old = (-rng.random((n, l_max)) * 3).astype(np.float32)
    ref = (old + rng.normal(0, 0.5, (n, l_max))).astype(np.float32)
    return r, mask, old, ref


# ----------------------------------------------------------------------------- references


def trl_group_advantages(r: np.ndarray, g: int) -> np.ndarray:
    """TRL GRPOTrainer._generate_and_score_completions, scale_rewards="group" (one reward
    function): (r - group mean) / (nanstd(group) + 1e-4), nanstd being TRL's own."""
    t = torch.tensor(r, dtype=torch.float32)
    mean = torch.nanmean(t.view(-1, g), dim=1).repeat_interleave(g)
    std = nanstd(t.view(-1, g), dim=1).repeat_interleave(g)
    return ((t - mean) / (std + 1e-4)).numpy()


def openrlhf_advantages(estimator: str, r, mask, old, ref, g: int, kl_coef: float) -> np.ndarray:
    """OpenRLHF: baseline per estimator, k1 KL shaping, return-to-go, and for "reinforce" the
    whitening over all valid tokens (experience_maker.py compute_advantages_and_returns)."""
    rw = torch.tensor(r, dtype=torch.float64).reshape(-1, g)
    if estimator == "rloo":
        rw = rw - (rw.sum(-1, keepdim=True) - rw) / (g - 1)
    elif estimator in ("reinforce_baseline", "dr_grpo"):
        rw = rw - rw.mean(-1, keepdim=True)
    elif estimator == "group_norm":
        rw = (rw - rw.mean(-1, keepdim=True)) / (rw.std(-1, keepdim=True) + 1e-9)
    rw = rw.reshape(-1)
    m = torch.tensor(mask, dtype=torch.float64)
    # models/utils.py compute_approx_kl (k1, clamped to +-10) and compute_reward.
    kl = (torch.tensor(old, dtype=torch.float64) - torch.tensor(ref, dtype=torch.float64)).clamp(
        -10, 10
    )
    eos = m.size(1) - 1 - m.long().fliplr().argmax(dim=1, keepdim=True)
    reward = torch.zeros_like(kl).scatter_(1, eos, rw.unsqueeze(1)) - kl_coef * kl
    # get_cumulative_returns with gamma 1.
    reward = reward * m
    ret, acc = torch.zeros_like(reward), torch.zeros(reward.size(0), dtype=torch.float64)
    for t in reversed(range(reward.size(1))):
        acc = reward[:, t] + acc
        ret[:, t] = acc
    if estimator in ("reinforce", "reinforce_baseline"):
        mean = (ret * m).sum() / m.sum()
        var = ((ret - mean).pow(2) * m).sum() / m.sum()
        ret = (ret - mean) * var.clamp(min=1e-8).rsqrt()
    return ret.numpy()


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("g", GROUPS)
def test_grpo_equals_trl_and_openrlhf_group_norm(g):
    r, mask, old, ref = rollout(g)
    ours = np.asarray(losses.group_advantages(jnp.asarray(r), g))
    ours_trl_eps = np.asarray(losses.group_advantages(jnp.asarray(r), g, std_eps=1e-4))
    trl = trl_group_advantages(r, g)
    orl = openrlhf_advantages("group_norm", r, mask, old, ref, g, 0.0)[:, 0]  # no KL: A per seq
    live = np.ones(r.size, bool)
    live[2 * g : 3 * g] = False  # the all-equal group: see test_all_equal_group_is_exactly_zero
    report(
        f"grpo vs TRL scale_rewards=group, std_eps=1e-4, G={g}", ours_trl_eps[live], trl[live], 1e-5
    )
    report(f"grpo vs OpenRLHF group_norm, G={g}", ours[live], orl[live], 1e-4)
    # Our default divides by the plain std: TRL's values are ours * std / (std + 1e-4).
    std = np.repeat(np.std(r.reshape(-1, g), axis=1, ddof=1), g)
    rescaled = ours * std / (std + 1e-4)
    report(f"grpo vs TRL, rescaled by std/(std+1e-4), G={g}", rescaled[live], trl[live], 1e-5)
    assert np.all(ours[~live] == 0.0) and np.all(ours_trl_eps[~live] == 0.0)


def test_all_equal_group_is_exactly_zero():
    """Deliberate difference: equal soft rewards give exactly 0 here. Their float32 mean is not
    exactly 0.1, so OpenRLHF's (r - mean) / (std + 1e-9) turns rounding into advantages of order
    1 and more; TRL's std + 1e-4 keeps them small but not 0."""
    g = 8
    r = np.full(g, 0.1, np.float32)
    r[::2] = np.float32(0.1) * np.float32(1.0000001)  # one-ulp differences, as sums produce
    ours = np.asarray(losses.group_advantages(jnp.asarray(r), g))
    assert np.all(ours == 0.0)
    t = torch.tensor(r)
    orl = ((t - t.mean()) / (t.std() + 1e-9)).numpy()
    trl = trl_group_advantages(r, g)
    print(f"\n  equal soft rewards: OpenRLHF max |A| {np.abs(orl).max():.3g}, TRL "
          f"{np.abs(trl).max():.3g}, rlvr_jax 0")  # fmt: skip
    assert np.abs(orl).max() > 0.5 and np.abs(trl).max() < 1e-2


@pytest.mark.parametrize("g", GROUPS)
@pytest.mark.parametrize(
    "algo,estimator",
    [
        ("dr_grpo", "dr_grpo"),
        ("rloo", "rloo"),
        ("reinforce_pp", "reinforce"),
        ("grpo", "group_norm"),
    ],
)
def test_estimators_with_kl_shaping_equal_openrlhf(algo, estimator, g):
    """Normalisation off (rl.norm="none"), beta KL in the reward (k1, return-to-go)."""
    r, mask, old, ref = rollout(g, seed=1)
    ours = losses.compute_advantages(
        algo, jnp.asarray(r), g, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(mask),
        beta=BETA, kl_mode="reward", reward_norm="none",
    )  # fmt: skip
    want = openrlhf_advantages(estimator, r, mask, old, ref, g, BETA)
    valid = mask > 0
    if algo == "grpo":  # the all-equal group differs on purpose (test_all_equal_group...)
        valid[2 * g : 3 * g] = False
    report(f"{algo} vs OpenRLHF {estimator}, KL in reward, G={g}", np.asarray(ours)[valid],
           want[valid], 1e-4)  # fmt: skip
    assert np.all(np.asarray(ours)[mask == 0] == 0.0)  # padding: exactly 0


# ----------------------------------------------------------------------------- loss


class _Accelerator:
    """What _compute_loss asks of accelerate on one process."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss_and_grad(loss_type, logp, old, adv, mask, *, ref=None, beta=0.0, eps_high=0.2,
                      ga_steps=1, num_items=None, max_len=None):  # fmt: skip
    """TRL's GRPOTrainer._compute_loss on a stand-in trainer; returns (loss, d loss / d logp)."""
    lp = torch.tensor(np.asarray(logp, np.float64), requires_grad=True)
    n, big_l = lp.shape
    fake = types.SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=eps_high,
        args=types.SimpleNamespace(
            delta=None, use_bias_correction_kl=False, steps_per_generation=ga_steps
        ),  # fmt: skip
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=ga_steps,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        max_completion_length=max_len or big_l,
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
    )
    m = torch.tensor(np.asarray(mask, np.float64))
    inputs = {
        "prompt_ids": torch.zeros((n, 1), dtype=torch.long),
        "prompt_mask": torch.ones((n, 1), dtype=torch.long),
        "completion_ids": torch.zeros((n, big_l), dtype=torch.long),
        "completion_mask": m,
        "advantages": torch.tensor(np.asarray(adv, np.float64)),
        "old_per_token_logps": torch.tensor(np.asarray(old, np.float64)),
        "num_items_in_batch": torch.tensor(float(num_items if num_items else m.sum())),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = torch.tensor(np.asarray(ref, np.float64))
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    loss.backward()
    return float(loss.detach()), lp.grad.numpy()


AGG_OF = {"grpo": "seq_mean", "dapo": "token_mean", "dr_grpo": "seq_sum"}


def _policy_case(seed=2, n=8, big_l=6):
    rng = np.random.default_rng(seed)
    mask = (np.arange(big_l)[None] < rng.integers(1, big_l + 1, n)[:, None]).astype(np.float32)
    old = (-rng.random((n, big_l)) * 2).astype(np.float32)
    logp = (old + rng.normal(0, 0.3, (n, big_l))).astype(np.float32)  # ratios beyond the clip
    ref = (old + rng.normal(0, 0.3, (n, big_l))).astype(np.float32)
    adv = (rng.normal(size=(n, 1)) + 0.1 * rng.normal(size=(n, big_l))).astype(np.float32) * mask
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("kl", [False, True])
def test_policy_loss_equals_trl_loss_types(loss_type, kl):
    """Our clipped loss under AGG_OF[loss_type] is TRL's loss type, value and gradient; with
    kl, TRL's beta * k3 term is our kl_mode="loss" term (kl_coef = beta)."""
    logp, old, ref, adv, mask = _policy_case()
    beta, eps_high = (0.04 if kl else 0.0), (0.28 if loss_type == "dapo" else 0.2)
    want, want_g = trl_loss_and_grad(loss_type, logp, old, adv, mask, ref=ref if kl else None,
                                     beta=beta, eps_high=eps_high)  # fmt: skip

    def ours(lp):
        return losses.policy_loss(
            lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), 0.2, eps_high,
            jnp.asarray(ref) if kl else None, beta, AGG_OF[loss_type],
        )[0]  # fmt: skip

    got, got_g = jax.value_and_grad(ours)(jnp.asarray(logp))
    tag = f"loss {loss_type}{' + k3 KL' if kl else ''} vs TRL"
    report(tag, got, want, 1e-5)
    report(tag + " (gradient)", got_g, want_g, 1e-6)
    assert np.abs(want_g).max() > 1e-3  # not trivially 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_two_micro_batches_equal_two_trl_accumulation_steps(loss_type):
    """Two micro-batches, each normalised by the whole batch's counts and summed, equal TRL's
    two gradient-accumulation steps of the same loss type (value and gradient)."""
    logp, old, _, adv, mask = _policy_case(seed=3)
    n, big_l = mask.shape
    halves = (slice(0, n // 2), slice(n // 2, n))
    want, want_g = 0.0, []
    for h in halves:
        v, gr = trl_loss_and_grad(loss_type, logp[h], old[h], adv[h], mask[h], ga_steps=2,
                                  num_items=mask.sum(), max_len=big_l)  # fmt: skip
        want += v
        want_g.append(gr)

    def part(lp, h):
        return losses.policy_loss(
            lp, jnp.asarray(old[h]), jnp.asarray(adv[h]), jnp.asarray(mask[h]),
            agg=AGG_OF[loss_type], num_tokens=float(mask.sum()), num_seqs=float(n),
        )[0]  # fmt: skip

    got, got_g = 0.0, []
    for h in halves:
        v, gr = jax.value_and_grad(part)(jnp.asarray(logp[h]), h)
        got += float(v)
        got_g.append(np.asarray(gr))
    report(f"2 micro-batches vs 2 TRL accumulation steps, {loss_type}", got, want, 1e-5)
    report(f"  gradient, {loss_type}", np.concatenate(got_g), np.concatenate(want_g), 1e-6)
    whole = losses.policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                               jnp.asarray(mask), agg=AGG_OF[loss_type])[0]  # fmt: skip
    report(f"  2 micro-batches vs one batch, {loss_type}", got, whole, 1e-6)

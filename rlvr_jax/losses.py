"""Pure jnp pieces of the RL objective: reward normalisation, advantages, KL, clipped policy loss.

No models here: everything takes arrays and returns arrays, so each piece is checked in isolation
(tests/test_losses.py) and composed by `rlvr_jax.update`.

Shapes: N = B*G rows (G samples of each of B prompts, grouped contiguously: rows [b*G, (b+1)*G)
share prompt b), L completion length. Per-sequence rewards are [N]; per-token log-probs, masks and
advantages are [N, L]. Masks are 1 on completion tokens that count (EOS included), 0 on padding.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Algo = Literal[
    "reinforce", "rloo", "reinforce_pp", "grpo", "dr_grpo"
]  # "reinforce++" = reinforce_pp
KLMode = Literal["reward", "loss", "none"]
Scope = Literal["group", "batch", "none"]
Aggregation = Literal["token_mean", "seq_mean", "seq_sum"]

ALGOS: tuple[str, ...] = ("reinforce", "rloo", "reinforce_pp", "grpo", "dr_grpo")

# The loss aggregation each algorithm uses when rl.loss_agg = "auto" (train.py reads this table
# through `loss_aggregation`). reinforce / rloo / reinforce_pp follow OpenRLHF, whose PolicyLoss
# averages over every token of an optimizer step (token_level_loss=True), the setting the paper
# ran. grpo follows TRL's loss_type="grpo": tokens averaged within each sequence, then sequences.
# dr_grpo follows TRL's loss_type="dr_grpo": a sum over tokens divided by the constant
# rows x max completion length, which removes GRPO's length bias.
AGGREGATION: dict[str, str] = {
    "reinforce": "token_mean",
    "rloo": "token_mean",
    "reinforce_pp": "token_mean",
    "grpo": "seq_mean",
    "dr_grpo": "seq_sum",
}
AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean", "seq_sum")

_EPS = 1e-6


def _groups(x: jax.Array, group_size: int) -> jax.Array:
    """[N] -> [B, G]; N must be a multiple of G."""
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows are not a multiple of group_size={group_size}")
    return x.reshape(-1, group_size)


def _safe_scale(centred: jax.Array, std: jax.Array, eps: float) -> jax.Array:
    """centred / std, and exactly 0 where std <= eps (all rewards equal: nothing to learn from).

    A plain (x - mu) / (std + eps) turns fp rounding of mu into large spurious advantages.
    """
    ok = std > eps
    return jnp.where(ok, centred / jnp.where(ok, std, 1.0), 0.0)


def _std(x: jax.Array, mu: jax.Array, ddof: int) -> jax.Array:
    """Std over the last axis of x [..., K] around mu [..., 1]; ddof 1 = the sample std."""
    k = x.shape[-1]
    ss = jnp.sum(jnp.square(x - mu), axis=-1, keepdims=True)
    return jnp.sqrt(ss / max(k - ddof, 1))


def zscore(
    rewards: jax.Array,
    group_size: int | None,
    eps: float = _EPS,
    ddof: int = 0,
    std_eps: float = 0.0,
) -> jax.Array:
    """Z-score rewards [N] within each prompt group (group_size G) or over the batch (None).

    (r - mean) / (std + std_eps) with std over K values divided by K - ddof (ddof 0: population,
    1: sample). A group whose std is <= eps gets exactly 0: all rewards equal, nothing to learn.
    """
    r = rewards.astype(jnp.float32)
    x = r[None] if group_size is None else _groups(r, group_size)
    mu = x.mean(axis=-1, keepdims=True)
    std = _std(x, mu, ddof)
    ok = std > eps
    return jnp.where(ok, (x - mu) / jnp.where(ok, std + std_eps, 1.0), 0.0).reshape(r.shape)


def normalize_rewards(
    rewards: jax.Array, group_size: int, scope: Scope = "batch", eps: float = _EPS
) -> jax.Array:
    """Reward normalisation before reinforce / rloo / reinforce_pp. [N] -> [N].

    "batch" (the default) is the paper's Eq. 5 read literally: one z-score over the whole batch
    (population std), 0 everywhere when all rewards are equal. "group" z-scores each prompt's G
    samples with the sample std, GRPO's statistics (with it reinforce *is* GRPO and rloo is GRPO
    times G/(G-1)). "none" passes raw rewards (OpenRLHF's estimators without normalisation).
    """
    if scope == "group":
        return zscore(rewards, group_size, eps, ddof=1)
    if scope == "batch":
        return zscore(rewards, None, eps, ddof=0)
    if scope == "none":
        return rewards.astype(jnp.float32)
    raise ValueError(f"unknown reward normalisation scope {scope!r}; use group, batch or none")


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """r_i minus the mean reward of the other G-1 samples of the same prompt. [N] -> [N]."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (the baseline is the other samples' mean)")
    x = _groups(rewards.astype(jnp.float32), group_size)
    others = (x.sum(axis=-1, keepdims=True) - x) / (group_size - 1)
    return (x - others).reshape(rewards.shape)


def group_advantages(
    rewards: jax.Array, group_size: int, scale: bool = True, eps: float = _EPS, std_eps: float = 0.0
) -> jax.Array:
    """GRPO (scale=True): (r - group mean) / (group std + std_eps); Dr.GRPO: r - group mean.

    The std is the sample std (ddof 1), as TRL's GRPOTrainer and OpenRLHF's group_norm compute
    it (torch.std's default). They add 1e-4 (TRL) or 1e-9 (OpenRLHF) to it; std_eps = 0 by
    default, so a group of two rewards 0 and 1 gets exactly +-0.7071. A group whose std is
    <= eps gets exactly 0 instead: a plain division turns the rounding of equal soft rewards'
    mean into advantages of order 1 (OpenRLHF) or up to ~1e-3 (TRL).
    """
    if scale:
        return zscore(rewards, group_size, eps, ddof=1, std_eps=std_eps)
    x = _groups(rewards.astype(jnp.float32), group_size)
    return (x - x.mean(axis=-1, keepdims=True)).reshape(rewards.shape)


def kl_estimate(
    logp: jax.Array, logp_ref: jax.Array, kind: Literal["k1", "k2", "k3"] = "k1"
) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi. [N,L] -> [N,L].

    k1 = log pi - log pi_ref (unbiased, can be negative); k2 = k1^2 / 2;
    k3 = exp(-k1) - 1 + k1 (unbiased, always >= 0; Schulman's estimator, used as a loss term).
    """
    d = logp.astype(jnp.float32) - logp_ref.astype(jnp.float32)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * jnp.square(d)
    if kind == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def reverse_cumsum(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Return-to-go with gamma = 1: out[:, t] = sum_{s>=t} x[:, s] * mask[:, s]. [N,L] -> [N,L]"""
    xm = x * mask
    return jnp.flip(jnp.cumsum(jnp.flip(xm, axis=-1), axis=-1), axis=-1)


def whiten(x: jax.Array, mask: jax.Array, eps: float = _EPS) -> jax.Array:
    """(x - mean) / std over all valid tokens of the batch; padding stays 0. [N,L] -> [N,L]."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mu = (x * m).sum() / n
    std = jnp.sqrt((jnp.square(x - mu) * m).sum() / n)
    return _safe_scale(x - mu, std, eps) * m


def canonical_algo(algo: str) -> str:
    """The name in ALGOS ("reinforce++" means reinforce_pp); ValueError for unknown names."""
    algo = "reinforce_pp" if algo == "reinforce++" else algo
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; use one of {', '.join(ALGOS)}")
    return algo


def sequence_advantages(
    algo: Algo, rewards: jax.Array, group_size: int, reward_norm: Scope = "batch"
) -> jax.Array:
    """One scalar advantage per sequence [N], before any KL shaping or token whitening.

    reinforce / rloo / reinforce_pp first normalise rewards with `reward_norm` (the paper normalises
    for every algorithm); grpo and dr_grpo have their own group statistics and ignore it.
    """
    algo = canonical_algo(algo)
    if algo == "grpo":
        return group_advantages(rewards, group_size, scale=True)
    if algo == "dr_grpo":
        return group_advantages(rewards, group_size, scale=False)
    r = normalize_rewards(rewards, group_size, reward_norm)
    if algo in ("reinforce", "reinforce_pp"):
        return r
    return rloo_advantages(r, group_size)


def compute_advantages(
    algo: Algo,
    rewards: jax.Array,
    group_size: int,
    logp_old: jax.Array | None,
    logp_ref: jax.Array | None,
    mask: jax.Array,
    beta: float = 0.01,
    kl_mode: KLMode = "reward",
    reward_norm: Scope = "batch",
) -> jax.Array:
    """Per-token advantages [N,L] (0 on padding) from rewards [N] and per-token log-probs [N,L].

    kl_mode="reward" shapes per-token rewards as OpenRLHF does: token t gets -beta * k1_t with
    k1 = logp_old - logp_ref, the sequence advantage is added at the end, and each token's advantage
    is its return-to-go (gamma 1): A_t = a_seq + sum_{s>=t} -beta * k1_s. "loss" and "none" leave
    the advantage per sequence (the k3 loss term lives in `policy_loss`). reinforce_pp then whitens
    the token advantages over every valid token of the batch (OpenRLHF's `reinforce` estimator).
    OpenRLHF clamps k1 to [-10, 10]; here it is not clamped (a per-token log-ratio that large
    means the reference is far off, and the clamp would hide it).
    """
    m = mask.astype(jnp.float32)
    a_seq = sequence_advantages(algo, rewards, group_size, reward_norm)
    adv = jnp.broadcast_to(a_seq[:, None], m.shape)
    if kl_mode == "reward":
        if logp_old is None or logp_ref is None:
            raise ValueError('kl_mode="reward" needs logp_old and logp_ref')
        adv = adv + reverse_cumsum(-beta * kl_estimate(logp_old, logp_ref, "k1"), m)
    elif kl_mode not in ("loss", "none"):
        raise ValueError(f"unknown kl_mode {kl_mode!r}; use reward, loss or none")
    if canonical_algo(algo) == "reinforce_pp":
        return whiten(adv, m)
    return adv * m


def loss_aggregation(algo: str, override: str = "auto") -> str:
    """The loss aggregation to use: AGGREGATION[algo] for "auto", else the override itself."""
    if override == "auto":
        return AGGREGATION[canonical_algo(algo)]
    if override not in AGGREGATIONS:
        raise ValueError(
            f"config rl.loss_agg: unknown aggregation {override!r}; use auto or "
            + ", ".join(AGGREGATIONS)
        )
    return override


def aggregate(
    x: jax.Array,
    mask: jax.Array,
    mode: Aggregation = "token_mean",
    num_tokens: jax.Array | float | None = None,
    num_seqs: jax.Array | float | None = None,
    norm_len: int | None = None,
) -> jax.Array:
    """Reduce a per-token quantity [N,L] to a scalar.

    token_mean: sum over valid tokens / num_tokens. seq_mean: mean over tokens of each sequence,
    then sum / num_seqs. seq_sum (Dr.GRPO): sum over valid tokens / (num_seqs * norm_len), a
    constant normaliser with no length bias. num_tokens / num_seqs default to this batch's counts;
    pass the *whole* batch's counts when x is one micro-batch, so micro-batch losses sum exactly
    to the full-batch loss. norm_len defaults to L.
    """
    m = mask.astype(jnp.float32)
    total = (x * m).sum()
    if num_seqs is None:
        num_seqs = x.shape[0]
    if mode == "token_mean":
        return total / jnp.maximum(m.sum() if num_tokens is None else num_tokens, 1.0)
    if mode == "seq_mean":
        per_seq = (x * m).sum(axis=-1) / jnp.maximum(m.sum(axis=-1), 1.0)
        return per_seq.sum() / num_seqs
    if mode == "seq_sum":
        return total / (num_seqs * (x.shape[-1] if norm_len is None else norm_len))
    raise ValueError(f"unknown aggregation {mode!r}; use token_mean, seq_mean or seq_sum")


def policy_loss(
    logp: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    logp_ref: jax.Array | None = None,
    kl_coef: float = 0.0,
    agg: Aggregation = "token_mean",
    num_tokens: jax.Array | float | None = None,
    num_seqs: jax.Array | float | None = None,
    norm_len: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate over per-token log-probs [N,L]; returns (scalar loss, metrics).

    ratio = exp(logp - logp_old); per token max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps_high)).
    With logp_ref and kl_coef > 0 adds kl_coef * k3(logp, logp_ref) (the "KL as loss" mode).
    Metrics are token means over the same denominator as the loss (so they sum over micro-batches):
    clip_frac (share of tokens where the clip is active), approx_kl (k3 of pi_old vs pi),
    kl_ref (k3 vs the reference; 0 without logp_ref), pg_loss.
    """
    m = mask.astype(jnp.float32)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - logp_old
    ratio = jnp.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    per_token = jnp.maximum(pg1, pg2)
    kw = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
    pg_loss = aggregate(per_token, m, agg, **kw)
    loss = pg_loss
    kl_ref = jnp.zeros((), jnp.float32)
    if logp_ref is not None:
        k3 = kl_estimate(logp, logp_ref, "k3")
        if kl_coef:
            loss = loss + kl_coef * aggregate(k3, m, agg, **kw)
        kl_ref = aggregate(jax.lax.stop_gradient(k3), m, "token_mean", num_tokens)
    sg = jax.lax.stop_gradient
    metrics = {
        "pg_loss": sg(pg_loss),
        "clip_frac": aggregate((pg2 > pg1).astype(jnp.float32), m, "token_mean", num_tokens),
        "approx_kl": aggregate(sg(jnp.expm1(log_ratio) - log_ratio), m, "token_mean", num_tokens),
        "kl_ref": kl_ref,
    }
    return loss, metrics


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) over the last axis, in fp32. [..., V] -> [...]."""
    lf = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(lf, axis=-1)
    return lse - jnp.sum(jax.nn.softmax(lf, axis=-1) * lf, axis=-1)


def frac_zero_adv_groups(rewards: jax.Array, group_size: int, eps: float = _EPS) -> jax.Array:
    """Share of prompt groups whose G rewards are all equal (std <= eps): they carry no signal."""
    x = _groups(rewards.astype(jnp.float32), group_size)
    std = jnp.sqrt(jnp.mean(jnp.square(x - x.mean(axis=-1, keepdims=True)), axis=-1))
    return jnp.mean((std <= eps).astype(jnp.float32))


def reward_stats(rewards: jax.Array, group_size: int) -> dict[str, jax.Array]:
    """Batch reward metrics: raw mean and std, share of zero-signal groups. [N] -> scalars."""
    r = rewards.astype(jnp.float32)
    return {
        "reward_mean": r.mean(),
        "reward_std": r.std(),
        "frac_zero_adv_groups": frac_zero_adv_groups(r, group_size),
    }

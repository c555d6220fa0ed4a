"""Log-probs of completion tokens under a policy, as the trainer and the reference compute them.

One forward pass to hidden states, then the vocabulary projection at the positions that predict
completion tokens only. The sampler's own log-probs of the tokens it drew are rollout.py's; the
two agree in fp32 (the run logs the gap as train/logp_drift).

Shapes: N rows, T = P + L tokens (prompt left-padded, then the completion), L completion length,
V vocab, D model dim.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rlvr_jax.models.prefix import continue_rows, prefill
from rlvr_jax.models.transformer import forward, lm_logits, positions_from_mask


def _head_stats(graphdef, params, hidden, targets, temperature, with_entropy):
    """hidden [N,C,D], targets [N,C] -> (logp [N,C], entropy [N,C] or None).

    log p(target) = logit[target] - logsumexp(logits): no [N,C,V] log-softmax is materialised,
    and the backward pass needs only the softmax, which XLA fuses into one V-sized buffer.
    """
    logits = lm_logits(graphdef, params, hidden)
    if temperature != 1.0:
        logits = logits / temperature
    # logsumexp written out so that the entropy reuses the same exp(logits - max): one pass
    # over the [N,C,V] logits instead of two. The max is a constant for the gradient (exact).
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - peak)
    total = jnp.sum(e, axis=-1)
    lse = peak[..., 0] + jnp.log(total)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - lse
    ent = None
    if with_entropy:
        mean_logit = jnp.sum(e * logits, axis=-1) / total  # E_p[logit]
        ent = jax.lax.stop_gradient(lse - mean_logit)
    return logp, ent


def _shared_prompt_hidden(graphdef, params, tokens, attn_mask, completion_len, group, remat):
    """Final hidden states [N,L,D] at the positions that predict the last L tokens of
    tokens [N,T], each prompt run once for its `group` adjacent rows.

    Rows g*i .. g*i+g-1 must hold the same prompt (their first T-L tokens and mask), as a
    rollout's samples of one prompt do. The U = N/g prompts are prefilled into a KV cache, which
    their rows' completions then attend to (`models.prefix`), as the sampler does: the prompt's
    activations (and, in the update, their backward pass) cost 1/g of the unshared pass. The
    prompt's last position predicts the first completion token.
    """
    n, t = tokens.shape
    p = t - completion_len
    pmask = attn_mask[::group, :p]
    hp, cache = prefill(graphdef, params, tokens[::group, :p], pmask, completion_len, remat)
    owner = jnp.arange(n) // group
    hc = continue_rows(graphdef, params, cache, tokens[:, p:], attn_mask[:, p:], owner, remat)
    return jnp.concatenate([jnp.take(hp[:, -1:], owner, axis=0), hc[:, :-1]], axis=1)


def token_logprobs_and_entropy(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,
    attn_mask: jax.Array,
    completion_len: int,
    temperature: float = 1.0,
    logit_chunk: int | None = None,
    with_entropy: bool = True,
    remat: bool = False,
    group: int = 1,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs [N,L] (and entropies [N,L], no gradient) of the last L tokens of tokens [N,T].

    One forward pass to hidden states; the vocabulary projection runs only at the T-L..T-2
    positions that predict completion tokens (optionally in chunks of logit_chunk positions).
    Positions come from `positions_from_mask(attn_mask)`, as in the sampler. remat: recompute
    each block's activations in the backward pass (`Transformer.__call__`). group > 1: every
    `group` adjacent rows share one prompt, which runs once (`_shared_prompt_hidden`).
    """
    n, t = tokens.shape
    big_l = completion_len
    if group > 1:
        h = _shared_prompt_hidden(graphdef, params, tokens, attn_mask, big_l, group, remat)
    else:
        positions = positions_from_mask(attn_mask)
        hidden, _ = forward(
            graphdef, params, tokens, positions, attn_mask, return_hidden=True, remat=remat
        )
        h = hidden[:, t - big_l - 1 : t - 1]
    targets = tokens[:, t - big_l :]
    stats = lambda hh, tt: _head_stats(graphdef, params, hh, tt, temperature, with_entropy)
    if logit_chunk is None or logit_chunk >= big_l:
        return stats(h, targets)
    chunk = jax.checkpoint(stats)
    parts = [
        chunk(h[:, s : s + logit_chunk], targets[:, s : s + logit_chunk])
        for s in range(0, big_l, logit_chunk)
    ]
    logp = jnp.concatenate([p[0] for p in parts], axis=1)
    ent = jnp.concatenate([p[1] for p in parts], axis=1) if with_entropy else None
    return logp, ent


def token_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,
    attn_mask: jax.Array,
    completion_len: int,
    temperature: float = 1.0,
    logit_chunk: int | None = None,
    group: int = 1,
) -> jax.Array:
    """Log-probs [N,L] of the completion tokens (the last L of tokens [N,T]); group: see
    `token_logprobs_and_entropy`."""
    return token_logprobs_and_entropy(
        graphdef,
        params,
        tokens,
        attn_mask,
        completion_len,
        temperature,
        logit_chunk,
        False,
        group=group,
    )[0]


def completion_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    hidden: jax.Array,
    tokens: jax.Array,
    completion_len: int,
    temperature: float = 1.0,
) -> jax.Array:
    """Log-probs [N,L] of the last L of tokens [N,T] from final hidden states [N,T,D] that a
    caller computed itself (e.g. over a KV cache, likelihood.py): the same head read-out as
    `token_logprobs_and_entropy`, at the T-L-1..T-2 positions only (T > L)."""
    t = tokens.shape[1]
    h = hidden[:, t - completion_len - 1 : t - 1]
    targets = tokens[:, t - completion_len :]
    return _head_stats(graphdef, params, h, targets, temperature, False)[0]


def make_ref_logprobs(
    graphdef: nnx.GraphDef,
    temperature: float = 1.0,
    logit_chunk: int | None = None,
    group: int = 1,
) -> Callable[[nnx.State, jax.Array, jax.Array, int], jax.Array]:
    """Jitted `(ref_params, tokens [N,T], attn_mask [N,T], L) -> logp_ref [N,L]`, no gradient.

    ref_params is the frozen initial policy: a copy of the params before the first update, or,
    for a LoRA policy, its base weights (`lora.split_adapters`) under the base model's graphdef.
    group > 1: rows come in groups of that many adjacent rows with one prompt, run once per group.
    """

    def ref(params, tokens, attn_mask, completion_len):
        g = group if tokens.shape[0] % group == 0 else 1
        return jax.lax.stop_gradient(
            token_logprobs(
                graphdef, params, tokens, attn_mask, completion_len, temperature, logit_chunk, g
            )
        )

    return jax.jit(ref, static_argnums=(3,))

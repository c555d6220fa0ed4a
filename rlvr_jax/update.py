"""Policy update: TrainState, the optax chain and the jitted train step (log-probs: logprobs.py).

The step differentiates only the *trainable* part of the parameters (all of them, the top k
blocks on small machines, or only LoRA adapters): frozen weights get no gradient and no Adam
moments at all, so XLA also drops the backward pass below the lowest trained block. That is
cheaper than masking a full gradient with `optax.set_to_zero`, which still computes it.

Shapes: N rows, T = P + L tokens (prompt left-padded, then the completion), L completion length,
V vocab, D model dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlvr_jax import finite, losses
from rlvr_jax.logprobs import token_logprobs_and_entropy
from rlvr_jax.models.config import LoraConfig
from rlvr_jax.models.lora import is_adapter

Filter = Callable[[tuple, Any], bool]


@flax.struct.dataclass
class TrainState:
    """Everything a policy update changes; a pytree, so it can be donated, sharded and saved.

    step counts applied updates; opt_state covers only the trainable parameters. A non-finite
    update changes nothing except nonfinite_total (+1) and nonfinite_streak (+1, reset to 0 by
    the next good update).
    """

    step: jax.Array  # [] int32
    params: nnx.State  # the whole policy state (graphdef lives outside)
    opt_state: optax.OptState
    rng: jax.Array  # a jax.random key
    nonfinite_total: jax.Array  # [] int32
    nonfinite_streak: jax.Array  # [] int32


@flax.struct.dataclass
class Batch:
    """One rollout batch for the policy update (every array has N rows).

    tokens [N,T] int32 and attn_mask [N,T] bool: prompt (left-padded) + completion. mask [N,L]:
    completion tokens that count. advantages [N,L] from `losses.compute_advantages`.
    logp_old [N,L]: log-probs under the policy that sampled (the PPO ratio's denominator).
    logp_ref [N,L] or None: the reference policy's, needed only for the k3 KL loss term.
    """

    tokens: jax.Array
    attn_mask: jax.Array
    mask: jax.Array
    advantages: jax.Array
    logp_old: jax.Array
    logp_ref: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable).

    micro_batch: rows per micro-batch (N must be a multiple); gradients are summed over them.
    kl_coef: weight of the k3 KL-to-reference loss term (0 when the KL is in the reward).
    agg / norm_len: loss aggregation, see `losses.aggregate`. temperature: the sampling
    temperature, applied to logits so log-probs match the sampler's. logit_chunk: compute the
    vocabulary projection for this many completion positions at a time, rematerialised in the
    backward pass (saves [N,L,V] memory at the cost of recomputing the head; None = all at once).
    remat: recompute each block's activations in the backward pass (memory.RunShape.remat).
    group: every `group` adjacent rows of a batch share one prompt, which the forward pass runs
    once (`logprobs.token_logprobs_and_entropy`); micro-batches then hold whole groups, so
    micro_batch must be a multiple of it. 1: every row's prompt runs on its own.
    """

    micro_batch: int
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    agg: losses.Aggregation = "token_mean"
    norm_len: int | None = None
    temperature: float = 1.0
    logit_chunk: int | None = None
    with_entropy: bool = True
    remat: bool = False
    group: int = 1


# ---------------------------------------------------------------------------------------------
# Optimiser and trainable subset


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup (cfg.warmup_frac of total_steps) then cosine decay to cfg.min_lr_ratio * lr."""
    total = max(int(total_steps), 1)
    warmup = int(round(float(cfg.warmup_frac) * total))
    lr = float(cfg.lr)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=lr * float(cfg.min_lr_ratio),
    )


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW with the warmup+cosine schedule.

    cfg has lr, warmup_frac, min_lr_ratio, b1, b2, weight_decay, grad_clip (configs/base.py's
    `optim` section). Weight decay applies to matrices only, not norms or biases.
    """
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(float(cfg.grad_clip)),
        optax.adamw(
            make_schedule(cfg, total_steps),
            b1=float(cfg.b1),
            b2=float(cfg.b2),
            eps=float(getattr(cfg, "eps", 1e-8)),
            weight_decay=float(cfg.weight_decay),
            mask=decay_mask,
        ),
    )


def trainable_filter(
    num_layers: int, train_layers: int = -1, lora: LoraConfig | None = None
) -> Filter:
    """An nnx filter selecting the trained parameters.

    train_layers < 0 (or >= num_layers): everything. k: the top k blocks, the final norm and an
    untied lm_head; the embedding (also the head when tied) and lower blocks stay frozen.
    lora (the model's LoRA config): only the adapters (of the top k blocks with train_layers k),
    and the norm scales if lora.train_norms; every weight of the model stays frozen.
    """
    first = 0 if train_layers < 0 or train_layers >= num_layers else num_layers - train_layers

    def in_top_blocks(path: tuple) -> bool:
        return len(path) > 1 and path[0] == "layers" and int(path[1]) >= first

    if lora is not None:
        norms = lora.train_norms

        def adapter(path: tuple, x: Any) -> bool:
            if norms and path[-1:] == ("scale",):  # RMSNorm scales
                return path[0] == "final_norm" or in_top_blocks(path)
            return is_adapter(path) and in_top_blocks(path)

        return adapter
    if first == 0:
        return lambda path, x: True

    def keep(path: tuple, x: Any) -> bool:
        if path and path[0] == "layers":
            return in_top_blocks(path)
        return bool(path) and path[0] in ("final_norm", "lm_head")

    return keep


def split_trainable(params: nnx.State, trainable: Filter) -> tuple[nnx.State, nnx.State]:
    """(trainable, frozen) parts of params; `nnx.merge_state(a, b)` puts them back together."""
    return nnx.split_state(params, trainable, ...)


def init_train_state(
    params: nnx.State, optimizer: optax.GradientTransformation, trainable: Filter, rng: jax.Array
) -> TrainState:
    """A fresh TrainState: step 0, optimizer moments for the trainable parameters only."""
    # Three separate scalars: the state is donated, and one buffer may not be donated twice.
    zero = lambda: jnp.zeros((), jnp.int32)
    opt_state = optimizer.init(split_trainable(params, trainable)[0])
    return TrainState(zero(), params, opt_state, rng, zero(), zero())


# ---------------------------------------------------------------------------------------------
# Gradients over micro-batches and the train step


def loss_and_grads(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: Batch,
    cfg: StepConfig,
    trainable: Filter,
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """Gradient of the policy loss w.r.t. the trainable params, summed over micro-batches.

    Each micro-batch loss is normalised by the *whole* batch's token / row counts, so the sum of
    micro-batch gradients is exactly the one-batch gradient. Returns (grads, metrics) with
    metrics loss, pg_loss, clip_frac, approx_kl, kl_ref, entropy (token means) and logp_drift
    (max |logp_old - logp| over valid tokens).
    """
    n, big_l = batch.mask.shape
    if n % cfg.micro_batch:
        raise ValueError(f"batch of {n} rows is not a multiple of micro_batch={cfg.micro_batch}")
    g = cfg.group
    if cfg.micro_batch % g:
        raise ValueError(f"micro_batch={cfg.micro_batch} is not a multiple of group={g}")
    k = n // cfg.micro_batch
    train_p, frozen_p = split_trainable(params, trainable)
    num_tokens = jnp.maximum(batch.mask.astype(jnp.float32).sum(), 1.0)

    def micro(tp, mb: Batch):
        p = nnx.merge_state(tp, frozen_p)
        logp, ent = token_logprobs_and_entropy(
            graphdef,
            p,
            mb.tokens,
            mb.attn_mask,
            big_l,
            cfg.temperature,
            cfg.logit_chunk,
            cfg.with_entropy,
            cfg.remat,
            g,
        )
        loss, met = losses.policy_loss(
            logp,
            mb.logp_old,
            mb.advantages,
            mb.mask,
            cfg.clip_eps,
            cfg.clip_eps_high,
            mb.logp_ref,
            cfg.kl_coef,
            cfg.agg,
            num_tokens,
            float(n),
            cfg.norm_len,
        )
        m = mb.mask.astype(jnp.float32)
        met = dict(met, loss=loss)
        met["entropy"] = (ent * m).sum() / num_tokens if ent is not None else jnp.zeros(())
        drift = jnp.max(jnp.abs(jax.lax.stop_gradient(logp) - mb.logp_old) * m)
        return loss, (met, drift)

    grad_fn = jax.grad(micro, has_aux=True)
    if k == 1:
        grads, (met, drift) = grad_fn(train_p, batch)
        return grads, dict(met, logp_drift=drift)

    # Micro-batch j takes groups j, j+k, j+2k, ... (rows, with group 1): when rows are sharded
    # over devices in contiguous blocks, every micro-batch stays spread over all devices with no
    # data movement, and a prompt's rows stay together.
    def split(x):
        x = x.reshape(cfg.micro_batch // g, k, g, *x.shape[1:]).swapaxes(0, 1)
        return x.reshape(k, cfg.micro_batch, *x.shape[3:])

    micro_batches = jax.tree.map(split, batch)

    def body(carry, mb):
        g_acc, met_acc, drift_acc = carry
        g, (met, drift) = grad_fn(train_p, mb)
        add = lambda a, b: a + b
        return (
            jax.tree.map(add, g_acc, g),
            jax.tree.map(add, met_acc, met),
            jnp.maximum(drift_acc, drift),
        ), None

    zeros_g = jax.tree.map(jnp.zeros_like, train_p)
    met_shape = jax.eval_shape(
        lambda: grad_fn(train_p, jax.tree.map(lambda x: x[0], micro_batches))[1][0]
    )
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), met_shape)
    (grads, met, drift), _ = jax.lax.scan(body, (zeros_g, zeros_m, jnp.zeros(())), micro_batches)
    return grads, dict(met, logp_drift=drift)


# XLA options for the jitted update on the CPU backend, per compilation (not XLA_FLAGS, which would
# also reach the sampler): YNNPACK for the matrix products only, and XLA's sequential schedule
# instead of the concurrency-optimised one. The schedule sets the order of ops and so which
# buffers are reused; the runtime still starts independent ops side by side (a trace of this
# update shows two matrix products at once for about 2.6 s of a 16.8 s step). Measured on 2 cores,
# SmolLM2-135M, 8 x 256 tokens, the JAX update alone: YNNPACK 24.2 -> 19.0 s (medians of 3); then
# the sequential schedule 15.1-18.4 -> 14.1-15.2 s per step (4 steps each, the heap kept as
# host_memory keeps it). The sampler keeps XLA's defaults: as XLA_FLAGS the YNNPACK option made
# its decode step about 2x slower.
CPU_TRAIN_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    "xla_cpu_enable_concurrency_optimized_scheduler": False,
}


def compiler_options() -> dict[str, str]:
    """The per-compilation XLA options of the update (CPU_TRAIN_OPTIONS on CPU, else none)."""
    return dict(CPU_TRAIN_OPTIONS) if jax.default_backend() == "cpu" else {}


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    cfg: StepConfig,
    trainable: Filter,
    schedule: optax.Schedule | None = None,
    state_shardings: Any = None,
    batch_shardings: Any = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted `train_step(state, batch) -> (new_state, metrics)`; state is donated.

    A step whose loss or gradient norm is not finite leaves params, optimizer state and step
    unchanged and bumps the nonfinite counters (metrics["nonfinite"] = 1). Metrics: those of
    `loss_and_grads` plus grad_norm (before clipping), lr, nonfinite, nonfinite_total,
    nonfinite_streak. state_shardings / batch_shardings (from rlvr_jax.mesh) pin the layouts;
    None leaves them to jit.
    """

    def step(state: TrainState, batch: Batch):
        grads, met = loss_and_grads(graphdef, state.params, batch, cfg, trainable)

        def apply(s: TrainState) -> TrainState:
            train_p, frozen_p = split_trainable(s.params, trainable)
            updates, opt_state = optimizer.update(grads, s.opt_state, train_p)
            params = nnx.merge_state(optax.apply_updates(train_p, updates), frozen_p)
            return s.replace(
                step=s.step + 1,
                params=params,
                opt_state=opt_state,
                nonfinite_streak=jnp.zeros_like(s.nonfinite_streak),
            )

        def skip(s: TrainState) -> TrainState:
            return s.replace(
                nonfinite_total=s.nonfinite_total + 1, nonfinite_streak=s.nonfinite_streak + 1
            )

        new, ok, gnorm = finite.apply_if_finite(met["loss"], grads, apply, skip, state)
        lr = schedule(state.step) if schedule is not None else jnp.zeros(())
        met = dict(
            met,
            grad_norm=gnorm,
            lr=jnp.asarray(lr, jnp.float32),
            nonfinite=(~ok).astype(jnp.int32),
            nonfinite_total=new.nonfinite_total,
            nonfinite_streak=new.nonfinite_streak,
        )
        return new, met

    kw: dict[str, Any] = {"compiler_options": compiler_options() or None}
    if state_shardings is not None or batch_shardings is not None:
        kw["in_shardings"] = (state_shardings, batch_shardings)
        kw["out_shardings"] = (state_shardings, None)
    return jax.jit(step, donate_argnums=(0,), **kw)

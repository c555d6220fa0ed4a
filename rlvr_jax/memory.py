"""Memory planning before compiling: bytes per device of every large thing one RL step holds.

Exact terms (shard sizes from the same rules `rlvr_jax.mesh` places arrays with): parameters,
gradients, optimizer state, the sampling copy of the parameters, reference and judge weights, and
the KV cache. Estimated terms: activations, counted per token per layer from the tensors this
model's layers keep for the backward pass (see `_layer_bytes_per_token`); XLA fuses some of them
and keeps others, so treat those as within a factor of about 2.

The step runs in phases that do not overlap: sampling (sampling weights + KV cache + prefill
activations), judging (judge activations), training (gradients + activations). The peak per device
is what every phase holds (weights, optimizer state, reference, judge) plus the largest phase.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import mesh as meshlib
from rlvr_jax import update
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.transformer import init_model

GiB = 1024**3
_MOMENTS = {"adamw": 2, "adam": 2, "lion": 1, "momentum": 1, "sgd": 0}

ADVICE = {
    "params": "shard the weights over more devices (mesh fsdp or tensor) or use bfloat16 weights",
    "grads": "shard over more devices (mesh fsdp or tensor) or use bfloat16 weights",
    "optimizer": "shard over more devices (mesh fsdp; optimizer state splits with the weights) or "
    "train fewer layers (optim.train_layers)",
    "sample_params": "sample with tensor parallelism (mesh tensor) rather than fsdp, or bfloat16",
    "reference": "rl.beta=0 drops the reference model; else bfloat16 or more fsdp devices",
    "judge": "a smaller or bfloat16 judge, or more tensor parallelism (mesh tensor)",
    "kv_cache": "fewer rows per rollout (rollout.prompts_per_step x samples_per_prompt), shorter "
    "rollout.max_prompt_len / max_new_tokens, more data or fsdp devices, or a bfloat16 cache",
    "gathered_weights": "split weights over tensor rather than fsdp, or use bfloat16 weights",
    "train_activations": "a smaller optim.micro_batch, optim.remat=True, shorter sequences, or "
    "more data or fsdp devices",
    "sampler_activations": "fewer rollout.prompts_per_step or a shorter rollout.max_prompt_len",
    "judge_activations": "a smaller judge.batch_size or judge.max_prompt_len",
}


class MemoryPlanError(RuntimeError):
    """The plan does not fit; the message names the largest term and what to change."""


@dataclasses.dataclass(frozen=True)
class RunShape:
    """The global sizes one RL step runs at (not per device).

    prompts B, group G (N = B*G rows), prompt_len P, completion_len L (cache S = P + L),
    micro_batch: rows per train micro-batch; judge_batch rows of judge_prompt_len per judge call.
    """

    prompts: int
    group: int
    prompt_len: int
    completion_len: int
    micro_batch: int
    optimizer: str = "adamw"
    opt_dtype: str = "float32"  # optimizer moments
    remat: bool = False  # per-layer rematerialisation in the train step
    reference: bool = True  # a frozen reference copy for the KL term (rl.beta > 0)
    train_layers: int = -1  # optim.train_layers: -1 trains every block (or its adapters)
    cache_dtype: str | None = None  # default: the policy dtype
    judge_batch: int = 0
    judge_prompt_len: int = 0

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @classmethod
    def from_config(cls, c: Any) -> RunShape:
        """From a run config (configs/base.py fields)."""
        optim = c.optim
        rows = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
        return cls(
            prompts=c.rollout.prompts_per_step,
            group=c.rollout.samples_per_prompt,
            prompt_len=c.rollout.max_prompt_len,
            completion_len=c.rollout.max_new_tokens,
            micro_batch=min(optim.micro_batch, rows),
            optimizer=optim.get("name", "adamw"),
            remat=bool(optim.get("remat", False)),
            reference=c.rl.beta > 0,
            train_layers=int(optim.get("train_layers", -1)),
            judge_batch=c.judge.batch_size if c.judge.get("model") else 0,
            judge_prompt_len=c.judge.max_prompt_len if c.judge.get("model") else 0,
        )


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of each term; `phases` name the terms that live only in one phase."""

    terms: dict[str, int]
    phases: dict[str, tuple[str, ...]]
    notes: dict[str, str]
    mesh: dict[str, int]

    @property
    def persistent(self) -> tuple[str, ...]:
        in_phase = {t for ts in self.phases.values() for t in ts}
        return tuple(t for t in self.terms if t not in in_phase)

    def phase_bytes(self, phase: str) -> int:
        return sum(self.terms[t] for t in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def total(self) -> int:
        """Peak bytes per device: persistent terms + the largest phase."""
        return sum(self.terms[t] for t in self.persistent) + self.phase_bytes(self.peak_phase)

    @property
    def largest(self) -> str:
        live = (*self.persistent, *self.phases[self.peak_phase])
        return max(live, key=lambda t: self.terms[t])

    def table(self) -> str:
        """A readable per-device table, one term per line."""
        mesh = "x".join(f"{a}={n}" for a, n in self.mesh.items())
        lines = [f"memory plan per device ({mesh}):"]
        for t, b in self.terms.items():
            phase = next((p for p, ts in self.phases.items() if t in ts), "all")
            lines.append(f"  {t:<20} {fmt_bytes(b):>10}  [{phase}]  {self.notes.get(t, '')}")
        lines.append(f"  {'peak':<20} {fmt_bytes(self.total):>10}  (phase: {self.peak_phase})")
        return "\n".join(lines)


def fmt_bytes(b: float) -> str:
    """Bytes as a short human string (e.g. 1.50 GiB)."""
    for unit, scale in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def _itemsize(dtype: str) -> int:
    return np.dtype(jnp.dtype(dtype)).itemsize


def _split(spec: jax.sharding.PartitionSpec, sizes: Mapping[str, int]) -> int:
    axes = [a for e in spec if e is not None for a in (e if isinstance(e, tuple) else (e,))]
    return math.prod(sizes[a] for a in axes)


def tree_bytes_per_device(
    tree: Any, mesh: Any, rules: meshlib.Rules, dtype: str | None = None
) -> int:
    """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs with nnx metadata) laid out
    by `rules` on `mesh` (a Mesh or its sizes); `dtype` overrides the leaves' dtype."""
    sizes = meshlib.mesh_sizes(mesh)
    specs = meshlib.tree_shardings(tree, sizes, rules, warn=False)
    total = 0
    for x, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs), strict=True):
        item = _itemsize(dtype) if dtype else np.dtype(x.dtype).itemsize
        total += math.prod(x.shape) // _split(spec, sizes) * item
    return total


def measured_bytes_per_device(tree: Any) -> int:
    """The most bytes any one device holds of a tree of placed jax arrays (from their shards)."""
    per: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        for s in x.addressable_shards:
            per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return max(per.values(), default=0)


def abstract_params(cfg: ModelConfig) -> Any:
    """The model state as ShapeDtypeStructs with their logical-axis metadata (no allocation)."""
    return jax.eval_shape(lambda: init_model(cfg, 0)[1])


def _div(n: int, k: int) -> int:
    """n split k ways when k divides it (as the mesh rules do), else whole."""
    return n // k if n % k == 0 else n


def _layer_bytes_per_token(cfg: ModelConfig, seq: int, tensor: int) -> int:
    """Bytes one decoder layer keeps per token for its backward pass (attending over `seq` slots).

    Counts the tensors the layer's code produces: residual and two norm outputs (+ fp32 norm
    internals), q/k/v before and after RoPE, attention scores and probabilities (fp32, [H, seq]),
    the attention output, and the MLP's gate, up, activation and product. Heads, KV heads and the
    MLP width are split over `tensor` when it divides them.
    """
    b = _itemsize(cfg.dtype)
    d, k = cfg.hidden_size, cfg.head_dim
    h, hkv = _div(cfg.num_heads, tensor), _div(cfg.num_kv_heads, tensor)
    f = _div(cfg.intermediate_size, tensor)
    return b * (3 * d + 2 * (h + 2 * hkv) * k + h * k + 4 * f) + 4 * (2 * d + 2 * h * seq)


def _rows_per_device(rows: int, sizes: Mapping[str, int]) -> int:
    spec, _ = meshlib.logical_to_spec(("batch",), (rows,), sizes, meshlib.TRAIN_RULES)
    return rows // _split(spec, sizes)


# The step's phases do not overlap; a term named here lives only in its phase.
PHASES = {
    "sample": ("sample_params", "kv_cache", "sampler_activations"),
    "judge": ("judge_activations",),
    "train": ("grads", "gathered_weights", "train_activations"),
}


def _weight_terms(
    cfg: ModelConfig, run: RunShape, sizes: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, str]]:
    """(bytes, notes) of the policy's weights and what follows them: params, optimizer moments,
    reference copy, sampling copy, gradients and the weights fsdp gathers in the train step.
    Gradients and optimizer moments exist for the trained params only (LoRA: the adapters)."""
    train, sample = meshlib.TRAIN_RULES, meshlib.SAMPLE_RULES
    params = abstract_params(cfg)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    lora = cfg.lora is not None
    trained = update.split_trainable(
        params, update.trainable_filter(cfg.num_layers, run.train_layers, cfg.lora)
    )[0]
    n_trained = sum(math.prod(x.shape) for x in jax.tree.leaves(trained))
    t_train = tree_bytes_per_device(trained, sizes, train)
    p_train = tree_bytes_per_device(params, sizes, train)
    p_sample = tree_bytes_per_device(params, sizes, sample)
    # The sampling copy is new arrays only where the two layouts differ (fsdp > 1).
    same_layout = jax.tree.leaves(meshlib.tree_shardings(params, sizes, train, warn=False)) == (
        jax.tree.leaves(meshlib.tree_shardings(params, sizes, sample, warn=False))
    )
    f32_train = tree_bytes_per_device(trained, sizes, train, "float32")
    moments = _MOMENTS.get(run.optimizer, 2)
    n_micro = math.ceil(run.rows / run.micro_batch)
    terms = {
        "params": p_train,
        "optimizer": moments * tree_bytes_per_device(trained, sizes, train, run.opt_dtype),
        # A LoRA policy's reference is its own base weights, adapters off: nothing more to hold.
        "reference": p_train if run.reference and not lora else 0,
        "sample_params": 0 if same_layout else p_sample,
        "grads": t_train + (f32_train if n_micro > 1 else 0),
        # fsdp: XLA all-gathers each weight before use and may keep them all live in the step.
        "gathered_weights": 0 if same_layout else p_sample - p_train,
    }
    what = "weights" if n_trained == n_params else "top blocks"
    what = f"LoRA rank {cfg.lora.rank} adapters" if lora else what
    trained_note = f"{n_trained / 1e6:.2f}M trained ({what})"
    reference_note = "frozen policy copy (rl.beta > 0)" if run.reference else "none (rl.beta = 0)"
    if run.reference and lora:
        reference_note = "the policy's base weights, adapters off (shared, no copy)"
    notes = {
        "params": f"{n_params / 1e6:.1f}M {cfg.dtype} params, {trained_note}, train layout",
        "optimizer": f"{run.optimizer}: {moments} x {run.opt_dtype} moments of the "
        f"{n_trained / 1e6:.2f}M trained params, sharded like them",
        "reference": reference_note,
        "sample_params": "weights regathered over fsdp for decoding"
        if terms["sample_params"]
        else "same arrays as the train layout",
        "grads": "one gradient of the trained params"
        + (f" + fp32 accumulator over {n_micro} micro-batches" if n_micro > 1 else ""),
    }
    return terms, notes


def _kv_cache_bytes(cfg: ModelConfig, run: RunShape, sizes: Mapping[str, int]) -> tuple[int, str]:
    """(bytes, note) of the sampler's KV cache: N rows x S slots x Hkv x K per layer, k and v,
    laid out by the sampling rules, plus the [N, S] mask."""
    s = run.prompt_len + run.completion_len
    cache_dt = run.cache_dtype or cfg.dtype
    kv_shape = (run.rows, s, cfg.num_kv_heads, cfg.head_dim)
    kv_spec, _ = meshlib.logical_to_spec(meshlib.KV_NAMES, kv_shape, sizes, meshlib.SAMPLE_RULES)
    kv = 2 * cfg.num_layers * math.prod(kv_shape) // _split(kv_spec, sizes) * _itemsize(cache_dt)
    kv += _rows_per_device(run.rows, sizes) * s
    return kv, f"{run.rows} rows x {s} slots x {cfg.num_layers} layers, {cache_dt}"


def _sampler_activation_bytes(
    cfg: ModelConfig, run: RunShape, sizes: Mapping[str, int], kv_cache: int
) -> tuple[int, str]:
    """(bytes, note) of the prefill: one layer live at a time over the B prompt rows, plus the
    B-row share of the cache (`kv_cache` bytes for N rows) before the rows are repeated G times."""
    b_rows = _rows_per_device(run.prompts, sizes)
    kv_rows = _rows_per_device(run.rows, sizes)
    layer = _layer_bytes_per_token(cfg, run.prompt_len, sizes["tensor"])
    act = b_rows * run.prompt_len * layer + kv_cache * b_rows // max(kv_rows, 1)
    return act, f"prefill of {run.prompts} prompts x {run.prompt_len} tokens"


def _train_activation_bytes(
    cfg: ModelConfig, run: RunShape, sizes: Mapping[str, int]
) -> tuple[int, str]:
    """(bytes, note) of one train micro-batch's activations: every layer's kept tensors (with
    remat, only each layer's input plus one layer's tensors), plus fp32 logits, log-softmax and
    their gradient over the vocabulary."""
    tensor = sizes["tensor"]
    t = run.prompt_len + run.completion_len
    m = _rows_per_device(run.micro_batch, sizes)
    layer = _layer_bytes_per_token(cfg, t, tensor)
    kept = cfg.num_layers * layer
    if run.remat:
        kept = cfg.num_layers * cfg.hidden_size * _itemsize(cfg.dtype) + layer
    vocab = 3 * 4 * _div(cfg.vocab_size, tensor)
    remat = "on" if run.remat else "off"
    note = f"estimate: {run.micro_batch} rows x {t} tokens per micro-batch, remat {remat}"
    return m * t * (kept + vocab), note


def _judge_terms(
    judge_cfg: ModelConfig, run: RunShape, sizes: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, str]]:
    """(bytes, notes) of the judge: its weights in the sampling layout and the prefill of one
    judge batch."""
    jparams = abstract_params(judge_cfg)
    jr = _rows_per_device(run.judge_batch, sizes)
    pj = run.judge_prompt_len
    terms = {
        "judge": tree_bytes_per_device(jparams, sizes, meshlib.SAMPLE_RULES),
        "judge_activations": jr * pj * _layer_bytes_per_token(judge_cfg, pj, sizes["tensor"]),
    }
    notes = {
        "judge": f"{judge_cfg.num_layers}-layer judge, sampling layout",
        "judge_activations": f"prefill of {run.judge_batch} judge prompts x {pj} tokens",
    }
    return terms, notes


def plan_memory(
    cfg: ModelConfig, run: RunShape, mesh: Any, judge_cfg: ModelConfig | None = None
) -> MemoryPlan:
    """Bytes per device of one RL step of `run` for policy `cfg` (and `judge_cfg`) on `mesh`.

    `mesh` is a Mesh, a {'data','fsdp','tensor'} mapping or a (data, fsdp, tensor) tuple: plans can
    be made for meshes larger than the devices present. Nothing is compiled or allocated.
    """
    sizes = meshlib.mesh_sizes(mesh)
    weights, notes = _weight_terms(cfg, run, sizes)
    kv, notes["kv_cache"] = _kv_cache_bytes(cfg, run, sizes)
    sampler, notes["sampler_activations"] = _sampler_activation_bytes(cfg, run, sizes, kv)
    train, notes["train_activations"] = _train_activation_bytes(cfg, run, sizes)
    judge = {"judge": 0, "judge_activations": 0}
    if judge_cfg is not None and run.judge_batch:
        judge, judge_notes = _judge_terms(judge_cfg, run, sizes)
        notes.update(judge_notes)
    terms = {
        "params": weights["params"],
        "optimizer": weights["optimizer"],
        "reference": weights["reference"],
        "judge": judge["judge"],
        "sample_params": weights["sample_params"],
        "kv_cache": kv,
        "sampler_activations": sampler,
        "judge_activations": judge["judge_activations"],
        "grads": weights["grads"],
        "gathered_weights": weights["gathered_weights"],
        "train_activations": train,
    }
    return MemoryPlan(terms=terms, phases=dict(PHASES), notes=notes, mesh=sizes)


def device_memory_bytes(device: jax.Device | None = None, fallback: int | None = None) -> int:
    """Usable bytes of one device: the runtime's limit where it reports one (GPU, TPU), else
    `fallback`, else (CPU) physical RAM shared by the process's devices."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if fallback:
        return int(fallback)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // jax.local_device_count()


def check_fits(plan: MemoryPlan, device_bytes: int, usable: float = 0.9) -> None:
    """Raise MemoryPlanError (one readable message) when the plan's peak exceeds `usable` of a
    device: the message names the largest term and what to change."""
    budget = int(device_bytes * usable)
    if plan.total <= budget:
        return
    big = plan.largest
    mesh = ",".join(str(n) for n in plan.mesh.values())
    ranked = sorted(plan.terms.items(), key=lambda kv: -kv[1])
    others = ", ".join(f"{t} {fmt_bytes(b)}" for t, b in ranked if b and t != big)
    raise MemoryPlanError(
        f"will not fit: needs {fmt_bytes(plan.total)} per device on mesh {mesh} (phase "
        f"{plan.peak_phase}), a device has {fmt_bytes(device_bytes)} ({usable:.0%} usable = "
        f"{fmt_bytes(budget)}). Largest term: {big} {fmt_bytes(plan.terms[big])} "
        f"({plan.notes.get(big, '')}); to shrink it: {ADVICE[big]}. Other terms: {others}."
    )

"""One RL policy update with and without LoRA: time and memory, SmolLM2-135M, 8 x 256 tokens.

    python bench/lora_update.py [--runs 3] [--warmup 1] [--rank 16] [--random] [--rows 8 --seq 256]

Both updates run in this one process on the same weights and batch (`update.make_train_step`,
AdamW, one micro-batch): full fine-tuning of every weight, and LoRA adapters of rank `--rank` on
q, k, v, o, gate, up, down with every weight frozen. After one untimed compile-and-run step each
and `--warmup` untimed rounds, timed runs alternate full / LoRA so that both see the same
background load; each run records the CPU share other processes took (the box is shared), and
medians use the runs under 10% when there are enough. Memory per update: the optimizer state and
the compiled program's temporary buffers (XLA's memory analysis: activations, gradients), and the
memory plan's terms. Last line: `lora_over_full_time: X.XX` (median LoRA seconds / median full).
"""

from __future__ import annotations

import argparse
import statistics

from rlvr_jax.cpu_meter import CpuMeter  # noqa: E402 (no jax import)

CONTENDED = 0.10  # other processes' share of the machine above which a run counts as contended


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs of each update")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first step")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--random", action="store_true", help="random weights of the default shapes")
    return p.parse_args()


def load_policy(random: bool):
    """(cfg, state) of the default model, or random weights of its shapes."""
    import jax
    import numpy as np

    from rlvr_jax.models.default import default_model_dir
    from rlvr_jax.models.model_dir import load_config, load_model
    from rlvr_jax.models.transformer import abstract_model

    if not random:
        m = load_model(default_model_dir())
        return m.cfg, m.state
    cfg = load_config(default_model_dir())
    rng = np.random.default_rng(0)
    draw = lambda s: jax.numpy.asarray(
        (np.ones(s.shape) if len(s.shape) == 1 else 0.02 * rng.standard_normal(s.shape)).astype(
            np.float32
        )
    )
    return cfg, jax.tree.map(draw, abstract_model(cfg)[1])


def build_update(cfg, state, batch, lora):
    """(step, train state, optimizer-state bytes, compiled temp bytes) of one update kind."""
    import jax
    import ml_collections
    from flax import nnx

    from rlvr_jax import memory, update
    from rlvr_jax.models.transformer import abstract_model, init_adapters

    if lora is not None:
        cfg = cfg.replace(lora=lora)
        state = nnx.merge_state(state, init_adapters(cfg, seed=0))
    graphdef = abstract_model(cfg)[0]
    ocfg = ml_collections.ConfigDict(
        dict(lr=1e-5, warmup_frac=0.0, min_lr_ratio=1.0, b1=0.9, b2=0.95, weight_decay=0.0,
             grad_clip=1.0)
    )  # fmt: skip
    opt = update.make_optimizer(ocfg, total_steps=100)
    keep = update.trainable_filter(cfg.num_layers, lora=cfg.lora)
    ts = update.init_train_state(state, opt, keep, jax.random.key(0))
    n = batch.tokens.shape[0]
    step = update.make_train_step(graphdef, opt, update.StepConfig(micro_batch=n), keep)
    compiled = step.lower(ts, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    return step, ts, memory.measured_bytes_per_device(ts.opt_state), temp


def main() -> None:
    args = parse_args()
    from rlvr_jax import host_memory

    host_memory.keep_freed_memory()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax import logprobs, memory, update
    from rlvr_jax.models.config import LoraConfig
    from rlvr_jax.models.transformer import abstract_model

    cfg, state = load_policy(args.random)
    rng = np.random.default_rng(0)
    n, t = args.rows, args.seq
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (n, t), dtype=np.int32))
    attn = jnp.ones((n, t), bool)
    mask = jnp.ones((n, t // 2), bool)  # the last half: the completion
    adv = jnp.asarray(np.repeat(rng.standard_normal((n, 1)), t // 2, 1), jnp.float32)
    logp = jax.jit(logprobs.token_logprobs, static_argnums=(0, 4))(
        abstract_model(cfg)[0], state, tokens, attn, t // 2
    )
    batch = update.Batch(tokens, attn, mask, adv, logp)
    lora = LoraConfig(args.rank, args.alpha)
    sides = {}
    for name, lcfg in (("full", None), ("lora", lora)):
        with CpuMeter() as m:
            step, ts, opt_bytes, temp = build_update(
                cfg, jax.tree.map(jnp.copy, state), batch, lcfg
            )
            ts, met = step(ts, batch)
            jax.block_until_ready(ts)
        sides[name] = dict(step=step, ts=ts, opt=opt_bytes, temp=temp, times=[], others=[])
        print(f"{name}: compile + first step {m.wall:.1f} s, loss {float(met['loss']):.4f}")
    for _ in range(args.warmup):
        for s in sides.values():
            s["ts"], _ = s["step"](s["ts"], batch)
            jax.block_until_ready(s["ts"])
    for _ in range(args.runs):
        for name, s in sides.items():
            with CpuMeter() as m:
                s["ts"], _ = s["step"](s["ts"], batch)
                jax.block_until_ready(s["ts"])
            s["times"].append(m.wall)
            s["others"].append(m.other_share)
            print(f"{name}: {m.wall:.2f} s (other processes {m.other_share:.0%} of the CPU)")

    run = memory.RunShape(prompts=n, group=1, prompt_len=t // 2, completion_len=t // 2,
                          micro_batch=n, reference=False)  # fmt: skip
    med = {}
    for name, s in sides.items():
        quiet = [w for w, o in zip(s["times"], s["others"], strict=True) if o < CONTENDED]
        use = quiet if len(quiet) >= max(1, len(s["times"]) // 2) else s["times"]
        med[name] = statistics.median(use)
        plan = memory.plan_memory(
            cfg.replace(lora=lora if name == "lora" else None), run, (1, 1, 1)
        )
        print(
            f"{name}: median {med[name]:.2f} s over {len(use)} runs"
            f"{'' if use is quiet else ' (contended)'}; optimizer state "
            f"{memory.fmt_bytes(s['opt'])}, update temporaries {memory.fmt_bytes(s['temp'])}; "
            f"plan: optimizer {memory.fmt_bytes(plan.terms['optimizer'])}, grads "
            f"{memory.fmt_bytes(plan.terms['grads'])}"
        )
    full, lo = sides["full"], sides["lora"]
    print(f"lora_over_full_memory: {(lo['opt'] + lo['temp']) / (full['opt'] + full['temp']):.2f}")
    print(f"lora_over_full_time: {med['lora'] / med['full']:.2f}")


if __name__ == "__main__":
    main()

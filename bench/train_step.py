"""One RL policy update in JAX vs torch forward + backward + AdamW, SmolLM2-135M, 8 x 256 tokens.

    python bench/train_step.py [--runs 5] [--warmup 2] [--random] [--xla-flags "..."]

Both sides run in this one process on the same weights and batch and optimise the same objective:
the PPO clipped surrogate on per-token log-probs of tokens 1..255 given their prefix (JAX:
`rlvr_jax.update.make_train_step`, which also computes the entropy metric; torch: transformers'
LlamaForCausalLM, log-probs as gathered logit minus logsumexp, clip_grad_norm_(1.0), AdamW
betas (0.9, 0.95)). Both sides share the process's allocator: `host_memory.keep_freed_memory()`,
as the train and distill commands set it (`--system-malloc` leaves glibc's default). After each
side's first step, untimed rounds of both let the shared heap settle (at least `--warmup`, then
until a round takes no fresh pages from the system); then runs alternate JAX / torch so that both
see the same background load. For
each timed run the CPU time used by *other* processes is read from /proc/stat and reported as a
share of the machine (the box is shared); medians use uncontended runs when there are enough.
Last line: `speedup_vs_torch: X.XX` (median torch seconds / median JAX seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# XLA reads its flags once, at backend start: set them before jax is imported. These were chosen
# by timing this benchmark on the 2-core CPU (see bench notes in the issue).
DEFAULT_XLA_FLAGS = ""
N_ROWS, SEQ = 8, 256


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each side")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed rounds of both sides after the first step, at least (the heap and caches "
        "settle: rounds go on until one takes no fresh pages, up to --max-warmup)",
    )
    p.add_argument("--max-warmup", type=int, default=8, help="untimed rounds, at most")
    p.add_argument("--random", action="store_true", help="random weights of the same size")
    p.add_argument("--xla-flags", default=DEFAULT_XLA_FLAGS, help="extra XLA_FLAGS")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--logit-chunk", type=int, default=0, help="JAX: head chunk size (0: none)")
    p.add_argument("--no-entropy", action="store_true", help="JAX: skip the entropy metric")
    p.add_argument(
        "--no-train-options",
        action="store_true",
        help="JAX: compile the update without update.CPU_TRAIN_OPTIONS (XLA's defaults)",
    )
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (default: host_memory.keep_freed_memory(), for both "
        "sides, as the train and distill commands do)",
    )
    p.add_argument("--skip-torch", action="store_true")
    return p.parse_args()


def smollm2_135m_config():
    from rlvr_jax.models import ModelConfig

    return ModelConfig(
        "llama",
        49152,
        576,
        1536,
        30,
        9,
        3,
        64,
        rope_theta=1e5,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )


def load_policy(random: bool):
    """(cfg, graphdef, state): the default model, or random weights of the same shapes."""
    import jax
    import numpy as np

    from rlvr_jax.models.transformer import abstract_model

    if not random:
        from rlvr_jax.models.default import default_model_dir
        from rlvr_jax.models.model_dir import load_model

        m = load_model(default_model_dir())
        return m.cfg, m.graphdef, m.state
    cfg = smollm2_135m_config()
    graphdef, abstract = abstract_model(cfg)
    rng = np.random.default_rng(0)

    def draw(s):
        x = np.ones(s.shape) if len(s.shape) == 1 else 0.02 * rng.standard_normal(s.shape)
        return jax.numpy.asarray(x.astype(np.float32))

    return cfg, graphdef, jax.tree.map(draw, abstract)


def make_batch(vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (N_ROWS, SEQ), dtype=np.int32)
    # One advantage per sequence, as RLOO/GRPO would give; every token counts.
    adv = np.repeat(rng.standard_normal(N_ROWS)[:, None], SEQ - 1, 1)
    return tokens, adv.astype(np.float32)


def jax_side(cfg, graphdef, state, tokens, adv, args):
    """(step_fn returning a blocking callable, first loss)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from rlvr_jax import logprobs, update

    if args.no_train_options:
        update.CPU_TRAIN_OPTIONS = {}
    big_l = SEQ - 1
    attn = jnp.ones((N_ROWS, SEQ), bool)
    mask = jnp.ones((N_ROWS, big_l), bool)
    chunk = args.logit_chunk or None
    logp_old = jax.jit(logprobs.token_logprobs, static_argnums=(0, 4, 5, 6))(
        graphdef, state, jnp.asarray(tokens), attn, big_l, 1.0, chunk
    )
    batch = update.Batch(jnp.asarray(tokens), attn, mask, jnp.asarray(adv), logp_old)
    ocfg = ml_collections.ConfigDict(
        dict(
            lr=1e-6,
            warmup_frac=0.0,
            min_lr_ratio=0.1,
            b1=0.9,
            b2=0.95,
            weight_decay=0.0,
            grad_clip=1.0,
        )
    )
    opt = update.make_optimizer(ocfg, total_steps=1000)
    keep = update.trainable_filter(cfg.num_layers)
    st = update.init_train_state(state, opt, keep, jax.random.key(0))
    scfg = update.StepConfig(
        micro_batch=N_ROWS, logit_chunk=chunk, with_entropy=not args.no_entropy
    )
    step = update.make_train_step(graphdef, opt, scfg, keep)
    holder = {"state": st}

    def run():
        holder["state"], met = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], met))
        return float(met["loss"])

    return run, np.asarray(logp_old)


def torch_side(cfg, state, tokens, adv, logp_old, threads: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvr_jax.models.hf_io import state_to_tensors

    torch.set_num_threads(threads)
    hf = cfg.to_hf_dict()
    model = LlamaForCausalLM(LlamaConfig(**hf)).float()
    sd = {k: torch.from_numpy(v.copy()) for k, v in state_to_tensors(cfg, state, "float32")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"error: torch weights do not match: {missing} {unexpected}")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0)
    ids = torch.from_numpy(tokens).long()
    a = torch.from_numpy(adv)
    old = torch.from_numpy(logp_old)

    def run():
        logits = model(input_ids=ids).logits[:, :-1].float()
        tgt = ids[:, 1:, None]
        logp = torch.gather(logits, -1, tgt)[..., 0] - torch.logsumexp(logits, -1)
        ratio = torch.exp(logp - old)
        loss = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Free the gradients now rather than at the next step's start, as the JAX side frees its
        # buffers when its step returns: between runs neither side holds step memory that could
        # split the shared heap under the other's next allocation.
        opt.zero_grad(set_to_none=True)
        return loss.item(), (logp.detach() - old).abs().max().item()

    return run


def summarise(name: str, runs: list[tuple[float, float]], contended: float) -> float:
    clean = [t for t, c in runs if c <= contended]
    pick = clean if len(clean) >= 3 else [t for t, _ in runs]
    med = statistics.median(pick)
    which = "uncontended runs" if pick is clean else "all runs (too few uncontended)"
    print(
        f"{name}: median {med:.2f} s over {len(pick)} {which}; min {min(t for t, _ in runs):.2f} s"
    )
    return med


def main() -> int:
    args = parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    from rlvr_jax import host_memory

    kept = False if args.system_malloc else host_memory.keep_freed_memory()
    import jax
    from contention import CONTENDED

    from rlvr_jax.cpu_meter import CpuMeter

    cfg, graphdef, state = load_policy(args.random)
    n_params = sum(x.size for x in jax.tree.leaves(state))
    tokens, adv = make_batch(cfg.vocab_size)
    # 6 * params * tokens: forward 2, backward 4 FLOPs per parameter per token. With the tied
    # embedding counted once (it is the head's matmul); attention scores are not counted.
    flops = 6 * n_params * N_ROWS * SEQ
    print(
        f"model: {'random' if args.random else 'default'} SmolLM2-135M, {n_params / 1e6:.1f}M "
        f"params, batch {N_ROWS} x {SEQ}; {os.cpu_count()} CPUs; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jax {jax.__version__}; "
        f"malloc: {'keep_freed_memory' if kept else 'system'}"
    )

    jax_run, logp_old = jax_side(cfg, graphdef, state, tokens, adv, args)
    torch_run = None
    if not args.skip_torch:
        import torch

        # Built before the first JAX step: that step donates (deletes) the initial weights.
        torch_run = torch_side(cfg, state, tokens, adv, logp_old, args.threads)
    t0 = time.perf_counter()
    loss_jax = jax_run()  # compiles
    print(f"jax: compile + first step {time.perf_counter() - t0:.1f} s, loss {loss_jax:.6f}")
    if torch_run is not None:
        loss_torch, logp_diff = torch_run()
        print(
            f"torch {torch.__version__} ({args.threads} threads): first step loss "
            f"{loss_torch:.6f} (|diff| {abs(loss_torch - loss_jax):.2e}); "
            f"max |logp torch - logp jax| {logp_diff:.2e}"
        )

    # Untimed rounds until the shared heap has settled: at least --warmup, then until a round in
    # which neither side took fresh pages from the system (a step whose buffers no longer fit in
    # the freed memory the other side left grows the heap, and pays 1-3 s of kernel time for it;
    # a training run pays that only in its first steps).
    faults = []
    for r in range(args.max_warmup):
        with CpuMeter() as m:
            for fn in (jax_run, torch_run):
                if fn is not None:
                    fn()
        faults.append(m.faults)
        if r + 1 >= args.warmup and m.faults == 0:
            break
    print(f"warmup: {len(faults)} rounds, page faults per round {faults}")
    res: dict[str, list[tuple[float, float]]] = {"jax": [], "torch": []}
    # CPU seconds this process used per run: less sensitive to other processes than wall time.
    cpu: dict[str, list[float]] = {"jax": [], "torch": []}
    for i in range(args.runs):
        for name, fn in (("jax", jax_run), ("torch", torch_run)):
            if fn is None:
                continue
            with CpuMeter() as m:
                fn()
            res[name].append((m.wall, m.other_share))
            cpu[name].append(m.own)
            flag = " CONTENDED" if m.other_share > CONTENDED else ""
            print(
                f"run {i} {name:5s} {m.wall:7.2f} s  {flops / m.wall / 1e9:6.1f} GFLOP/s  "
                f"own CPU {m.own:6.1f} s  page faults {m.faults:7d}  "
                f"other processes {100 * m.other_share:3.0f}% of CPU"
                f"{flag}",
                flush=True,
            )

    t_jax = summarise("jax", res["jax"], CONTENDED)
    print(f"jax achieved: {flops / t_jax / 1e9:.1f} GFLOP/s (6*params*tokens rule)")
    if torch_run is None:
        return 0
    t_torch = summarise("torch", res["torch"], CONTENDED)
    print(f"torch achieved: {flops / t_torch / 1e9:.1f} GFLOP/s (6*params*tokens rule)")
    c_jax, c_torch = statistics.median(cpu["jax"]), statistics.median(cpu["torch"])
    print(
        f"median own CPU seconds per step: jax {c_jax:.1f}, torch {c_torch:.1f} "
        f"(ratio {c_torch / c_jax:.2f})"
    )
    print(f"speedup_vs_torch: {t_torch / t_jax:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

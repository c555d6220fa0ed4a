"""Prompt sharing (`optim.share_prompts`) in the update and the reference pass: on vs off.

    python bench/share_prompts.py [--runs 5] [--prompts 4] [--samples 4] [--prompt-len 128]
        [--new-tokens 96] [--micro-batch 8]

The default policy (SmolLM2-135M-Instruct, fp32) and a rollout-shaped batch: B prompts of
different lengths, left-padded to --prompt-len, each repeated G times, then completions of
different lengths right-padded to --new-tokens (the shapes of configs/table1.py's steps). Both
sides are the project's own train step (`update.make_train_step`, micro-batches of
--micro-batch rows, one AdamW step over all B x G rows) and reference pass
(`logprobs.make_ref_logprobs`), with `StepConfig.group` 1 (every row runs its prompt) or G (each
prompt runs once). Both sides run in this one process, alternating, after a compile and a warm-up
call each; other processes' CPU share is recorded per timed call (/proc/stat) and medians prefer
uncontended calls. Last line: `speedup_update: X.XX` (median unshared / median shared seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

from contention import CONTENDED, CpuMeter, robust_median, wait_for_quiet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed calls of each side")
    p.add_argument("--prompts", type=int, default=4, help="B")
    p.add_argument("--samples", type=int, default=4, help="G")
    p.add_argument("--prompt-len", type=int, default=128, help="P, the padded prompt length")
    p.add_argument("--new-tokens", type=int, default=96, help="L, the padded completion length")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--quiet-wait", type=float, default=30.0, help="s to wait for a quiet CPU")
    return p.parse_args()


def rollout_batch(b: int, g: int, p: int, big_l: int, vocab: int, seed: int = 0):
    """(tokens [N,P+L], attn [N,P+L], mask [N,L], advantages [N,L]) with N = B*G rows, a prompt's
    G rows adjacent and identical in their first P tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = b * g
    prompt_lens = rng.integers(p * 2 // 3, p + 1, b)
    pmask = np.arange(p)[None] >= (p - prompt_lens)[:, None]
    prompts = np.where(pmask, rng.integers(0, vocab, (b, p)), 0).astype(np.int32)
    comp_lens = np.minimum(rng.integers(big_l // 3, 2 * big_l, n), big_l)  # many hit the limit
    cmask = np.arange(big_l)[None] < comp_lens[:, None]
    comps = np.where(cmask, rng.integers(0, vocab, (n, big_l)), 0).astype(np.int32)
    tokens = np.concatenate([np.repeat(prompts, g, 0), comps], 1)
    attn = np.concatenate([np.repeat(pmask, g, 0), cmask], 1)
    adv = (rng.standard_normal((n, 1)) * cmask).astype(np.float32)
    return tokens, attn, cmask, adv


def main() -> None:
    args = parse_args()
    from rlvr_jax import host_memory

    host_memory.keep_freed_memory()  # as the train command does, before the first computation
    import jax
    import jax.numpy as jnp
    import ml_collections

    from rlvr_jax import logprobs, update
    from rlvr_jax.models.default import default_model_dir
    from rlvr_jax.models.model_dir import load_model

    m = load_model(default_model_dir())
    b, g, big_l = args.prompts, args.samples, args.new_tokens
    tokens, attn, mask, adv = (
        jnp.asarray(x) for x in rollout_batch(b, g, args.prompt_len, big_l, m.cfg.vocab_size)
    )
    ref0 = logprobs.make_ref_logprobs(m.graphdef)
    logp_old = ref0(m.state, tokens, attn, big_l)
    batch = update.Batch(tokens, attn, mask, adv, logp_old, logp_old)
    ocfg = ml_collections.ConfigDict(
        dict(lr=1e-6, warmup_frac=0.0, min_lr_ratio=1.0, b1=0.9, b2=0.95, weight_decay=0.0,
             grad_clip=1.0)
    )  # fmt: skip
    opt = update.make_optimizer(ocfg, total_steps=1000)
    keep = update.trainable_filter(m.cfg.num_layers)
    sides = {}
    for name, group in (("unshared", 1), ("shared", g)):
        scfg = update.StepConfig(micro_batch=args.micro_batch, kl_coef=0.01, group=group)
        step = update.make_train_step(m.graphdef, opt, scfg, keep)
        state = update.init_train_state(
            jax.tree.map(jnp.copy, m.state), opt, keep, jax.random.key(0)
        )
        ref = logprobs.make_ref_logprobs(m.graphdef, group=group)
        sides[name] = {"step": step, "state": state, "ref": ref, "update": [], "reference": []}
    print(
        f"B {b} x G {g} rows, prompts padded to {args.prompt_len}, completions to {big_l} tokens, "
        f"micro-batches of {args.micro_batch}; jax {jax.__version__}",
        flush=True,
    )

    def call(side: dict, what: str) -> float:
        t0 = time.perf_counter()
        if what == "update":
            side["state"], met = side["step"](side["state"], batch)
            jax.block_until_ready((side["state"], met))
        else:
            jax.block_until_ready(side["ref"](m.state, tokens, attn, big_l))
        return time.perf_counter() - t0

    for side in sides.values():  # compile, then one warm call
        for what in ("update", "reference"):
            call(side, what)
            call(side, what)
    got = {(n, w): ([], []) for n in sides for w in ("update", "reference")}
    for r in range(args.runs):
        for name, side in sides.items():
            for what in ("update", "reference"):
                wait_for_quiet(args.quiet_wait)
                with CpuMeter() as meter:
                    secs = call(side, what)
                got[(name, what)][0].append(secs)
                got[(name, what)][1].append(meter.other_share)
                flag = " CONTENDED" if meter.other_share > CONTENDED else ""
                print(f"  run {r} {name:8s} {what:9s} {secs:6.2f} s; others used "
                      f"{meter.other_share:.0%} of the CPU{flag}", flush=True)  # fmt: skip
    med = {k: robust_median(*v)[0] for k, v in got.items()}
    for what in ("update", "reference"):
        un, sh = med[("unshared", what)], med[("shared", what)]
        spread = statistics.pstdev(got[("shared", what)][0])
        print(f"{what}: unshared {un:.2f} s, shared {sh:.2f} s (spread {spread:.2f}), "
              f"ratio {un / sh:.2f}")  # fmt: skip
    print(f"speedup_update: {med[('unshared', 'update')] / med[('shared', 'update')]:.2f}")


if __name__ == "__main__":
    main()

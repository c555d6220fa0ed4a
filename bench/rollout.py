"""rlvr_jax sampling vs transformers `generate` (torch CPU) on SmolLM2-135M-Instruct, fp32.

    python bench/rollout.py [--runs 3] [--batch 8] [--prompt-len 64] [--new-tokens 128]

Both sides run in this one process on the same weights (the default model: rlvr_jax's model
directory, transformers' dequantisation of the same GGUF), the same batch of prompts and lengths,
with stopping disabled on both sides so every row generates exactly --new-tokens tokens. Modes:
greedy and temperature 1. Runs alternate rlvr_jax / transformers so both see the same background
load; the CPU other processes used during each run is recorded (/proc/stat) and contended runs are
left out of the medians when enough clean ones exist. Compilation is excluded (one warm-up each).

Also prints tokens/s and the fraction of this machine's memory-bandwidth floor: a decode step must
read every weight once, so tokens/s <= batch * copy_bandwidth / weight_bytes (bandwidth measured
here with a numpy copy, read + write bytes).
Last line: `speedup_vs_transformers: X.XX` (the lower of the greedy and temperature-1 ratios).
"""

from __future__ import annotations

import argparse

from contention import CpuMeter, copy_bandwidth_gbs, robust_median, wait_for_quiet  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per side and mode")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--skip-torch", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import jax
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax import rollout as R
    from rlvr_jax.models.default import default_gguf_path, default_model_dir
    from rlvr_jax.models.model_dir import load_model

    torch.set_num_threads(args.threads)
    m = load_model(default_model_dir())
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(m.state))
    b, p, L = args.batch, args.prompt_len, args.new_tokens
    rng = np.random.default_rng(0)
    # Real text would stop early; random ids of the regular vocabulary keep all rows running.
    ids = rng.integers(100, m.cfg.vocab_size - 100, (b, p)).astype(np.int32)
    mask = np.ones((b, p), bool)
    modes = {"greedy": 0.0, "temperature1": 1.0}

    def run_jax(temp: float, seed: int):
        sc = R.SamplingConfig(max_new_tokens=L, temperature=temp)
        ro = R.generate(m.graphdef, m.state, ids, mask, jax.random.key(seed), sc)
        return np.asarray(ro.tokens)

    hf = None
    if not args.skip_torch:
        gguf = default_gguf_path()
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        ).eval()
        hf.generation_config.eos_token_id = None  # never stop early: exactly L tokens per row

    def run_torch(temp: float, seed: int):
        torch.manual_seed(seed)
        kw = dict(do_sample=False) if temp == 0 else dict(do_sample=True, temperature=temp)
        with torch.no_grad():
            out = hf.generate(
                input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long(),
                max_new_tokens=L,
                min_new_tokens=L,
                top_k=None,
                top_p=None,
                pad_token_id=m.tokenizer.pad_id,
                **kw,
            )
        return out[:, p:].numpy()

    gbs = copy_bandwidth_gbs()
    floor_tps = b * gbs * 1e9 / weight_bytes
    print(f"model: {m.cfg.num_layers} layers, {weight_bytes / 1e6:.0f} MB fp32 weights")
    print(f"batch {b}, prompt {p}, new tokens {L}; copy bandwidth {gbs:.1f} GB/s")
    print(
        f"memory-bandwidth floor: {floor_tps:.0f} tokens/s ({weight_bytes / gbs / 1e6:.1f} ms/step)"
    )

    ratios = {}
    for mode, temp in modes.items():
        run_jax(temp, 0)  # compile
        if hf is not None:
            same = run_torch(temp, 0)
            if temp == 0:
                agree = (run_jax(0.0, 0) == same).all(axis=1).mean()
                print(f"{mode}: rows token-identical to transformers: {agree:.0%}")
        walls = {"jax": [], "torch": []}
        shares = {"jax": [], "torch": []}
        for r in range(args.runs):
            sides = [("jax", run_jax)] + ([("torch", run_torch)] if hf is not None else [])
            for side, fn in sides:
                wait_for_quiet(30.0)
                with CpuMeter() as meter:
                    fn(temp, r + 1)
                walls[side].append(meter.wall)
                shares[side].append(meter.other_share)
                print(
                    f"  {mode} {side:5s} run {r}: {b * L / meter.wall:7.1f} tokens/s "
                    f"({meter.wall:.2f} s, others used {meter.other_share:.0%} of the CPU)",
                    flush=True,
                )
        jw, jn = robust_median(walls["jax"], shares["jax"])
        jtps = b * L / jw
        line = f"{mode}: rlvr_jax {jtps:.1f} tokens/s (median of {jn}), "
        line += f"{jtps / floor_tps:.0%} of the bandwidth floor"
        if hf is not None:
            tw, tn = robust_median(walls["torch"], shares["torch"])
            ratios[mode] = tw / jw
            line += f"; transformers {b * L / tw:.1f} tokens/s (median of {tn}); "
            line += f"ratio {ratios[mode]:.2f}"
        print(line, flush=True)
    if ratios:
        print(f"speedup_vs_transformers: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()

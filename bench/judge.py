"""rlvr_jax judge scoring vs a transformers forward computing the same P(YES), 64 judge prompts.

    python bench/judge.py [--runs 3] [--rows 64] [--batch-size 16]

Judge: the default model (SmolLM2-135M-Instruct, fp32) with the paper's verifier prompt in its
chat template. Rows: questions of data/economics/test.jsonl with a response whose last line gives
the reference or a distractor (alternating). Both sides score the same token ids in the same
micro-batches (rows sorted by length, --batch-size per forward): rlvr_jax pads each batch to a
length bucket and runs `reward.judge_scores` (one jitted prefill, only the last position projected
to the vocabulary); transformers pads each batch to its longest row and runs the model with
`logits_to_keep=1` (also only the last position), then sums the softmax over the same YES / NO
ids. Runs alternate sides; the CPU other processes used is recorded (/proc/stat) and contended
runs are left out of the medians when enough clean ones exist. Compilation is excluded.
Last line: `speedup_vs_transformers: X.XX`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from contention import CpuMeter, robust_median, wait_for_quiet  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per side")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args()


def judge_rows(n: int) -> list[tuple[str, str, str]]:
    """(question, response, reference) rows from the shipped economics test split."""
    rows = []
    with open(ROOT / "data" / "economics" / "test.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            ex = json.loads(line)
            answer = ex["label"] if i % 2 == 0 else ex["distractors"][0]
            response = f"Let me work through this.\nTherefore, the answer is {answer}."
            rows.append((ex["query"][-1]["content"], response, ex["label"]))
    return (rows * (n // len(rows) + 1))[:n]


def main() -> None:
    args = parse_args()
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax.judge import prompts as judge_prompts
    from rlvr_jax.judge import scoring
    from rlvr_jax.models.default import default_gguf_path, default_model_dir
    from rlvr_jax.models.model_dir import load_model

    torch.set_num_threads(args.threads)
    m = load_model(default_model_dir())
    cfg = judge_prompts.JudgeConfig(batch_size=args.batch_size)
    judge = scoring.Judge(m.graphdef, m.state, m.tokenizer, cfg)
    prompts = judge.prompts(*zip(*judge_rows(args.rows), strict=True))
    lengths = [len(p.ids) for p in prompts]
    print(f"{len(prompts)} judge prompts, {min(lengths)}-{max(lengths)} tokens "
          f"(mean {np.mean(lengths):.0f}), batches of {args.batch_size}")  # fmt: skip
    yes, no = np.asarray(judge.yes_ids), np.asarray(judge.no_ids)

    gguf = default_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    pad = m.tokenizer.pad_id

    def run_torch() -> np.ndarray:
        """[N, 2]: P(YES), P(NO) per row."""
        out = np.zeros((len(prompts), 2))
        with torch.no_grad():
            for s in range(0, len(order), args.batch_size):
                idx = order[s : s + args.batch_size]
                t = max(lengths[i] for i in idx)
                ids = torch.full((len(idx), t), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), t), dtype=torch.long)
                for r, i in enumerate(idx):  # left padding, as the judge side
                    ids[r, t - lengths[i] :] = torch.tensor(prompts[i].ids)
                    mask[r, t - lengths[i] :] = 1
                logits = hf(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
                probs = torch.softmax(logits.double(), -1).numpy()
                out[idx] = np.stack([probs[:, yes].sum(-1), probs[:, no].sum(-1)], -1)
        return out

    def run_jax() -> np.ndarray:
        res = judge.score_prompts(prompts)
        return np.stack([res.p_yes, res.p_no], -1)

    ours, ref = run_jax(), run_torch()  # compile / warm up
    print(f"max |P(YES), P(NO) rlvr_jax - transformers| = {np.abs(ours - ref).max():.2e}")
    walls = {"jax": [], "torch": []}
    shares = {"jax": [], "torch": []}
    for r in range(args.runs):
        for side, fn in (("jax", run_jax), ("torch", run_torch)):
            wait_for_quiet(30.0)
            with CpuMeter() as meter:
                fn()
            walls[side].append(meter.wall)
            shares[side].append(meter.other_share)
            print(f"  {side:5s} run {r}: {len(prompts) / meter.wall:6.2f} prompts/s "
                  f"({meter.wall:.2f} s, others used {meter.other_share:.0%} of the CPU)",
                  flush=True)  # fmt: skip
    jw, jn = robust_median(walls["jax"], shares["jax"])
    tw, tn = robust_median(walls["torch"], shares["torch"])
    print(f"rlvr_jax {len(prompts) / jw:.2f} prompts/s (median of {jn}); "
          f"transformers {len(prompts) / tw:.2f} prompts/s (median of {tn})")  # fmt: skip
    print(f"speedup_vs_transformers: {tw / jw:.2f}")


if __name__ == "__main__":
    main()

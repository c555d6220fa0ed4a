"""Score responses with a generative judge (soft and binary rewards) and the rule-based rewards.

    python tools/score.py --judge MODEL_DIR --input IN.jsonl --out OUT.jsonl
        [--template auto|paper|short] [--max-prompt-len N] [--batch-size B] [--math]

Input rows: {"question": str, "reference": str, "response": str} (other keys are kept). The judge
sees the response's last non-empty line in its prompt: by default the prompt settings stored with
the judge (MODEL_DIR/judge.json, written by `rlvr_jax.distill`: the prompts it was trained on),
else the paper's verifier prompt (see rlvr_jax/reward.py).
Output rows add `p_yes`, `p_no`, `verdict` ("YES" if the judge's greedy first token is a YES
spelling, else "NO"), `verdict_token` (that token's text), `soft` (paper Eq. 4), `soft_normalized`
(p_yes / (p_yes + p_no)), `binary`, `rule_binary` (reference occurs in the response),
`rule_jaccard` (word overlap with the last line) and, with --math, `rule_math` (math-verify).
An empty response scores 0. Judge prompts over budget are cut by rlvr_jax.reward's rule; the
counts are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from jsonl_io import RowError, read_rows, text_field, write_rows_atomic  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--judge", required=True, type=Path, help="judge model directory")
    p.add_argument("--input", required=True, type=Path, help="input JSONL")
    p.add_argument("--out", required=True, type=Path, help="output JSONL")
    p.add_argument(
        "--template",
        default="auto",
        help="auto (the judge's stored prompt settings, else paper) | paper | short | a format",
    )
    p.add_argument("--max-prompt-len", type=int, default=None, help="judge prompt token budget")
    p.add_argument("--batch-size", type=int, default=16, help="judge prompts per jitted call")
    p.add_argument("--math", action="store_true", help="also score math equivalence")
    p.add_argument("--mesh", default="-1,1,1", help="device mesh DATA,FSDP,TENSOR (-1: the rest)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except RowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    rows = read_rows(args.input)
    fields = [
        tuple(text_field(row, k, where) for k in ("question", "response", "reference"))
        for where, row in rows
    ]
    if args.batch_size < 1:
        raise RowError("--batch-size must be >= 1")

    import jax
    from tqdm import tqdm

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax import multihost
    from rlvr_jax import reward as W
    from rlvr_jax.builders import load_sharded
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.models.config import ConfigError

    try:
        cfg = W.judge_config_for(
            args.judge,
            args.template,
            max_prompt_len=args.max_prompt_len,
            batch_size=args.batch_size,
        )
    except ValueError as e:
        raise RowError(f"judge options: {e}") from None
    # A multi-process job (the JAX_* variables, as rlvr_jax.launch or a cluster sets them):
    # every process computes the same rows; process 0 writes the output file.
    multihost.join()
    try:
        mesh = mesh_lib.make_mesh(args.mesh)
    except mesh_lib.MeshError as e:
        raise RowError(str(e)) from None
    rows_sharding = None
    if args.batch_size % mesh_lib.batch_size_multiple(mesh) == 0:
        rows_sharding = mesh_lib.batch_sharding(mesh, (args.batch_size,))
    try:
        m = load_sharded(args.judge, mesh)
        judge = W.Judge(m.graphdef, m.state, m.tokenizer, cfg, rows_sharding)
    except (ConfigError, CheckpointError, OSError) as e:
        raise RowError(f"--judge: {e}") from None
    except ValueError as e:  # no single-token YES/NO spelling in the judge's vocabulary
        raise RowError(f"--judge {args.judge}: {e}") from None
    prompts = []
    for (where, _), (q, r, a) in zip(rows, fields, strict=True):
        try:
            prompts.append(W.build_judge_prompt(m.tokenizer, q, r, a, cfg))
        except (KeyError, IndexError, ValueError) as e:  # a custom template with bad fields
            raise RowError(f"{where}: --template does not format: {e!r}") from None
    with (
        jax.set_mesh(mesh),
        tqdm(
            total=len(prompts),
            desc="judging",
            unit="row",
            file=sys.stderr,
            disable=not multihost.is_main(),
        ) as bar,
    ):
        res = judge.score_prompts(prompts, progress=bar.update)

    def out_rows():
        for i, ((_, row), (_, response, reference)) in enumerate(zip(rows, fields, strict=True)):
            out = {
                **row,
                "p_yes": float(res.p_yes[i]),
                "p_no": float(res.p_no[i]),
                "verdict": "YES" if res.verdict[i] == 1 else "NO",
                "verdict_token": m.tokenizer.decode([int(res.greedy[i])]),
                "soft": float(res.soft[i]),
                "soft_normalized": float(res.soft_normalized[i]),
                "binary": int(res.binary[i]),
                "rule_binary": int(W.rule_binary(response, reference)),
                "rule_jaccard": W.rule_jaccard(response, reference),
            }
            if args.math:
                out["rule_math"] = int(W.math_equivalent(response, reference))
            yield out

    if not multihost.is_main():
        return 0
    write_rows_atomic(args.out, out_rows())
    cuts = (res.cut_question, res.cut_response, res.cut_hard)
    if any(cuts):
        print(
            f"note: judge prompts over {args.max_prompt_len} tokens: {cuts[0]} questions cut, "
            f"{cuts[1]} response lines cut, {cuts[2]} cut to the prompt's tail",
            file=sys.stderr,
        )
    print(f"wrote {len(rows)} rows to {args.out} ({int(res.empty.sum())} empty responses)",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

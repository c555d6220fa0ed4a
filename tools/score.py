"""Score responses with a generative judge (soft and binary rewards) and the rule-based rewards.

    python tools/score.py --judge MODEL_DIR --input IN.jsonl --out OUT.jsonl
        [--template auto|paper|short] [--view auto|committed|last_line] [--max-prompt-len N]
        [--batch-size B] [--math]

Input rows: {"question": str, "reference": str, "response": str} (other keys are kept); an optional
"cut" (true: the token limit stopped the response) or tools/sample.py's "stopped" says whether the
response's last sentence is unfinished. The judge sees what the response commits to (its answer
statements, else its first and last complete sentences; rlvr_jax/answers.py), or with --view
last_line its last non-empty line: by default the prompt settings stored with
the judge (MODEL_DIR/judge.json, written by `rlvr_jax.distill`: the prompts it was trained on),
else the paper's verifier prompt (see rlvr_jax/reward.py).
Output rows add `p_yes`, `p_no`, `verdict` ("YES" or "NO" when the judge's greedy first token is
a YES or NO spelling, "NEITHER" when it is any other token; "NO" when the response commits to
nothing), `verdict_token` (that token's text), `soft` (paper Eq. 4), `soft_normalized`
(p_yes / (p_yes + p_no)), `binary`, `rule_binary` (reference occurs in the response),
`rule_jaccard` (word overlap with the last line), `no_answer` (1: the response commits to
nothing; every judge reward is 0), `judge_view` (what the judge read) and, with --math,
`rule_math` (math-verify). Judge prompts over budget are cut by rlvr_jax.reward's rule; the
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
    p.add_argument(
        "--view",
        default="auto",
        help="what of a response the judge reads: auto (the judge's stored setting) | committed | "
        "last_line",
    )
    p.add_argument("--max-prompt-len", type=int, default=None, help="judge prompt token budget")
    p.add_argument("--batch-size", type=int, default=16, help="judge prompts per jitted call")
    p.add_argument("--math", action="store_true", help="also score math equivalence")
    p.add_argument("--mesh", default="-1,1,1", help="device mesh DATA,FSDP,TENSOR (-1: the rest)")
    return p.parse_args(argv)


def cut_flag(row: dict, where: str) -> bool | None:
    """Whether the token limit stopped the row's response: its "cut" field, else the opposite of
    tools/sample.py's "stopped", else None (unknown)."""
    for key, flip in (("cut", False), ("stopped", True)):
        if key in row:
            if not isinstance(row[key], bool):
                raise RowError(f"{where}: {key}: expected true or false, got {row[key]!r}")
            return row[key] != flip
    return None


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
    from rlvr_jax import reward as W
    from rlvr_jax.builders import load_sharded
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.models.config import ConfigError

    try:
        cfg = W.judge_config_for(
            args.judge,
            args.template,
            max_prompt_len=args.max_prompt_len,
            view=args.view,
            batch_size=args.batch_size,
        )
    except ValueError as e:
        raise RowError(f"judge options: {e}") from None
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
    cuts = [cut_flag(row, where) for where, row in rows]
    prompts = []
    for (where, _), (q, r, a), c in zip(rows, fields, cuts, strict=True):
        try:
            prompts.append(W.build_judge_prompt(m.tokenizer, q, r, a, cfg, c))
        except (KeyError, IndexError, ValueError) as e:  # a custom template with bad fields
            raise RowError(f"{where}: --template does not format: {e!r}") from None
    with (
        jax.set_mesh(mesh),
        tqdm(total=len(prompts), desc="judging", unit="row", file=sys.stderr) as bar,
    ):
        res = judge.score_prompts(prompts, progress=bar.update)

    def out_rows():
        for i, ((_, row), (_, response, reference)) in enumerate(zip(rows, fields, strict=True)):
            view = W.response_view(response, cfg.view, cuts[i])
            out = {
                **row,
                "p_yes": float(res.p_yes[i]),
                "p_no": float(res.p_no[i]),
                "verdict": W.verdict_label(res.verdict[i]),
                "verdict_token": m.tokenizer.decode([int(res.greedy[i])]),
                "soft": float(res.soft[i]),
                "soft_normalized": float(res.soft_normalized[i]),
                "binary": int(res.binary[i]),
                "rule_binary": int(W.rule_binary(response, reference)),
                "rule_jaccard": W.rule_jaccard(response, reference),
                "no_answer": int(res.empty[i]),
                "judge_view": view,
            }
            if args.math:
                out["rule_math"] = int(W.math_equivalent(response, reference))
            yield out

    write_rows_atomic(args.out, out_rows())
    cuts = (res.cut_question, res.cut_response, res.cut_hard)
    if any(cuts):
        print(
            f"note: judge prompts over {args.max_prompt_len} tokens: {cuts[0]} questions cut, "
            f"{cuts[1]} response lines cut, {cuts[2]} cut to the prompt's tail",
            file=sys.stderr,
        )
    print(f"wrote {len(rows)} rows to {args.out} ({int(res.empty.sum())} with no answer, "
          f"verdict NEITHER on {100 * W.neither_rate(res.verdict):.1f}%)",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

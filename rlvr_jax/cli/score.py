"""Score responses with a generative judge (soft and binary rewards), the policy's likelihood of
the reference (no judge) and the rule-based rewards.

    python tools/score.py [--judge MODEL_DIR] [--policy MODEL_DIR|default] --input IN.jsonl
        --out OUT.jsonl [--template auto|paper|short] [--view auto|committed|last_line]
        [--max-prompt-len N] [--batch-size B] [--math]

At least one of --judge and --policy. Input rows: {"question": str, "reference": str,
"response": str} (other keys are kept); an optional "cut" (true: the token limit stopped the
response) or tools/sample.py's "stopped" says whether the response's last sentence is unfinished.
The judge sees what the response commits to (its answer statements, else its first and last
complete sentences; rlvr_jax/judge/answers.py), or with --view last_line its last non-empty line, in
the prompt settings stored with the judge by default (MODEL_DIR/judge.json, written by
`rlvr_jax.distill`: the prompts it was trained on), else the paper's verifier prompt (see
rlvr_jax/judge/prompts.py). Output rows add, with --judge: `p_yes`, `p_no`, `verdict` ("YES" or "NO"
when the judge's greedy first token is a YES or NO spelling, "NEITHER" for any other token; "NO"
when the response commits to nothing), `verdict_token` (that token's text), `soft` (paper Eq. 4),
`soft_normalized` (p_yes / (p_yes + p_no)), `binary`, `no_answer` (1: the response commits to
nothing; every judge reward is 0), `judge_view` (what the judge read); with --policy (the
policy prompted with the paper's system prompt and the question): `likelihood` (mean log-prob of
the reference after the response's reasoning) and `rlpr` (RLPR's debiased mean probability), see
rlvr_jax/judge/likelihood.py; always `rule_binary` (reference occurs in the response),
`rule_jaccard` (word overlap with the last line) and, with --math, `rule_math` (math-verify). Judge
prompts over budget are cut by rlvr_jax/judge/prompts.py's rule; the counts are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlvr_jax import atomic
from rlvr_jax.jsonl import RowError, read_rows, text_field


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--judge", type=Path, help="judge model directory")
    p.add_argument(
        "--policy",
        help="policy model directory, or default (the embedded model): adds likelihood and rlpr",
    )
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
    p.add_argument("--batch-size", type=int, default=16, help="rows per jitted call")
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
    if args.judge is None and args.policy is None:
        raise RowError("give --judge, --policy or both")

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax import multihost

    # A multi-process job (the JAX_* variables, as rlvr_jax.launch or a cluster sets them):
    # every process computes the same rows; process 0 writes the output file.
    multihost.join()
    try:
        mesh = mesh_lib.make_mesh(args.mesh)
    except mesh_lib.MeshError as e:
        raise RowError(str(e)) from None
    cols: dict[str, list] = {}
    if args.judge is not None:
        cols.update(judge_columns(args, mesh, fields, rows))
    if args.policy is not None:
        cols.update(likelihood_columns(args, mesh, fields))

    from rlvr_jax.judge import rules

    def out_rows():
        for i, ((_, row), (_, response, reference)) in enumerate(zip(rows, fields, strict=True)):
            out = {**row, **{k: v[i] for k, v in cols.items()}}
            out["rule_binary"] = int(rules.rule_binary(response, reference))
            out["rule_jaccard"] = rules.rule_jaccard(response, reference)
            if args.math:
                out["rule_math"] = int(rules.math_equivalent(response, reference))
            yield out

    if not multihost.is_main():
        return 0
    atomic.write_jsonl(args.out, out_rows())
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


def judge_columns(args, mesh, fields, rows) -> dict[str, list]:
    """The judge's columns for every row (see the module docstring)."""
    import jax
    from tqdm import tqdm

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax import multihost
    from rlvr_jax.builders import load_sharded
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.judge import prompts as judge_prompts
    from rlvr_jax.judge import scoring
    from rlvr_jax.models.config import ConfigError

    try:
        cfg = judge_prompts.judge_config_for(
            args.judge,
            args.template,
            max_prompt_len=args.max_prompt_len,
            batch_size=args.batch_size,
            view=args.view,
        )
    except ValueError as e:
        raise RowError(f"judge options: {e}") from None
    rows_sharding = mesh_lib.rows_sharding(mesh, (args.batch_size,))
    try:
        m = load_sharded(args.judge, mesh)
        judge = scoring.Judge(m.graphdef, m.state, m.tokenizer, cfg, rows_sharding)
    except (ConfigError, CheckpointError, OSError) as e:
        raise RowError(f"--judge: {e}") from None
    except ValueError as e:  # no single-token YES/NO spelling in the judge's vocabulary
        raise RowError(f"--judge {args.judge}: {e}") from None
    cuts = [cut_flag(row, where) for where, row in rows]
    prompts = []
    for (where, _), (q, r, a), c in zip(rows, fields, cuts, strict=True):
        try:
            prompts.append(judge_prompts.build_judge_prompt(m.tokenizer, q, r, a, cfg, c))
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
    over = (res.cut_question, res.cut_response, res.cut_hard)
    if any(over):
        print(
            f"note: judge prompts over {args.max_prompt_len} tokens: {over[0]} questions cut, "
            f"{over[1]} response lines cut, {over[2]} cut to the prompt's tail",
            file=sys.stderr,
        )
    print(f"note: {int(res.empty.sum())} responses commit to no answer (judge scores 0); verdict "
          f"NEITHER on {100 * scoring.neither_rate(res.verdict):.1f}%",
          file=sys.stderr)  # fmt: skip
    return {
        "p_yes": [float(x) for x in res.p_yes],
        "p_no": [float(x) for x in res.p_no],
        "verdict": [scoring.verdict_label(v) for v in res.verdict],
        "verdict_token": [m.tokenizer.decode([int(g)]) for g in res.greedy],
        "soft": [float(x) for x in res.soft],
        "soft_normalized": [float(x) for x in res.soft_normalized],
        "binary": [int(x) for x in res.binary],
        "no_answer": [int(x) for x in res.empty],
        "judge_view": [
            judge_prompts.response_view(f[1], cfg.view, c)
            for f, c in zip(fields, cuts, strict=True)
        ],
    }


def likelihood_columns(args, mesh, fields) -> dict[str, list]:
    """`likelihood` and `rlpr` for every row, under the --policy model."""
    import jax

    from rlvr_jax.builders import load_sharded
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.data import DEFAULT_SYSTEM_PROMPT
    from rlvr_jax.judge.likelihood import LikelihoodScorer, score_questions
    from rlvr_jax.models.config import ConfigError
    from rlvr_jax.models.default import DefaultModelError, resolve_model_dir

    try:
        m = load_sharded(resolve_model_dir(args.policy), mesh)
    except (ConfigError, CheckpointError, DefaultModelError, OSError) as e:
        raise RowError(f"--policy: {e}") from None
    scorer = LikelihoodScorer(m.graphdef, m.tokenizer, args.batch_size, mesh)
    q, resp, ref = (list(x) for x in zip(*fields, strict=True))
    with jax.set_mesh(mesh):
        got = score_questions(scorer, m.state, q, resp, ref, DEFAULT_SYSTEM_PROMPT)
    return {k: [float(x) for x in v] for k, v in got.items()}


if __name__ == "__main__":
    sys.exit(main())

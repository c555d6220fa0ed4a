"""On-policy labelled answers: the policy's own responses with a teacher's verdict, and the quality
of any reward measured on them.

A judge's figures on short, clean candidates (a reference's rephrasing against a distractor) say
little about how it scores what RL feeds it: rambling answers, cut off at the token limit, that
state their answer in prose or not at all. `data/onpolicy/answers.jsonl` holds such answers with
labels by the paper's rule (data/README.md, "onpolicy"), split by question into "train" (judge
distillation may use them) and "heldout" (only measured on). Every judge report gives its figures
on the held-out answers beside the rule rewards':

    python -m rlvr_jax.onpolicy --judge MODEL_DIR [--policy default] [--split heldout]
        [--input F] [--source RUN] [--out F]

prints ROC AUC (of the soft score), YES precision and recall, and Cohen's kappa with the labels,
for the judge, the rule rewards, the likelihood rewards of `--policy` (AUC only: they give no
verdict) and the share of answers that commit to nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax import atomic, jsonl, shipped
from rlvr_jax.judge import agreement

DEFAULT_FILE = "data/onpolicy/answers.jsonl"
SPLITS = ("train", "heldout")
_FIELDS = {"id": str, "question": str, "reference": str, "response": str, "subject": str}
# Targets of a judge used as a reward or an evaluator, on held-out on-policy answers.
TARGETS = {"auc": 0.90, "auc_over_best_rule": 0.10, "precision": 0.80}


class OnPolicyError(ValueError):
    """A bad on-policy file or row (the message names the file and line)."""


def default_path() -> Path:
    """The shipped file (`shipped.find`: the working directory, else the checkout)."""
    return shipped.find(DEFAULT_FILE)


def load(path: str | Path | None = None, split: str | None = None) -> list[dict]:
    """The labelled answers of `path` (default: the shipped file), of one split or all.

    Each row: id, question, reference, response, subject, correct (0/1), cut (bool), split.
    """
    path = Path(path) if path else default_path()
    if split is not None and split not in SPLITS:
        raise OnPolicyError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    try:
        read = jsonl.read_rows(path, allow_empty=True)
    except jsonl.RowError as e:
        raise OnPolicyError(str(e)) from None
    rows = []
    for where, r in read:
        for k, t in _FIELDS.items():
            if not isinstance(r.get(k), t):
                raise OnPolicyError(f"{where}: {k}: expected a {t.__name__}, got {r.get(k)!r:.40}")
        if r.get("correct") not in (0, 1):
            raise OnPolicyError(f"{where}: correct: expected 0 or 1, got {r.get('correct')!r}")
        if not isinstance(r.get("cut"), bool):
            raise OnPolicyError(f"{where}: cut: expected true or false, got {r.get('cut')!r}")
        if r.get("split") not in SPLITS:
            raise OnPolicyError(f"{where}: split: expected one of {SPLITS}, got {r.get('split')!r}")
        if split is None or r["split"] == split:
            rows.append(r)
    return rows


def reward_quality(
    labels: Sequence[int], soft: Sequence[float], binary: Sequence[int] | None = None
) -> dict[str, Any]:
    """One reward's quality against labels [n]: auc of `soft`; with `binary` (its YES verdicts),
    precision and recall of YES and kappa; n and n_correct; for a score in [0, 1], the share of
    its total that right answers get (reward_to_correct)."""
    q = agreement.judge_quality(labels, soft if binary is None else binary, soft)
    out = {"n": q["n"], "n_correct": q["n_yes"], "auc": q["auc"]}
    x, y = np.asarray(soft, np.float64), np.asarray(labels) == 1
    if len(x) and x.min() >= 0.0 and x.max() <= 1.0 and x.sum() > 0:
        # The share of the reward that goes to right answers: what RL optimises, where a judge
        # that ranks well can still pay mostly for wrong answers when they are most of the rows.
        out["reward_to_correct"] = float(x[y].sum() / x.sum())
    if binary is not None:
        out |= {
            "precision": q["precision"],
            "recall": q["tpr"],
            "kappa": q["kappa"],
            "yes": int(np.sum(binary)),
        }
    return out


def quality_table(
    rows: Sequence[Mapping], columns: Mapping[str, Mapping[str, Sequence]]
) -> dict[str, dict]:
    """{name: reward_quality} for each column {name: {"soft": [n], "binary": [n] (optional)}}
    over labelled rows; plus "best_rule_auc" and, per judge column, its margin over it."""
    labels = [int(r["correct"]) for r in rows]
    out: dict[str, Any] = {
        name: reward_quality(labels, c["soft"], c.get("binary")) for name, c in columns.items()
    }
    rule_aucs = [v["auc"] for k, v in out.items() if k.startswith("rule_")]
    best = max((a for a in rule_aucs if not math.isnan(a)), default=math.nan)
    out["best_rule_auc"] = best
    return out


def meets_targets(q: Mapping[str, Any], best_rule_auc: float) -> dict[str, bool]:
    """Which of TARGETS a judge column's figures meet."""
    return {
        "auc": q["auc"] >= TARGETS["auc"],
        "auc_over_best_rule": q["auc"] >= best_rule_auc + TARGETS["auc_over_best_rule"],
        "precision": q.get("precision", math.nan) >= TARGETS["precision"],
    }


def markdown(table: Mapping[str, Any]) -> str:
    """The quality table as Markdown, one row per reward."""

    def f(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    lines = [
        "| reward | n | correct | ROC AUC | YES | YES precision | YES recall | kappa "
        "| reward to correct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in table.items():
        if not isinstance(q, Mapping) or "n" not in q:  # the summary entries (best rule, targets)
            continue
        lines.append(
            f"| {name} | {q['n']} | {q['n_correct']} | {f(q['auc'])} | {q.get('yes', '-')} | "
            f"{f(q.get('precision'))} | {f(q.get('recall'))} | {f(q.get('kappa'))} | "
            f"{f(q.get('reward_to_correct'))} |"
        )
    return "\n".join(lines) + "\n"


def rule_columns(rows: Sequence[Mapping]) -> dict[str, dict[str, np.ndarray]]:
    """The rule rewards on the rows, as quality_table columns (rule_binary's soft = its verdict)."""
    from rlvr_jax.judge.rules import rule_binary, rule_jaccard

    rb = np.array([rule_binary(r["response"], r["reference"]) for r in rows], np.float32)
    rj = np.array([rule_jaccard(r["response"], r["reference"]) for r in rows], np.float32)
    return {"rule_binary": {"soft": rb, "binary": rb.astype(int)}, "rule_jaccard": {"soft": rj}}


def judge_columns(
    judge_dir: str | Path, rows: Sequence[Mapping], view: str = "auto", name: str = "judge"
) -> dict[str, dict[str, np.ndarray]]:
    """The judge in `judge_dir` on the rows (its stored prompt settings; `view` overrides what of
    a response it reads), as quality_table columns `name` and `name`_gated (its soft reward and
    verdict where the response names a content word of the reference), on the default CPU
    device."""
    from rlvr_jax.judge import prompts as judge_prompts
    from rlvr_jax.judge import scoring
    from rlvr_jax.models.model_dir import load_model

    m = load_model(judge_dir)
    jcfg = judge_prompts.judge_config_for(judge_dir, "auto", view=view)
    judge = scoring.Judge(m.graphdef, m.state, m.tokenizer, jcfg)
    res = judge.score(
        [r["question"] for r in rows],
        [r["response"] for r in rows],
        [r["reference"] for r in rows],
        cut=[r["cut"] for r in rows],
    )
    return verdict_columns(name, res.soft, res.binary, rows)


def verdict_columns(
    name: str, soft: Sequence[float], binary: Sequence[int], rows: Sequence[Mapping]
) -> dict[str, dict[str, np.ndarray]]:
    """A judge's soft scores and verdicts [n] on the rows as quality_table columns: `name`, and
    `name`_gated, the soft_gated reward (judge/runner.py) as RL would be paid it, with the verdict
    gated alike."""
    from rlvr_jax.judge.rules import content_gate

    gate = content_gate([r["response"] for r in rows], [r["reference"] for r in rows])
    soft, binary = np.asarray(soft), np.asarray(binary).astype(int)
    return {
        name: {"soft": soft, "binary": binary},
        f"{name}_gated": {"soft": soft * gate, "binary": binary * gate.astype(int)},
    }


def likelihood_columns(
    policy: str, rows: Sequence[Mapping], batch_size: int = 8
) -> dict[str, dict[str, np.ndarray]]:
    """The likelihood rewards (judge/likelihood.py) of `policy` (a model directory or
    "default") on the rows, asked as the training runs ask (the paper's system prompt), as
    quality_table columns (soft scores only: they give no verdict)."""
    import jax

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax.builders import load_sharded
    from rlvr_jax.data import DEFAULT_SYSTEM_PROMPT
    from rlvr_jax.judge.likelihood import LikelihoodScorer, score_questions
    from rlvr_jax.models.default import resolve_model_dir

    mesh = mesh_lib.make_mesh()
    m = load_sharded(resolve_model_dir(policy), mesh)
    scorer = LikelihoodScorer(m.graphdef, m.tokenizer, batch_size, mesh)
    cols = [[str(r[k]) for r in rows] for k in ("question", "response", "reference")]
    with jax.set_mesh(mesh):
        got = score_questions(scorer, m.state, *cols, DEFAULT_SYSTEM_PROMPT)
    return {name: {"soft": got[name]} for name in ("likelihood", "rlpr")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--judge", action="append", default=[], help="judge model directory (repeat)")
    p.add_argument("--view", default="auto", help="auto | committed | last_line")
    p.add_argument(
        "--policy", default=None, help="also the likelihood rewards of this policy (or default)"
    )
    p.add_argument("--input", default=None, help=f"labelled answers (default {DEFAULT_FILE})")
    p.add_argument("--split", default="heldout", help="heldout | train | all")
    p.add_argument(
        "--source",
        default=None,
        help="only the answers whose `policy` field starts with this (a run, or a cell's runs)",
    )
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    from rlvr_jax.judge.answers import answer_view

    try:
        rows = load(args.input, None if args.split == "all" else args.split)
    except OnPolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.source is not None:
        rows = [r for r in rows if str(r.get("policy", "")).startswith(args.source)]
        if not rows:
            print(f"error: no answers with policy {args.source!r} in the file", file=sys.stderr)
            return 2
    cols = rule_columns(rows)
    no_answer = np.array([not answer_view(r["response"], r["cut"]).committed for r in rows])
    for i, j in enumerate(args.judge):
        cols |= judge_columns(j, rows, args.view, Path(j).name or f"judge{i}")
    if args.policy:
        cols |= likelihood_columns(args.policy, rows)
    table = quality_table(rows, cols)
    table["no_answer_rate"] = float(no_answer.mean()) if len(rows) else math.nan
    of = f", {args.source}" if args.source else ""
    print(
        f"{len(rows)} on-policy answers ({args.split}{of}), "
        f"{sum(r['correct'] for r in rows)} correct"
    )
    print(markdown(table), end="")
    if args.out:
        atomic.write_json(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

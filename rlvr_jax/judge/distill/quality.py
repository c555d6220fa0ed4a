"""The evaluation judge's quality next to the reward judge's and the rule rewards', on labelled
rows of questions that neither judge trained on.

`python -m rlvr_jax.eval_judge` prints the report; `quality_report` writes it to quality.json in
the evaluation judge's directory. Rows: distill.rows.eval_rows of the questions
configs/judge_eval.py holds out (answers labelled by the data, master-key probes labelled NO).
Figures per scorer: distill.evaluation.quality (accuracy and ROC AUC on answers, master-key
false-positive rate, ...); for the rules, AUC of their score on the same answer rows; and Cohen's
kappa between the two judges' verdicts on every row.

Those rows are clean candidates, unlike the answers the judges score in a run, so the report also
gives both judges on the policy's own labelled answers (`onpolicy_comparison`: the held-out split
of each file in ONPOLICY_FILES, questions neither judge trained on), beside the rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax import atomic
from rlvr_jax.judge import agreement, scoring
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge.rules import rule_binary, rule_jaccard


def _judge_scores(model_dir: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    from rlvr_jax.models.model_dir import load_model

    m = load_model(model_dir, dtype="float32")
    judge = scoring.Judge(
        m.graphdef, m.state, m.tokenizer, judge_prompts.judge_config_for(model_dir)
    )
    res = judge.score(
        [r["question"] for r in rows], [r["response"] for r in rows],
        [r["reference"] for r in rows],
    )  # fmt: skip
    return {k: np.asarray(getattr(res, k)) for k in ("p_yes", "p_no", "binary", "soft")}


def compare_scorers(rows: list[dict], scores: dict[str, dict[str, np.ndarray]]) -> dict:
    """Quality of each judge in `scores` ({name: p_yes, p_no, binary, soft [N]}) and of the rule
    rewards on labelled `rows` [N], and Cohen's kappa between the first two judges."""
    from rlvr_jax.judge.distill import evaluation

    out: dict[str, Any] = {"n_rows": len(rows)}
    for name, s in scores.items():
        out[name] = evaluation.quality(rows, s)
    labels = np.array([r["label"] == "YES" for r in rows], int)
    ans = np.array([r["kind"] in ("reference", "rephrasing", "distractor") for r in rows])
    for name, fn in (("rule_binary", rule_binary), ("rule_jaccard", rule_jaccard)):
        x = np.array([fn(r["response"], r["reference"]) for r in rows], float)
        q = agreement.judge_quality(labels[ans], (x[ans] > 0.5).astype(int), x[ans])
        out[name] = {"accuracy_answers": q["accuracy"], "auc_answers": q["auc"]}
    names = list(scores)
    if len(names) >= 2:
        a, b = (np.asarray(scores[n]["binary"], int) for n in names[:2])
        out["kappa_between_judges"] = agreement.cohen_kappa(a, b)
    best_rule = max(out[k]["auc_answers"] for k in ("rule_binary", "rule_jaccard"))
    out["auc_margin_over_best_rule"] = {
        n: out[n]["auc_answers"] - best_rule for n in names
    }  # the issue asks >= 0.05 for the evaluation judge
    return out


# The policy's own labelled answers: the default policy's, and the rollouts of RL-trained ones.
ONPOLICY_FILES = ("data/onpolicy/answers.jsonl", "data/onpolicy/rl_answers.jsonl")


def onpolicy_comparison(
    eval_dir: Path, reward_dir: Path, files: tuple[str, ...] = ONPOLICY_FILES
) -> dict[str, dict]:
    """{file name: onpolicy.quality_table} of both judges (plain and gated), the rules, Cohen's
    kappa between the judges' verdicts and which targets the evaluation judge meets, on the
    held-out split of each labelled on-policy file."""
    from rlvr_jax import shipped
    from rlvr_jax.judge import onpolicy

    out = {}
    for f in files:
        rows = onpolicy.load(shipped.find(f), "heldout")
        cols = onpolicy.rule_columns(rows)
        cols |= onpolicy.judge_columns(eval_dir, rows, name="evaluation_judge")
        cols |= onpolicy.judge_columns(reward_dir, rows, name="reward_judge")
        table = onpolicy.quality_table(rows, cols)
        table["kappa_between_judges"] = agreement.cohen_kappa(
            cols["evaluation_judge"]["binary"], cols["reward_judge"]["binary"]
        )
        table["evaluation_judge_targets"] = onpolicy.meets_targets(
            table["evaluation_judge"], table["best_rule_auc"]
        )
        out[Path(f).name] = table
    return out


def quality_report(eval_dir: Path, reward_dir: Path, cfg: Any) -> dict:
    """Score the held-out rows of `cfg` (a configs/judge_eval.py config) with both judges and the
    rules; write eval_dir/quality.json; return the report."""
    from rlvr_jax.judge.distill.rows import eval_rows, load_questions

    _, _, held = load_questions(cfg)
    rows = eval_rows(cfg, held)
    scores = {
        "evaluation_judge": _judge_scores(Path(eval_dir), rows),
        "reward_judge": _judge_scores(Path(reward_dir), rows),
    }
    rep = compare_scorers(rows, scores)
    rep["onpolicy"] = onpolicy_comparison(Path(eval_dir), Path(reward_dir))
    rep.update(eval_judge_dir=str(eval_dir), reward_judge_dir=str(reward_dir), questions=len(held))
    atomic.write_json(Path(eval_dir) / "quality.json", rep)
    return rep


def summary_lines(rep: dict) -> list[str]:
    """One line per scorer: accuracy and AUC on answers, master-key false-positive rate."""
    out = []
    for n in ("evaluation_judge", "reward_judge", "rule_binary", "rule_jaccard"):
        if n not in rep:
            continue
        q = rep[n]
        line = f"{n}: accuracy {q['accuracy_answers']:.3f}, AUC {q['auc_answers']:.3f}"
        if "master_key_fpr" in q:
            line += f", master-key FPR {q['master_key_fpr']:.3f}"
        out.append(line)
    if "kappa_between_judges" in rep:
        out.append(f"Cohen's kappa, evaluation vs reward judge: {rep['kappa_between_judges']:.3f}")
    for name, t in rep.get("onpolicy", {}).items():
        ev = t["evaluation_judge"]
        out.append(f"on-policy {name} (held out; {ev['n']} answers, {ev['n_correct']} right):")
        for n in ("evaluation_judge", "evaluation_judge_gated", "reward_judge",
                  "reward_judge_gated", "rule_binary", "rule_jaccard"):  # fmt: skip
            q, line = t[n], f"  {n}: AUC {t[n]['auc']:.3f}"
            if "precision" in q:
                line += f", {q['yes']} YES, precision {q['precision']:.3f}"
            out.append(line)
        out.append(f"  Cohen's kappa, evaluation vs reward judge: {t['kappa_between_judges']:.3f}")
    return out

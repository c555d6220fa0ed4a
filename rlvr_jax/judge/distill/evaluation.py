"""A judge's quality on held-out labelled rows, with agreement.py's metrics, and the report table.

Rows are examples.heldout_rows (kinds reference / rephrasing / distractor / probe:<name>); scores
are the judge's per-row read-out: p_yes, p_no, greedy first token. The rewards follow
reward.judge_scores: verdict = greedy token (YES spelling, NO spelling or neither), binary = YES,
soft = paper Eq. 4, and an empty response scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rlvr_jax.judge import agreement

# (key, label, target as (comparison, value) or None)
REPORTED = (
    ("accuracy_rd", "accuracy, rephrasing vs distractor", (">=", 0.85)),
    ("auc_rd", "ROC AUC (soft), rephrasing vs distractor", (">=", 0.9)),
    ("accuracy_answers", "accuracy, reference+rephrasing vs distractor", None),
    ("auc_answers", "ROC AUC (soft), reference+rephrasing vs distractor", None),
    ("master_key_fpr", "master-key false-positive rate", ("<=", 0.05)),
    ("kappa", "Cohen's kappa vs teacher labels (all rows)", (">=", 0.7)),
    ("yes_rate_answers", "YES rate on answer rows", None),
    ("verdict_mass", "mean P(YES)+P(NO)", None),
)


def rewards(
    p_yes: np.ndarray,
    p_no: np.ndarray,
    greedy: np.ndarray,
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
    empty: np.ndarray,
) -> dict[str, np.ndarray]:
    """reward.judge_scores' rewards from the read-out [N] (host side, same rules)."""
    is_yes, is_no = np.isin(greedy, yes_ids), np.isin(greedy, no_ids)
    valid = ~np.asarray(empty, bool)
    soft = np.where(is_yes, p_yes, np.where(is_no, 1.0 - p_no, 0.0))
    denom = p_yes + p_no
    norm = np.where(denom > 0, p_yes / np.where(denom > 0, denom, 1.0), 0.0)
    return {
        "p_yes": p_yes,
        "p_no": p_no,
        "verdict": np.where(is_yes, 1, np.where(is_no, 0, -1)),
        "binary": np.where(valid & is_yes, 1, 0),
        "soft": np.where(valid, soft, 0.0),
        "soft_normalized": np.where(valid, norm, 0.0),
    }


def _row_masks(rows: Sequence[Mapping]) -> tuple[np.ndarray, ...]:
    """(labels 1 = YES, kinds, rephrasing-or-distractor, master-key probe) over evaluation rows."""
    labels = np.array([x["label"] == "YES" for x in rows], int)
    kinds = np.array([x["kind"] for x in rows])
    rd = np.isin(kinds, ["rephrasing", "distractor"])
    probe = np.char.startswith(kinds.astype(str), "probe:")
    return labels, kinds, rd, probe


def quality(rows: Sequence[Mapping], r: Mapping[str, np.ndarray]) -> dict:
    """The judge's figures on held-out rows: see REPORTED; plus the per-probe YES rates."""
    labels, kinds, rd, probe = _row_masks(rows)
    binary, soft = np.asarray(r["binary"], int), np.asarray(r["soft"], float)
    ans = np.isin(kinds, ["reference", "rephrasing", "distractor"])
    q_rd = agreement.judge_quality(labels[rd], binary[rd], soft[rd])
    q_ans = agreement.judge_quality(labels[ans], binary[ans], soft[ans])
    out = {
        "n_rows": len(rows),
        "n_rd": int(rd.sum()),
        "n_probes": int(probe.sum()),
        "accuracy_rd": q_rd["accuracy"],
        "auc_rd": q_rd["auc"],
        "accuracy_answers": q_ans["accuracy"],
        "auc_answers": q_ans["auc"],
        "ece_answers": q_ans["calibration"]["ece"],
        "master_key_fpr": float(binary[probe].mean()) if probe.any() else float("nan"),
        "kappa": agreement.cohen_kappa(labels, binary),
        "yes_rate_answers": float(binary[ans].mean()) if ans.any() else float("nan"),
        "verdict_mass": float(np.mean(np.asarray(r["p_yes"]) + np.asarray(r["p_no"]))),
        "probe_yes_rate": {
            k[len("probe:") :]: float(binary[kinds == k].mean()) for k in sorted(set(kinds[probe]))
        },
    }
    return out


def onpolicy_quality(rows: Sequence[Mapping], r: Mapping[str, np.ndarray]) -> dict:
    """The judge, plain and gated (`judge_gated`), beside the rule rewards on labelled on-policy
    answers (onpolicy.quality_table), with which of onpolicy.TARGETS the judge meets."""
    from rlvr_jax.judge import onpolicy

    answers = [{**x, "correct": int(x["label"] == "YES")} for x in rows]
    cols = {
        **onpolicy.verdict_columns("judge", r["soft"], r["binary"], answers),
        **onpolicy.rule_columns(answers),
    }
    table = onpolicy.quality_table(answers, cols)
    table["judge_targets"] = onpolicy.meets_targets(table["judge"], table["best_rule_auc"])
    return table


def choose_yes_bias(
    rows: Sequence[Mapping],
    p_yes: np.ndarray,
    p_no: np.ndarray,
    empty: np.ndarray,
    grid: np.ndarray | None = None,
    max_fpr: float = 0.05,
) -> dict:
    """The judge's calibration, chosen on validation rows (never on test rows): the log-odds
    offset b for the YES spellings that maximises accuracy on rephrasing-vs-distractor rows while
    the master-key false-positive rate stays <= max_fpr; among equals, the b nearest 0.

    A row is judged YES under b when log p_yes + b > log p_no (the greedy verdict when YES and NO
    hold most of the next-token mass, as they do after distillation). Returns {"yes_bias": b,
    "val_accuracy_rd": ..., "val_master_key_fpr": ...} as estimated here.
    """
    grid = np.round(np.arange(-4.0, 4.0001, 0.05), 2) if grid is None else np.asarray(grid)
    labels, _, rd, probe = _row_masks(rows)
    answered = ~np.asarray(empty, bool)
    rd &= answered
    if not rd.any():
        raise ValueError("calibration: no rephrasing or distractor rows among the validation rows")
    tiny = np.finfo(np.float64).tiny
    log_odds = np.log(np.maximum(p_yes, tiny)) - np.log(np.maximum(p_no, tiny))
    best = None
    for b in grid:
        yes = (log_odds + b > 0) & answered
        acc = float(np.mean(yes[rd] == labels[rd].astype(bool)))
        fpr = float(yes[probe].mean()) if probe.any() else 0.0
        key = (fpr <= max_fpr, acc, -abs(float(b)))
        if best is None or key > best[0]:
            best = (key, float(b), acc, fpr)
    _, b, acc, fpr = best
    b += 0.0  # no "-0.0" in the judge's settings
    return {"yes_bias": b, "val_accuracy_rd": acc, "val_master_key_fpr": fpr}


def passes(figures: Mapping) -> dict[str, bool]:
    """Whether each targeted figure meets its target."""
    out = {}
    for key, _, target in REPORTED:
        if target is not None:
            op, v = target
            x = figures[key]
            out[key] = bool(x >= v) if op == ">=" else bool(x <= v)
    return out


def table(columns: Mapping[str, Mapping], title: str) -> object:
    """A rich Table: one row per REPORTED figure, one column per judge, and the target."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("held-out figure")
    for name in columns:
        t.add_column(name, justify="right")
    t.add_column("target", justify="right")
    for key, label, target in REPORTED:
        vals = [f"{float(c[key]):.3f}" for c in columns.values()]
        t.add_row(label, *vals, f"{target[0]} {target[1]}" if target else "")
    return t


def markdown(columns: Mapping[str, Mapping]) -> str:
    """The same table as markdown (written next to results.json)."""
    names = list(columns)
    lines = [
        "| held-out figure | " + " | ".join(names) + " | target |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for key, label, target in REPORTED:
        vals = " | ".join(f"{float(columns[n][key]):.3f}" for n in names)
        tgt = f"{target[0]} {target[1]}" if target else ""
        lines.append(f"| {label} | {vals} | {tgt} |")
    return "\n".join(lines) + "\n"

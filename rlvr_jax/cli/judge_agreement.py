"""Agreement between judges, and each judge's quality on labelled rows.

    python tools/judge_agreement.py A.jsonl B.jsonl [C.jsonl ...] [--json OUT] [--bins 10]
        [--scores likelihood,rlpr,rule_binary,rule_jaccard] [--label-field correct]

Each file holds one judge's judgments on the same rows (tools/score.py's output: question,
reference, response, binary or verdict, soft; optionally label and subject). Prints percent
agreement, Cohen's kappa per pair and Fleiss' kappa for three or more judges, overall and per
subject; with labelled rows (label YES/NO or 1/0, or an on-policy file's correct 0/1) also each
judge's accuracy, TPR (recall of YES), FPR, YES precision, Cohen's kappa with the labels, ROC AUC of
its soft score and a calibration table. One file alone gives its quality only.

--scores: each named score column of each file is compared as a judge of its own (soft = the
column; verdict = the column when it is 0/1, else the column cut at a threshold chosen on the
other half of the questions: `agreement.crossfit_binary`). A file then needs no verdict of its
own. --label-field: the column holding the labels (default `label`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rlvr_jax import atomic
from rlvr_jax.judge import agreement


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(where, row) per non-blank line; AgreementError naming the line on bad JSON."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise agreement.AgreementError(f"{path}: cannot read ({e.strerror})") from None
    rows = []
    for i, line in enumerate(lines):
        if line.strip():
            where = f"{path}:line {i + 1}"
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise agreement.AgreementError(f"{where}: not valid JSON ({e.msg})") from None
    if not rows:
        raise agreement.AgreementError(f"{path}: no rows")
    return rows


def judge_names(paths: list[Path]) -> list[str]:
    """File stems, or whole paths where stems collide; AgreementError for a file given twice
    (it would be one judge compared with itself)."""
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise agreement.AgreementError(f"{p}: given twice (one judge per file)")
        seen.add(p.resolve())
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths, strict=True)]


def _has_verdict(rows: list[tuple[str, dict]]) -> bool:
    return all(r.get("binary") is not None or "verdict" in r for _, r in rows)


def score_judges(
    files: dict[str, list[tuple[str, dict]]], columns: list[str], label_field: str
) -> dict[str, list[tuple[str, dict]]]:
    """Judgments of each score column of each file (see --scores); named by the column, or
    FILE:COLUMN with several files."""
    out = {}
    for name, rows in files.items():
        for col in columns:
            where = next((w for w, r in rows if not isinstance(r.get(col), int | float)), None)
            if where is not None:
                raise agreement.AgreementError(f"{where}: {col}: missing or not a number")
            labels = [agreement.to_binary(r.get(label_field)) for _, r in rows]
            verdicts = agreement.crossfit_binary(
                [r[col] for _, r in rows],
                [-1 if v is None else v for v in labels],
                [r.get("question", "") for _, r in rows],
            )
            judged = [
                (w, {**{k: r[k] for k in ("question", "reference", "response") if k in r},
                     "subject": r.get("subject"), "label": r.get(label_field),
                     "binary": int(b), "soft": float(r[col])})
                for (w, r), b in zip(rows, verdicts, strict=True)
            ]  # fmt: skip
            out[col if len(files) == 1 else f"{name}:{col}"] = judged
    return out


def _f(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def print_report(rep: dict, console: Console) -> None:
    if rep["agreement"]:
        t = Table(title=f"Agreement of {len(rep['judges'])} judges on {rep['n_rows']} rows")
        for c in ("subject", "n", "all agree", "Fleiss κ"):
            t.add_column(c, justify="left" if c == "subject" else "right")
        for g, a in rep["agreement"].items():
            t.add_row(g, str(a["n"]), _f(a["percent_agreement"], True), _f(a.get("fleiss_kappa")))
        console.print(t)
        t = Table(title="Pairwise agreement")
        for c in ("subject", "judge A", "judge B", "agree", "Cohen κ"):
            t.add_column(c, justify="right" if c in ("agree", "Cohen κ") else "left")
        for g, a in rep["agreement"].items():
            for p in a["pairs"]:
                t.add_row(g, p["a"], p["b"], _f(p["percent_agreement"], True), _f(p["cohen_kappa"]))
        console.print(t)
    quality = rep.get("quality", {})
    if len(quality) >= 2:
        t = Table(title="Quality on labelled rows, all subjects")
        for c in ("judge", "n", "correct", "accuracy", "TPR", "FPR", "AUC (soft)"):
            t.add_column(c, justify="left" if c == "judge" else "right")
        for judge, q in quality.items():
            m = q["all"]
            t.add_row(judge, str(m["n"]), str(m["n_yes"]), _f(m["accuracy"], True),
                      _f(m["tpr"], True), _f(m["fpr"], True), _f(m.get("auc")))  # fmt: skip
        console.print(t)
    for judge, q in quality.items():
        t = Table(title=f"{judge}: quality on labelled rows")
        cols = ("subject", "n", "correct", "accuracy", "TPR", "FPR", "precision", "κ", "AUC (soft)")
        for c in (*cols, "ECE"):
            t.add_column(c, justify="left" if c == "subject" else "right")
        for g, m in q.items():
            cal = m.get("calibration")
            t.add_row(
                g,
                str(m["n"]),
                str(m["n_yes"]),
                _f(m["accuracy"], True),
                _f(m["tpr"], True),
                _f(m["fpr"], True),
                _f(m["precision"], True),
                _f(m["kappa"]),
                _f(m.get("auc")),
                _f(cal["ece"]) if cal else "n/a",
            )
        console.print(t)
        cal = q["all"].get("calibration")
        if cal:
            t = Table(title=f"{judge}: calibration of the soft score")
            for c in ("bin", "count", "mean soft", "fraction correct"):
                t.add_column(c, justify="right")
            for b in cal["bins"]:
                t.add_row(
                    f"[{b['lo']:.1f}, {b['hi']:.1f}]",
                    str(b["count"]),
                    _f(b["mean_soft"]),
                    _f(b["frac_yes"]),
                )
            console.print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="judgment JSONL files, one per judge")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    ap.add_argument("--scores", default="", help="score columns compared as judges (comma list)")
    ap.add_argument("--label-field", default="label", help="the labels' column (default label)")
    args = ap.parse_args(argv)
    try:
        names = judge_names(args.files)
        files = {n: read_jsonl(p) for n, p in zip(names, args.files, strict=True)}
        if args.label_field != "label":
            files = {n: [(w, {**r, "label": r.get(args.label_field)}) for w, r in rows]
                     for n, rows in files.items()}  # fmt: skip
        judges = {n: rows for n, rows in files.items() if not args.scores or _has_verdict(rows)}
        columns = [c.strip() for c in args.scores.split(",") if c.strip()]
        judges.update(score_judges(files, columns, "label"))
        al = agreement.align(judges)
        if len(judges) < 2 and al.labels is None:
            raise agreement.AgreementError("one file without labels: nothing to compare")
        rep = agreement.report(al, n_bins=args.bins)
    except agreement.AgreementError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(rep, Console())
    if args.json:
        atomic.write_text(args.json, json.dumps(agreement.to_json(rep), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Judge agreement and judge quality metrics (host-side numpy; scikit-learn and statsmodels do the
statistics).

- Agreement between judges on the same rows: percent agreement, Cohen's kappa per pair, Fleiss'
  kappa for three or more judges.
- Quality of one judge on labelled rows (label 1 = the response is correct): accuracy, true and
  false positive rates, ROC AUC of the soft score, and a calibration table with its expected
  calibration error.

Judgment rows (tools/score.py's output): question, reference, response, `binary` (1/0) or
`verdict` ("YES"/"NO"/other), optional `soft` in [0, 1], optional `label` and `subject`.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats import inter_rater

_YES = {"yes", "1", "true", "correct"}
_NO = {"no", "0", "false", "incorrect"}


class AgreementError(ValueError):
    """Bad judgment rows, with a one-line message naming file, line and field."""


def to_binary(value: Any) -> int | None:
    """1 for YES-like values ("YES", "yes", 1, True), 0 for NO-like ones, None otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        v = value.strip().lower()
        return 1 if v in _YES else 0 if v in _NO else None
    return None


def judgment_of(row: Mapping, where: str) -> int:
    """The row's binary verdict: `binary` if present, else `verdict` (anything but YES counts as NO,
    as the paper's binary reward does when the judge emits neither token)."""
    if row.get("binary") is not None:
        b = to_binary(row["binary"])
        if b is None:
            raise AgreementError(f"{where}: binary: expected 0/1, got {row['binary']!r}")
        return b
    if "verdict" in row:
        return 1 if to_binary(row["verdict"]) == 1 else 0
    raise AgreementError(f"{where}: binary: missing (need `binary` or `verdict`)")


def _nan_to_none(x: Any) -> Any:
    """JSON-safe copy: NaN (undefined statistic) becomes null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa of two raters' labels [n]; NaN when undefined (chance agreement is 1)."""
    with warnings.catch_warnings():  # undefined is reported as NaN; the warnings add nothing
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(np.asarray(a), np.asarray(b), replace_undefined_by=np.nan))


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' kappa of ratings [n_items, n_raters] (category codes); NaN when undefined."""
    table, _ = inter_rater.aggregate_raters(np.asarray(ratings))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(inter_rater.fleiss_kappa(table, method="fleiss"))


def percent_agreement(ratings: np.ndarray) -> float:
    """Fraction of items [n_items, n_raters] on which all raters give the same label."""
    r = np.asarray(ratings)
    return float(np.mean(np.all(r == r[:, :1], axis=1))) if len(r) else math.nan


def calibration_table(labels: np.ndarray, soft: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability table of soft scores [n] against labels [n] in `n_bins` uniform bins.

    Returns {"bins": [{lo, hi, count, mean_soft, frac_yes}] (non-empty bins), "ece": expected
    calibration error = sum over bins of count/n * |frac_yes - mean_soft|}.
    """
    labels, soft = np.asarray(labels, int), np.asarray(soft, float)
    frac_yes, mean_soft = calibration_curve(labels, soft, n_bins=n_bins, strategy="uniform")
    # Counts with the same bin rule as calibration_curve (which does not return them).
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], soft)
    counts = np.bincount(ids, minlength=n_bins)
    nonempty = np.flatnonzero(counts)
    bins = [
        {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "count": int(counts[i]),
            "mean_soft": float(m),
            "frac_yes": float(f),
        }
        for i, m, f in zip(nonempty, mean_soft, frac_yes, strict=True)
    ]
    ece = float(sum(b["count"] * abs(b["frac_yes"] - b["mean_soft"]) for b in bins) / len(soft))
    return {"bins": bins, "ece": ece}


def judge_quality(
    labels: Sequence[int],
    binary: Sequence[int],
    soft: Sequence[float] | None = None,
    n_bins: int = 10,
) -> dict:
    """A judge's quality on labelled rows: labels, binary verdicts [n] (1 = YES), soft scores [n].

    Returns n, accuracy, tpr (YES rate on correct rows: the recall of YES), fpr (YES rate on
    wrong rows), precision (share of YES verdicts that are right; NaN without any), kappa (Cohen's,
    verdicts vs labels), and with `soft`: auc (NaN with one class only) and calibration (see
    `calibration_table`).
    """
    y, b = np.asarray(labels, int), np.asarray(binary, int)
    out: dict[str, Any] = {
        "n": len(y),
        "n_yes": int(y.sum()),
        "accuracy": float(np.mean(b == y)) if len(y) else math.nan,
        "tpr": float(b[y == 1].mean()) if (y == 1).any() else math.nan,
        "fpr": float(b[y == 0].mean()) if (y == 0).any() else math.nan,
        "precision": float(y[b == 1].mean()) if (b == 1).any() else math.nan,
        "kappa": cohen_kappa(y, b) if len(y) else math.nan,
    }
    if soft is not None:
        s = np.asarray(soft, float)
        out["auc"] = float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else math.nan
        # Scores that are not probabilities (a mean log-prob) have no calibration.
        prob = len(y) and s.min() >= 0.0 and s.max() <= 1.0
        out["calibration"] = calibration_table(y, s, n_bins) if prob else None
    return out


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t of `score >= t` with the highest accuracy on scores/labels [n] (the
    midpoints between distinct scores, and beyond both ends; ties: the lowest t)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1.0]])
    acc = [(np.asarray(s >= t) == y).mean() for t in cands]
    return float(cands[int(np.argmax(acc))])


def crossfit_binary(
    scores: Sequence[float], labels: Sequence[int], groups: Sequence[str], folds: int = 2
) -> np.ndarray:
    """Verdicts [n] (0/1) from a continuous score: each fold's rows are cut at the threshold that
    is most accurate on the other folds' labelled rows (label -1 = unlabelled), folds split by
    `groups` (e.g. the question: no question chooses its own threshold). A 0/1 score is its own
    verdict."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    if np.isin(s, (0.0, 1.0)).all():
        return s.astype(int)
    fold = np.array([zlib.crc32(str(g).encode()) % folds for g in groups])
    out = np.zeros(len(s), int)
    for f in range(folds):
        fit = (fold != f) & (y >= 0)
        t = best_threshold(s[fit], y[fit]) if fit.any() else 0.5
        out[fold == f] = s[fold == f] >= t
    return out


@dataclass
class Aligned:
    """Judgments of several judges on the same rows, in the first file's row order."""

    judges: list[str]
    binary: np.ndarray  # [n_rows, n_judges] int 0/1
    soft: dict[str, np.ndarray] = field(default_factory=dict)  # judge -> [n_rows], if all had it
    subjects: list[str] = field(default_factory=list)  # [n_rows], "" if none
    labels: np.ndarray | None = None  # [n_rows] int, -1 = unlabelled; None if no row is labelled


def _key(row: Mapping, where: str) -> tuple:
    for k in ("question", "reference", "response"):
        if not isinstance(row.get(k), str):
            raise AgreementError(f"{where}: {k}: missing or not a string")
    return row["question"], row["reference"], row["response"]


def align(judgments: Mapping[str, Sequence[tuple[str, Mapping]]]) -> Aligned:
    """Match rows across judges by (question, reference, response) (repeats by occurrence).

    `judgments`: judge name -> [(where, row)]. Every judge must have judged the same rows; labels
    and subjects are taken from whichever file has them (they must not conflict).
    """
    names = list(judgments)
    if not names:
        raise AgreementError("no judgment files")
    keyed: dict[str, dict[tuple, tuple[str, Mapping]]] = {}
    for name in names:
        seen: dict[tuple, int] = {}
        d = keyed[name] = {}
        for where, row in judgments[name]:
            if not isinstance(row, Mapping):
                raise AgreementError(f"{where}: row: expected a JSON object")
            k = _key(row, where)
            seen[k] = seen.get(k, 0) + 1
            d[(*k, seen[k])] = (where, row)
    order = list(keyed[names[0]])
    for name in names[1:]:
        missing = [k for k in order if k not in keyed[name]]
        extra = [k for k in keyed[name] if k not in keyed[names[0]]]
        if missing or extra:
            where = keyed[name][extra[0]][0] if extra else keyed[names[0]][missing[0]][0]
            other = names[0] if extra else name
            raise AgreementError(
                f"{where}: row has no match in judge {other!r} "
                f"({len(missing)} missing, {len(extra)} extra rows)"
            )
    binary = np.array(
        [[judgment_of(keyed[n][k][1], keyed[n][k][0]) for n in names] for k in order], int
    ).reshape(len(order), len(names))
    soft = {}
    for n in names:
        vals = [keyed[n][k][1].get("soft") for k in order]
        if all(isinstance(v, int | float) for v in vals):
            soft[n] = np.asarray(vals, float)
    subjects, labels, any_label = [], [], False
    for k in order:
        subj, lab = "", -1
        for n in names:
            where, row = keyed[n][k]
            if row.get("subject"):
                subj = subj or str(row["subject"])
            # "correct" (0/1): the teacher's label of an on-policy answer file (onpolicy.py).
            field = "label" if row.get("label") is not None else "correct"
            if row.get(field) is not None:
                v = to_binary(row[field])
                if v is None:
                    raise AgreementError(
                        f"{where}: {field}: expected YES/NO or 1/0, got {row[field]!r}"
                    )
                if lab not in (-1, v):
                    raise AgreementError(f"{where}: {field}: differs from another file's label")
                lab, any_label = v, True
        subjects.append(subj)
        labels.append(lab)
    return Aligned(names, binary, soft, subjects, np.asarray(labels, int) if any_label else None)


def _agreement(binary: np.ndarray, judges: list[str]) -> dict:
    out: dict[str, Any] = {"n": len(binary), "percent_agreement": percent_agreement(binary)}
    if len(judges) >= 3:
        out["fleiss_kappa"] = fleiss_kappa(binary)
    out["pairs"] = [
        {
            "a": judges[i],
            "b": judges[j],
            "percent_agreement": percent_agreement(binary[:, [i, j]]),
            "cohen_kappa": cohen_kappa(binary[:, i], binary[:, j]),
        }
        for i, j in combinations(range(len(judges)), 2)
    ]
    return out


def report(al: Aligned, n_bins: int = 10) -> dict:
    """Agreement (overall and per subject) and, for labelled rows, each judge's quality.

    Layout: {"judges", "n_rows", "agreement": {"all"|subject: {...}}, "quality": {judge: {"all"|
    subject: judge_quality(...)}}}; NaN marks an undefined statistic.
    """
    subjects = np.asarray(al.subjects)
    groups = {"all": np.ones(len(subjects), bool)}
    for s in sorted(set(al.subjects) - {""}):
        groups[s] = subjects == s
    out: dict[str, Any] = {"judges": al.judges, "n_rows": len(al.binary), "agreement": {}}
    if len(al.judges) >= 2:
        out["agreement"] = {g: _agreement(al.binary[m], al.judges) for g, m in groups.items()}
    if al.labels is not None:
        out["quality"] = {}
        for j, name in enumerate(al.judges):
            q = {}
            for g, m in groups.items():
                m = m & (al.labels >= 0)
                soft = al.soft[name][m] if name in al.soft else None
                q[g] = judge_quality(al.labels[m], al.binary[m, j], soft, n_bins)
                if g != "all":
                    q[g].pop("calibration", None)  # per-subject bins are too thin to read
            out["quality"][name] = q
    return out


def to_json(rep: dict) -> dict:
    """`report`'s output with NaN as null, for json.dumps."""
    return _nan_to_none(rep)


# ---------------------------------------------------------------------------------------------
# Accuracy tables (for evaluate): majority votes, per-subject / per-field means, markdown.


def majority(votes: np.ndarray) -> np.ndarray:
    """Majority verdict of votes [N, M] (1 = YES) -> [N] int; a tie is NO (unclear = wrong)."""
    v = np.asarray(votes)
    return (2 * v.sum(axis=1) > v.shape[1]).astype(int)


def accuracy_by_group(rows: Sequence[Mapping], keys: Sequence[str]) -> dict:
    """Means of the score columns `keys` over rows, overall, per subject and per field.

    Returns {"all": {"n", key: mean...}, "subject": {s: {...}}, "field": {f: {...}},
    "field_average": {key: mean over fields of the per-field means}} (the paper's averaged figure).
    """

    def means(rs: list[Mapping]) -> dict:
        return {"n": len(rs), **{k: float(np.mean([float(r[k]) for r in rs])) for k in keys}}

    out: dict[str, Any] = {"all": means(list(rows))}
    for g in ("subject", "field"):
        groups: dict[str, list[Mapping]] = {}
        for r in rows:
            groups.setdefault(str(r.get(g) or "unknown"), []).append(r)
        out[g] = {name: means(rs) for name, rs in sorted(groups.items())}
    out["field_average"] = {k: float(np.mean([m[k] for m in out["field"].values()])) for k in keys}
    return out


def markdown_table(acc: dict, keys: Sequence[str]) -> str:
    """`accuracy_by_group`'s result as a markdown table (percentages), fields then subjects."""
    lines = ["| group | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    row = lambda name, m: f"| {name} | {m['n']} | " + " | ".join(f"{100 * m[k]:.1f}" for k in keys)
    lines.append(row("**all**", acc["all"]) + " |")
    for f, m in acc["field"].items():
        lines.append(row(f"field: {f}", m) + " |")
    avg = acc["field_average"]
    lines.append("| field average | | " + " | ".join(f"{100 * avg[k]:.1f}" for k in keys) + " |")
    for s, m in acc["subject"].items():
        lines.append(row(s, m) + " |")
    return "\n".join(lines) + "\n"

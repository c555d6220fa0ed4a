"""rlvr_jax.judge.agreement and tools/judge_agreement.py: kappas against scikit-learn /
statsmodels and hand-computed figures; judge accuracy, AUC, calibration; the CLI's tables, JSON
and errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

from rlvr_jax.judge import agreement

ROOT = Path(__file__).resolve().parents[1]


def test_cohen_kappa_hand_example():
    # 50 items: both YES 20, A YES / B NO 5, A NO / B YES 10, both NO 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4.
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert agreement.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert agreement.percent_agreement(np.stack([a, b], 1)) == pytest.approx(0.7)


def test_fleiss_kappa_hand_example():
    # 4 items, 3 raters: YES counts 3, 0, 2, 1. P_i = 1, 1, 1/3, 1/3 -> P_bar = 2/3;
    # p_yes = 6/12 -> P_e = 1/2; kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    r = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]])
    assert agreement.fleiss_kappa(r) == pytest.approx(1 / 3, abs=1e-12)
    assert agreement.percent_agreement(r) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappas_equal_libraries_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 200)
    r = np.stack(
        [np.where(rng.random(200) < 0.15 + 0.1 * j, 1 - truth, truth) for j in range(4)], 1
    )
    for i in range(4):
        for j in range(i + 1, 4):
            assert agreement.cohen_kappa(r[:, i], r[:, j]) == pytest.approx(
                cohen_kappa_score(r[:, i], r[:, j]), abs=1e-12
            )
    table, _ = aggregate_raters(r)
    assert agreement.fleiss_kappa(r) == pytest.approx(sm_fleiss(table), abs=1e-12)
    assert 0.0 < agreement.fleiss_kappa(r) < 1.0


def test_undefined_kappa_is_nan():
    assert math.isnan(agreement.cohen_kappa([1, 1, 1], [1, 1, 1]))
    assert math.isnan(agreement.fleiss_kappa(np.ones((5, 3), int)))


def test_judge_quality_hand_example():
    labels, binary, soft = [1, 1, 0, 0], [1, 0, 1, 0], [0.9, 0.4, 0.6, 0.1]
    q = agreement.judge_quality(labels, binary, soft, n_bins=2)
    assert q["accuracy"] == 0.5 and q["tpr"] == 0.5 and q["fpr"] == 0.5
    # positive/negative pairs ranked right: (0.9>0.6), (0.9>0.1), (0.4>0.1), not (0.4>0.6) -> 3/4
    assert q["auc"] == pytest.approx(0.75)
    assert q["auc"] == pytest.approx(roc_auc_score(labels, soft))
    # bins [0, .5): soft .4, .1 -> 1 of 2 correct; [.5, 1]: soft .9, .6 -> 1 of 2 correct
    bins = q["calibration"]["bins"]
    assert [(b["count"], b["frac_yes"]) for b in bins] == [(2, 0.5), (2, 0.5)]
    assert [b["mean_soft"] for b in bins] == pytest.approx([0.25, 0.75])
    assert q["calibration"]["ece"] == pytest.approx(0.25)


def test_calibration_matches_sklearn():
    rng = np.random.default_rng(5)
    soft = rng.random(300)
    labels = (rng.random(300) < soft).astype(int)
    t = agreement.calibration_table(labels, soft, n_bins=10)
    frac, mean = calibration_curve(labels, soft, n_bins=10)
    assert [b["frac_yes"] for b in t["bins"]] == pytest.approx(frac)
    assert [b["mean_soft"] for b in t["bins"]] == pytest.approx(mean)
    assert sum(b["count"] for b in t["bins"]) == 300


def test_to_binary():
    assert [agreement.to_binary(v) for v in ("YES", " no", 1, 0, True, "1", "maybe", 0.5)] == [
        1,
        0,
        1,
        0,
        1,
        1,
        None,
        None,
    ]


def _judgments(binary, soft=None, labels=None, subjects=None):
    rows = []
    for i, b in enumerate(binary):
        r = {"question": f"q{i // 2}", "reference": "ref", "response": f"resp{i % 2}", "binary": b}
        if soft is not None:
            r["soft"] = soft[i]
        if labels is not None:
            r["label"] = labels[i]
        if subjects is not None:
            r["subject"] = subjects[i]
        rows.append((f"f:line {i + 1}", r))
    return rows


def test_align_and_report_per_subject():
    a = _judgments(
        [1, 0, 1, 1, 0, 0],
        labels=["YES", "NO", "YES", "YES", "NO", "NO"],
        subjects=["econ"] * 4 + ["chem"] * 2,
        soft=[0.9, 0.2, 0.8, 0.7, 0.4, 0.1],
    )
    b = list(reversed(_judgments([1, 1, 1, 0, 0, 0])))  # other order, no labels or soft
    b = [(w, {**r, "verdict": "YES" if r.pop("binary") else "NO"}) for w, r in b]
    al = agreement.align({"A": a, "B": b})
    assert al.binary.tolist() == [[1, 1], [0, 1], [1, 1], [1, 0], [0, 0], [0, 0]]
    assert al.labels.tolist() == [1, 0, 1, 1, 0, 0] and set(al.soft) == {"A"}
    rep = agreement.report(al)
    pair = rep["agreement"]["all"]["pairs"][0]
    assert pair["cohen_kappa"] == pytest.approx(
        cohen_kappa_score([1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0])
    )
    assert rep["agreement"]["econ"]["n"] == 4 and rep["agreement"]["chem"]["percent_agreement"] == 1
    assert (
        rep["quality"]["A"]["all"]["accuracy"] == 1.0 and rep["quality"]["B"]["all"]["fpr"] == 1 / 3
    )
    assert "auc" not in rep["quality"]["B"]["all"]
    json.dumps(agreement.to_json(rep), allow_nan=False)


def test_align_errors_name_the_row():
    a = _judgments([1, 0])
    b = _judgments([1, 0, 1])
    with pytest.raises(agreement.AgreementError, match=r"f:line 3: row has no match in judge 'A'"):
        agreement.align({"A": a, "B": b})
    bad = [("g:line 1", {"question": "q0", "reference": "ref", "response": "resp0"})]
    with pytest.raises(agreement.AgreementError, match="g:line 1: binary: missing"):
        agreement.align({"A": bad})
    lab = [("h:line 1", {**_judgments([1])[0][1], "label": "maybe"})]
    with pytest.raises(agreement.AgreementError, match="h:line 1: label: expected YES/NO"):
        agreement.align({"A": lab})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for _, r in rows))
    return str(path)


def _cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "judge_agreement.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_cli_three_judges_tables_and_json(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    labels = rng.integers(0, 2, n)
    files = []
    for j in range(3):
        b = np.where(rng.random(n) < 0.2, 1 - labels, labels)
        soft = np.clip(b * 0.7 + rng.random(n) * 0.3, 0, 1)
        rows = _judgments(
            b.tolist(),
            soft=soft.tolist(),
            labels=labels.tolist(),
            subjects=["economics", "medicine"] * (n // 2),
        )
        files.append(_write(tmp_path / f"judge{j}.jsonl", rows))
    out = tmp_path / "rep.json"
    p = _cli(*files, "--json", str(out))
    assert p.returncode == 0, p.stderr
    for words in ("Fleiss", "Cohen", "judge0: quality", "calibration", "economics", "medicine"):
        assert words in p.stdout
    rep = json.loads(out.read_text())
    cols = [[json.loads(ln)["binary"] for ln in Path(f).read_text().splitlines()] for f in files]
    table, _ = aggregate_raters(np.array(cols).T)
    assert rep["agreement"]["all"]["fleiss_kappa"] == pytest.approx(sm_fleiss(table))
    assert rep["agreement"]["all"]["pairs"][0]["cohen_kappa"] == pytest.approx(
        cohen_kappa_score(cols[0], cols[1])
    )


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    f = tmp_path / "a.jsonl"
    good = '{"question": "q", "reference": "r", "response": "x", "binary": 1}\n'
    f.write_text(good + "{oops\n")
    (tmp_path / "b.jsonl").write_text(good)
    p = _cli(str(tmp_path / "b.jsonl"), str(f))
    assert p.returncode == 2
    assert (
        p.stderr.strip() == f"error: {f}:line 2: not valid JSON (Expecting property name "
        "enclosed in double quotes)"
    )


def test_cli_same_file_twice_is_an_error(tmp_path):
    f = _write(tmp_path / "a.jsonl", _judgments([1, 0, 1], soft=[0.9, 0.1, 0.8]))
    p = _cli(str(f), str(tmp_path / "." / "a.jsonl"))
    assert p.returncode == 2
    twice = tmp_path / "." / "a.jsonl"
    assert p.stderr.strip() == f"error: {twice}: given twice (one judge per file)"


def test_majority_ties_are_no():
    votes = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert agreement.majority(votes).tolist() == [1, 0, 0]
    assert agreement.majority(np.array([[1, 0], [1, 1]])).tolist() == [0, 1]


def test_accuracy_by_group_and_markdown():
    rows = [
        {"subject": "economics", "field": "Social Sciences", "judge": 1, "rule": 0},
        {"subject": "economics", "field": "Social Sciences", "judge": 0, "rule": 0},
        {"subject": "psychology", "field": "Social Sciences", "judge": 1, "rule": 1},
        {"subject": "chemistry", "field": "STEM", "judge": 1, "rule": 1},
    ]
    acc = agreement.accuracy_by_group(rows, ["judge", "rule"])
    assert acc["all"] == {"n": 4, "judge": 0.75, "rule": 0.5}
    assert acc["subject"]["economics"] == {"n": 2, "judge": 0.5, "rule": 0.0}
    assert acc["field"]["Social Sciences"]["judge"] == pytest.approx(2 / 3)
    # field average: mean of per-field means, ((2/3) + 1) / 2 for the judge
    assert acc["field_average"]["judge"] == pytest.approx(5 / 6)
    md = agreement.markdown_table(acc, ["judge", "rule"])
    assert "| economics | 2 | 50.0 | 0.0 |" in md and "| field average | | 83.3 | 66.7 |" in md

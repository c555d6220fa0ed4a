"""Loop hooks, held-out evaluation from step 0, resume, guards, estimators, the evaluation
judge's data split and the experiment runner, on the tiny synthetic task."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest

from configs import judge_eval, table1, tiny
from rlvr_jax import data, experiment, heldout, stats, train
from rlvr_jax import run as rl_run
from rlvr_jax.hooks import HookContext, Hooks
from rlvr_jax.judge import distill
from rlvr_jax.metrics import read_metrics


def _cfg(**over):
    c = tiny.get_config("rloo")
    c.train.tensorboard = False
    for k, v in over.items():
        sec, name = k.split("__")
        c[sec][name] = v
    return c


def _strip(recs):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]


def test_hooks_run_at_start_every_and_end():
    seen = []
    hooks = Hooks()
    hooks.add(lambda c: seen.append(("a", c.step)), every=3, at_start=True)
    hooks.add(lambda c: seen.append(("b", c.step)), every=0, at_end=True)
    hooks.add(lambda c: seen.append(("c", c.step)), every=1)
    hooks.run(HookContext(0, None, {}, False))
    for s in range(1, 8):
        hooks.run(HookContext(s, None, {}, s == 7))
    assert [s for n, s in seen if n == "a"] == [0, 3, 6]
    assert [s for n, s in seen if n == "b"] == [7]
    assert [s for n, s in seen if n == "c"] == list(range(1, 8))
    with pytest.raises(ValueError, match="every must be >= 0"):
        hooks.add(lambda c: None, every=-1)


def test_pass_at_k_is_the_unbiased_estimator():
    n = 6
    for c in range(n + 1):
        for k in range(1, n + 1):
            # Brute force: the share of k-subsets of the n samples holding a correct one.
            samples = [1] * c + [0] * (n - c)
            subsets = list(combinations(range(n), k))
            want = np.mean([any(samples[i] for i in s) for s in subsets])
            assert stats.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
            assert stats.pass_at_k(n, c, k) == pytest.approx(
                1 - math.comb(n - c, k) / math.comb(n, k)
            )
    assert stats.ks_for(8) == [1, 2, 4, 8] and stats.ks_for(6) == [1, 2, 4, 6]


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    before = (rng.random(200) < 0.3).astype(float)
    after = np.where(rng.random(200) < 0.5, 1.0, before)  # strictly better on some questions
    res = stats.paired_ci(before, after)
    for k in ("before", "after", "change"):
        assert res[k]["lo"] <= res[k]["mean"] <= res[k]["hi"]
    assert res["change"]["lo"] > 0  # a clear gain: the paired CI excludes 0
    same = stats.paired_ci(before, before)["change"]
    assert same["lo"] == same["hi"] == 0.0


def test_heldout_from_step_zero_and_exact_resume(tmp_path):
    over = dict(train__steps=4, train__eval_every=2, train__ckpt_every=2, train__eval_samples=4)
    full = train.train(_cfg(**over), tmp_path / "full")
    recs = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert recs[0]["step"] == 0 and "train/loss" not in recs[0]  # evaluated before any update
    assert [r["step"] for r in recs if "eval/accuracy" in r] == [0, 2, 4]
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    for r in recs:
        if "eval/accuracy" in r:
            assert r["eval/n"] == 16 and "eval/subject/echo" in r and "eval/rule_jaccard" in r
            assert r["eval/pass@1"] == pytest.approx(r["eval/mean@4"])
            assert r["eval/pass@1"] <= r["eval/pass@2"] <= r["eval/pass@4"]
    rows = heldout.read_rows(tmp_path / "full", 4)
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(recs[-1]["eval/accuracy"])
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    acc = summary["accuracy"]["all"]
    assert acc["after"]["mean"] == pytest.approx(recs[-1]["eval/accuracy"])
    assert acc["before"]["mean"] == pytest.approx(recs[0]["eval/accuracy"])
    # Killed after step 3 (last checkpoint: step 2), then resumed: the same file, and the step-0
    # row is neither dropped nor computed again.
    train.train(_cfg(**over), tmp_path / "run", stop_after=3)
    step0 = (tmp_path / "run" / "eval" / "step_000000.jsonl").stat().st_mtime_ns
    train.train(_cfg(**over), tmp_path / "run")
    again = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert _strip(again) == _strip(recs)
    assert (tmp_path / "run" / "eval" / "step_000000.jsonl").stat().st_mtime_ns == step0


def test_guard_warns_and_stops(tmp_path, capsys):
    cfg = _cfg(train__steps=4, train__ckpt_every=4)
    cfg.train.guards.min_length_ratio = 1.5  # the step-1 ratio is 1: crossed at once
    cfg.train.guards.stop = True
    with pytest.raises(train.RunStopped, match="guard crossed at step 1.*length_ratio"):
        train.train(cfg, tmp_path)
    err = capsys.readouterr().err
    assert "WARNING: reward-hacking guard at step 1: guard/length_ratio = 1.000 is below" in err
    rec = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert rec["step"] == 1 and rec["guard/crossed"] == 1 and rec["guard/length_ratio"] == 1.0
    assert train.latest_checkpoint(tmp_path) == 1  # stopped with a restart point


def test_memory_planning_does_not_distill(monkeypatch, tmp_path):
    monkeypatch.setattr(distill, "named_judge_dir", lambda spec: tmp_path / spec)

    def boom(*a, **k):
        raise AssertionError("memory planning started a distillation")

    monkeypatch.setattr(distill, "ensure_default_judge", boom)
    monkeypatch.setattr(distill, "ensure_evaluation_judge", boom)
    for spec in ("distilled", "evaluation"):
        cfg = _cfg(judge__model=spec)
        cfg.policy.model = "default"
        policy, judge = rl_run.model_configs(cfg)
        assert judge.num_layers == policy.num_layers and judge.vocab_size == policy.vocab_size


def test_evaluation_judge_trains_on_half_the_test_questions():
    from configs import judge_econ
    from rlvr_jax.judge.distill.rows import load_questions

    train_r, _, held_r = load_questions(judge_econ.get_config())
    train_e, val_e, held_e = load_questions(judge_eval.get_config())
    norm = lambda exs: {" ".join(e.question.lower().split()) for e in exs}
    moved = norm(held_r) - norm(held_e)
    assert len(held_e) == len(held_r) // 2 and moved <= norm(train_e)
    assert not norm(held_e) & norm(train_e) and not norm(val_e) & norm(train_e)
    assert not norm(held_r) & norm(train_r)  # the reward judge never sees a test question


def test_experiment_smoke_resumes_and_skips_finished_cells(tmp_path):
    exp = table1.get_config("smoke")
    exp.seeds = (0,)
    exp.run.train.steps = 2
    exp.run.train.eval_every = 0
    cells = [c for c in exp.cells if c["name"] in ("sft", "rloo_rule_binary")]
    exp.cells = cells + [dict(name="rloo_nope", kind="rl", reward="nope", algo="rloo")]
    first = experiment.run_sweep(exp, tmp_path, stop_after=1)
    assert first["ran"] == ["sft/seed0"] and first["results"] is None
    done = (tmp_path / "sft" / "seed0" / "summary.json").stat().st_mtime_ns
    out = experiment.run_sweep(exp, tmp_path)
    assert out["skipped"] == ["sft/seed0"] and out["ran"] == ["rloo_rule_binary/seed0"]
    assert "nope" in out["failed"]["rloo_nope/seed0"]
    assert (tmp_path / "sft" / "seed0" / "summary.json").stat().st_mtime_ns == done
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["cells"]) == {"sft", "rloo_rule_binary"}
    cell = res["cells"]["rloo_rule_binary"]
    recs = read_metrics(tmp_path / "rloo_rule_binary" / "seed0" / "metrics.jsonl")
    assert cell["accuracy"]["all"]["after"]["mean"] == pytest.approx(recs[-1]["eval/accuracy"])
    assert "rloo_rule_binary" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    # Independent labels of the answers: a cell gets "labelled" figures only when every one of
    # its before and after answers is labelled; they follow the labels, not the evaluator.
    wd = tmp_path / "rloo_rule_binary" / "seed0"
    steps = heldout.eval_steps(wd)
    rows = {s: heldout.read_rows(wd, s) for s in (steps[0], steps[-1])}
    labels = [{"id": r["id"], "response": r["response"], "label": int(i == 0)}
              for s in rows for i, r in enumerate(rows[s])]  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels[1:]))
    assert "labelled" not in experiment.collect(exp, tmp_path, labels=experiment.read_labels(path))[
        "cells"]["rloo_rule_binary"]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    got = experiment.collect(exp, tmp_path, labels=experiment.read_labels(path))
    lab = got["cells"]["rloo_rule_binary"]["labelled"]
    n = len(rows[steps[0]])
    assert lab["before"]["mean"] == pytest.approx(1 / n) and lab["after"]["mean"] == pytest.approx(
        1 / n)  # fmt: skip
    assert "blind labels" in experiment.markdown(got)
    # The labels' curve: every step all seeds evaluated, here only the last after step 0.
    curve = got["cells"]["rloo_rule_binary"]["labelled_steps"]
    assert list(curve) == [str(steps[-1])] and curve[str(steps[-1])] == lab
    # The plot draws the labels' curve beside the in-run evaluator's.
    png = experiment.plot(exp, tmp_path, tmp_path / "labelled.png", got)
    assert png.stat().st_size > 0
    # The labelled answers as an on-policy file: any judge can then be measured on them.
    from rlvr_jax.judge import onpolicy

    out = experiment.labelled_answers(exp, tmp_path, experiment.read_labels(path))
    (tmp_path / "onpolicy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    back = onpolicy.load(tmp_path / "onpolicy.jsonl", "heldout")
    want = {(r["id"], r["response"]): r["label"] for r in labels}
    assert {(r["id"], r["response"]): r["correct"] for r in back} == want
    sheet = experiment.answer_sheet(exp, tmp_path)
    keys = {(r["id"], r["response"]) for r in labels}
    assert {(r["id"], r["response"]) for r in sheet} == keys and len(sheet) == len(keys)
    assert all(r["reference"] and r["question"] for r in sheet)
    some = {k: 1.0 for k in sorted(keys)[: len(keys) // 2]}
    rest = experiment.answer_sheet(exp, tmp_path, labelled=some)
    assert {(r["id"], r["response"]) for r in rest} == keys - set(some)
    # --seeds: a seed no cell runs runs nothing, and the report still covers every finished run.
    again = experiment.run_sweep(exp, tmp_path, only=["rloo_rule_binary", "sft"], seeds=[5])
    assert again["ran"] == [] and again["skipped"] == [] and set(again["results"]["cells"]) == {
        "sft", "rloo_rule_binary"}  # fmt: skip
    path.write_text('{"id": "q"}\n')
    with pytest.raises(data.DataError, match="labels.jsonl:line 1"):
        experiment.read_labels(path)


def test_read_labels_errors_name_file_and_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": 1, "response": "r", "label": 1}\n\n{"id": "q", "response": "s"}\n')
    with pytest.raises(data.DataError, match=r"labels.jsonl:line 3: not a label row \(KeyError"):
        experiment.read_labels(path)
    path.write_text('{"id": 1, "response": "r", "label": 1}\nnot json\n')
    with pytest.raises(data.DataError, match="labels.jsonl:line 2: not valid JSON"):
        experiment.read_labels(path)
    path.write_text('{"id": 1, "response": "r", "label": 0}\n\n')
    assert experiment.read_labels(path) == {("1", "r"): 0.0}
    with pytest.raises(data.DataError, match="nope.jsonl: cannot read"):
        experiment.read_labels(tmp_path / "nope.jsonl")


def test_judge_comparison_report():
    """compare_scorers: a judge that follows the labels beats the rules and a random judge, and
    kappa between the two judges is the one agreement.cohen_kappa gives."""
    from rlvr_jax.data import example_from_row
    from rlvr_jax.judge import agreement, probes
    from rlvr_jax.judge.distill.quality import compare_scorers, summary_lines

    rows = [
        # Rephrasings share no word with the reference: the rules cannot tell them correct.
        {"query": [{"role": "user", "content": f"Question {i}?"}], "label": f"alpha{i}",
         "subject": "economics", "rephrasings": [f"beta{i}"], "distractors": [f"gamma{i}"]}
        for i in range(8)
    ]  # fmt: skip
    exs = [example_from_row(r, f"row {i}", None) for i, r in enumerate(rows)]
    judged = probes.answer_rows(exs) + probes.probe_rows(exs, ["colon"])
    y = np.array([r["label"] == "YES" for r in judged], float)
    rng = np.random.default_rng(0)
    good = dict(p_yes=0.1 + 0.8 * y, p_no=0.9 - 0.8 * y, binary=y.astype(int), soft=0.1 + 0.8 * y)
    u = rng.random(len(y))
    noisy = dict(p_yes=u, p_no=1 - u, binary=(u > 0.5).astype(int), soft=u)
    rep = compare_scorers(judged, {"evaluation_judge": good, "reward_judge": noisy})
    assert rep["evaluation_judge"]["auc_answers"] == 1.0
    assert rep["evaluation_judge"]["accuracy_answers"] == 1.0
    assert rep["kappa_between_judges"] == agreement.cohen_kappa(good["binary"], noisy["binary"])
    assert rep["auc_margin_over_best_rule"]["evaluation_judge"] > 0
    lines = summary_lines(rep)
    assert lines[0].startswith("evaluation_judge: accuracy 1.000, AUC 1.000")
    assert lines[-1].startswith("Cohen's kappa, evaluation vs reward judge")

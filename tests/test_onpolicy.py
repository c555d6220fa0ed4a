"""On-policy labelled answers: the shipped file, the quality report, and their judge rows."""

import json

import numpy as np
import pytest

from rlvr_jax.data import Example
from rlvr_jax.judge import onpolicy
from rlvr_jax.judge.answers import answer_view
from rlvr_jax.judge.distill import examples as E


def _row(i, correct, response="It is x.", split="heldout", cut=False):
    return {"id": f"q{i}", "question": f"Q{i}?", "reference": "x", "response": response,
            "subject": "economics", "correct": correct, "cut": cut, "split": split}  # fmt: skip


def test_quality_report_on_a_hand_made_file(tmp_path):
    rows = [_row(i, c) for i, c in enumerate([1, 1, 0, 0, 0, 0])] + [_row(9, 1, split="train")]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = onpolicy.load(path, "heldout")
    assert [r["id"] for r in held] == [f"q{i}" for i in range(6)]
    soft = [0.9, 0.4, 0.5, 0.1, 0.2, 0.3]
    binary = [1, 0, 1, 0, 0, 0]
    table = onpolicy.quality_table(held, {"judge": {"soft": soft, "binary": binary},
                                          "rule_x": {"soft": [1, 0, 0, 0, 0, 0]}})  # fmt: skip
    q = table["judge"]
    # AUC by hand: of the 2 x 4 (correct, wrong) pairs, the correct one scores higher in 7.
    assert q["auc"] == pytest.approx(7 / 8)
    assert q["precision"] == pytest.approx(1 / 2) and q["recall"] == pytest.approx(1 / 2)
    # kappa: observed agreement 4/6; chance (2/6 * 2/6 + 4/6 * 4/6) = 5/9.
    assert q["kappa"] == pytest.approx((4 / 6 - 5 / 9) / (1 - 5 / 9))
    assert q["n"] == 6 and q["n_correct"] == 2 and q["yes"] == 2
    # Of the judge's total score 2.4, the right answers get 0.9 + 0.4.
    assert q["reward_to_correct"] == pytest.approx(1.3 / 2.4)
    # rule_x ranks one correct answer first and ties the other with the wrong ones.
    assert table["rule_x"]["auc"] == pytest.approx((4 + 0.5 * 4) / 8)
    assert table["best_rule_auc"] == table["rule_x"]["auc"]
    hit = onpolicy.meets_targets(q, table["best_rule_auc"])
    assert hit == {"auc": False, "auc_over_best_rule": True, "precision": False}
    table["judge_targets"] = hit  # as distill/evaluation.onpolicy_quality adds it
    md = onpolicy.markdown(table)
    assert "| judge | 6 | 2 | 0.875 | 2 | 0.500 | 0.500 |" in md


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"correct": 2}, "line 1: correct"),
        ({"cut": "no"}, "line 1: cut"),
        ({"split": "test"}, "line 1: split"),
        ({"response": None}, "line 1: response"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, bad, msg):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({**_row(0, 1), **bad}) + "\n")
    with pytest.raises(onpolicy.OnPolicyError, match=f"a.jsonl:{msg}"):
        onpolicy.load(path)


def test_shipped_file_is_split_by_question():
    rows = onpolicy.load()
    assert len(rows) == 1206 and {r["split"] for r in rows} == {"train", "heldout"}
    by_split = {s: {r["question"] for r in rows if r["split"] == s} for s in onpolicy.SPLITS}
    assert not by_split["train"] & by_split["heldout"]
    held = [r for r in rows if r["split"] == "heldout"]
    assert 0.2 < len(held) / len(rows) < 0.45 and sum(r["correct"] for r in held) >= 10


EX = Example(id="e1", question="What is it?", messages=(), reference="a liquidity trap",
             subject="economics", field="Social Sciences", rephrasings=("liquidity trap",),
             distractors=("a credit crunch", "stagflation", "deflation"))  # fmt: skip


def test_judge_rows_from_on_policy_answers_carry_label_and_cut():
    rows = E.onpolicy_rows([_row(1, 1, cut=True), _row(2, 0)], repeat=2)
    assert [r["label"] for r in rows] == ["YES", "YES", "NO", "NO"]
    assert [r["cut"] for r in rows] == [True, True, False, False]
    assert len({r["id"] for r in rows}) == 4 and {r["teacher"] for r in rows} == {"onpolicy"}


def test_prose_and_conflicting_rows():
    prose = E.prose_rows([EX], seed=0, per_question=1)
    assert [r["label"] for r in prose] == ["YES", "NO"]
    for r in prose:
        v = answer_view(r["response"])
        assert v.kind == "prose"
        answer = [EX.reference, *EX.rephrasings] if r["label"] == "YES" else EX.distractors
        assert any(a.lower() in v.text.lower() for a in answer)
    conf = E.conflicting_rows([EX], seed=0, per_question=2)
    assert len(conf) == 2 and {r["label"] for r in conf} == {"NO"}
    for r in conf:
        v = answer_view(r["response"])
        # The judge is shown both answers, the reference among them.
        assert v.kind == "answer" and " ; " in v.text and EX.reference in v.text
    assert E.prose_rows([EX], 0, 1) == prose  # same seed, same rows
    assert np.all([r["question"] == EX.question for r in prose + conf])


def _sampled(qid, completion, stopped=True):
    return {"id": qid, "subject": "economics", "question": f"{qid}?", "reference": "x",
            "completion": completion, "completion_ids": [1, 2, 3], "stopped": stopped}  # fmt: skip


def test_new_answers_join_their_questions_split_only_when_both_readers_agree(tmp_path, capsys):
    from rlvr_jax.cli import onpolicy_answers as cli

    file = tmp_path / "answers.jsonl"
    old = [_row(1, 0), _row(2, 0, split="train")]
    file.write_text("".join(json.dumps(r) + "\n" for r in old))
    samples = tmp_path / "step_000003.jsonl"  # a rollout log's name: its rows carry the step
    # One answer as tools/sample.py writes it, one as a run's rollout log does.
    logged = {"id": "q2", "subject": "economics", "question": "q2?", "reference": "x",
              "response": "It is y, and", "cut": True, "tokens": 7, "reward": 0.1}  # fmt: skip
    got = [_sampled("q1", "It is x."), logged]
    samples.write_text("".join(json.dumps(r) + "\n" for r in got))
    sheet = cli.sheet(cli._samples([samples]))
    # The sheet shows a reader what the rule needs, never which policy or sample wrote the answer.
    assert sorted(r["response"] for r in sheet) == ["It is x.", "It is y, and"]
    assert all(set(r) == {"id", "question", "reference", "response", "cut"} for r in sheet)

    def labels(name, verdicts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": r["id"], "response": r["response"], "label": v,
                                            "reason": "r"}) + "\n"
                                for r, v in zip(sheet, verdicts, strict=True)))  # fmt: skip
        return path

    a, b = labels("a.jsonl", [1, 0]), labels("b.jsonl", [1, 1])
    args = ["add", "--samples", str(samples), "--policy", "rl", "--sample", "greedy",
            "--labels", str(a), "--second", str(b), "--file", str(file)]  # fmt: skip
    assert cli.main(args) == 1 and "disagree" in capsys.readouterr().err
    assert file.read_text().count("\n") == 2  # nothing written
    # A third reading settles a disagreement: its label counts, the second reader's stays.
    third = tmp_path / "t.jsonl"
    third.write_text(json.dumps({"id": sheet[1]["id"], "response": sheet[1]["response"],
                                 "label": 1, "reason": "read again"}) + "\n")  # fmt: skip
    file_copy = tmp_path / "copy.jsonl"
    file_copy.write_text(file.read_text())
    assert cli.main(args[:-1] + [str(file_copy), "--settled", str(third)]) == 0
    row = onpolicy.load(file_copy)[-1 if sheet[1]["id"] == "q2" else -2]
    assert row["correct"] == 1 and row["second_label"] == 1 and row["note"].startswith("settled")
    b = labels("b.jsonl", [1, 0])
    assert cli.main(args) == 0
    rows = onpolicy.load(file)
    new = {r["id"]: r for r in rows[2:]}
    assert new["q1"]["split"] == "heldout" and new["q2"]["split"] == "train"
    assert new["q2"]["cut"] is True and new["q1"]["policy"] == "rl"
    assert new["q1"]["response_tokens"] == 3 and new["q2"]["response_tokens"] == 7
    assert new["q2"]["step"] == 3
    by_sheet = {r["id"]: v for r, v in zip(sheet, [1, 0], strict=True)}
    assert [new[q]["correct"] for q in ("q1", "q2")] == [by_sheet["q1"], by_sheet["q2"]]
    # An answer to a question the file does not hold has no split: one line naming it.
    samples.write_text(json.dumps(_sampled("q7", "It is x.")) + "\n")
    a = tmp_path / "c.jsonl"
    a.write_text(json.dumps({"id": "q7", "response": "It is x.", "label": 1}) + "\n")
    assert cli.main(["add", "--samples", str(samples), "--policy", "rl", "--sample", "greedy",
                     "--labels", str(a), "--second", str(a), "--file", str(file)]) == 2  # fmt: skip
    assert "q7: a question of no split" in capsys.readouterr().err


def test_a_judge_recipe_names_more_on_policy_files(tmp_path):
    from configs import judge_econ
    from rlvr_jax.judge.distill.rows import onpolicy_answers

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_row(1, 1, split="train")) + "\n" + json.dumps(_row(2, 0)) + "\n")
    b.write_text(json.dumps(_row(3, 0, split="train")) + "\n")
    cfg = judge_econ.get_config()
    cfg.distill.onpolicy_file = str(a)
    assert [r["id"] for r in onpolicy_answers(cfg, "train")] == ["q1"]
    cfg.distill.onpolicy_more = (str(b),)
    assert [r["id"] for r in onpolicy_answers(cfg, "train")] == ["q1", "q3"]
    assert [r["id"] for r in onpolicy_answers(cfg, "heldout")] == ["q2"]


def test_report_command_keeps_one_run_with_source(tmp_path, capsys):
    rows = [{**_row(i, c, response=r), "policy": p} for i, (c, r, p) in enumerate([
        (1, "It is x.", "run/a"), (0, "It is y.", "run/a"), (0, "It is x, or y.", "run/b"),
    ])]  # fmt: skip
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.json"
    args = ["--input", str(path), "--split", "all", "--out", str(out)]
    assert onpolicy.main([*args, "--source", "run/a"]) == 0
    table = json.loads(out.read_text())
    # run/b's wrong answer names x too: kept, it would take rule_binary's AUC below 1.
    assert table["rule_binary"]["n"] == 2 and table["rule_binary"]["auc"] == 1.0
    assert "2 on-policy answers (all, run/a), 1 correct" in capsys.readouterr().out
    assert onpolicy.main([*args]) == 0 and json.loads(out.read_text())["rule_binary"]["n"] == 3
    assert onpolicy.main([*args, "--source", "run/"]) == 0  # a prefix: every run of a cell
    assert json.loads(out.read_text())["rule_binary"]["n"] == 3
    assert onpolicy.main([*args, "--source", "run/c"]) == 2
    assert "no answers with policy 'run/c'" in capsys.readouterr().err


def test_distillation_report_gives_the_judge_plain_and_gated():
    """distill's on-policy figures (evaluation.onpolicy_quality): the judge's column as the report
    command builds it (`onpolicy.verdict_columns`), its gated twin, the rules, the targets."""
    from rlvr_jax.judge.distill import evaluation

    rows = [{**_row(i, 0, response=resp), "reference": "Paris", "label": lab}
            for i, (resp, lab) in enumerate([("Paris.", "YES"), ("Rome.", "NO"),
                                             ("Um.", "NO"), ("It is Paris", "YES")])]  # fmt: skip
    r = {"soft": np.array([0.9, 0.2, 0.95, 0.3]), "binary": np.array([1, 0, 1, 0])}
    table = evaluation.onpolicy_quality(rows, r)
    labels = [1, 0, 0, 1]
    assert table["judge"] == onpolicy.reward_quality(labels, r["soft"], r["binary"])
    # "Um." names nothing of Paris: the gate takes its 0.95 and its YES away.
    gated = onpolicy.reward_quality(labels, [0.9, 0.0, 0.0, 0.3], [1, 0, 0, 0])
    assert table["judge_gated"] == gated and gated["auc"] == 1.0 and gated["precision"] == 1.0
    assert table["judge"]["precision"] == 0.5 and "rule_binary" in table
    assert set(table["judge_targets"]) == {"auc", "auc_over_best_rule", "precision"}

"""evaluate end to end on a tiny random model: results layout, per-subject numbers against the
per-row file, field average, probe false-positive rate, votes, bad input on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_hf_tokenizer
from flax import nnx

from configs import base
from rlvr_jax import data, eval_rows
from rlvr_jax import evaluate as E
from rlvr_jax.judge import probes, rules, scoring
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model_dir import load_model, save_model
from rlvr_jax.models.transformer import forward, init_model, positions_from_mask
from rlvr_jax.tokenizer import Tokenizer, left_pad

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ("economics", "psychology", "chemistry")  # two fields: Social Sciences, STEM


def _rows() -> list[dict]:
    rows = []
    for i in range(7):
        subj = SUBJECTS[i % 3]
        rows.append({
            "id": f"{subj}-{i:04d}",
            "query": [{"role": "user", "content": f"Question {i}: which term fits case {i}?"}],
            "label": ["YES", "NO", "demand curve", "42"][i % 4],
            "subject": subj,
        })  # fmt: skip
    return rows


def _rig_verdicts(graphdef, state, tok: Tokenizer, yes: int, no: int) -> None:
    """Make the judge's verdict depend on its input: lm_head is zero except the YES column w and
    the NO column -w, where w is the main direction in which the final hidden state of judge
    prompts varies, made orthogonal to their mean. (A random w gives the same verdict on every
    prompt: the shared end of the chat template dominates the last position.) Every greedy token
    is then YES or NO, with both on different rows and P(YES) inside (0, 1)."""
    judge = scoring.Judge(
        graphdef, state, tok, judge_prompts.JudgeConfig(template="short", max_prompt_len=256)
    )
    rows = _rows()
    answers = ["NOYESNO", ":", "Thought process:", "42", "YES", "demand curve", "NO"]
    ps = [
        p.ids
        for r in rows
        for p in judge.prompts(
            [r["query"][0]["content"]] * len(answers), answers, [r["label"]] * len(answers)
        )
    ]
    ids, mask = left_pad(ps, None, tok.pad_id)
    hidden, _ = forward(graphdef, state, ids, positions_from_mask(mask), mask, None, True)
    h = np.asarray(hidden[:, -1], np.float64)  # [n, D], after the final norm
    mean = h.mean(0)
    w = np.linalg.svd(h - mean, full_matrices=False)[2][0]
    w -= (w @ mean) / (mean @ mean) * mean
    w *= 2.0 / np.std(h @ w)
    params = nnx.to_pure_dict(state)
    head = np.zeros(np.shape(params["lm_head"]), np.float32)
    head[:, yes], head[:, no] = w, -w
    params["lm_head"] = jnp.asarray(head)
    nnx.replace_by_pure_dict(state, params)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random model dir whose byte-level vocabulary also has single YES / NO tokens, with
    verdicts rigged to vary (`_rig_verdicts`)."""
    hf = make_tiny_hf_tokenizer()
    hf.add_tokens(["YES", "NO"])
    tok = Tokenizer(hf)
    yes, no = tok.token_ids_of(["YES"]), tok.token_ids_of(["NO"])
    assert len(yes) == len(no) == 1
    cfg = ModelConfig(
        model_type="llama", vocab_size=len(hf), hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
        eos_token_id=tuple(tok.stop_ids), pad_token_id=tok.pad_id,
    )  # fmt: skip
    graphdef, state = init_model(cfg, seed=0)
    _rig_verdicts(graphdef, state, tok, yes[0], no[0])
    return save_model(tmp_path_factory.mktemp("models") / "tiny", cfg, state, tok)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "test.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return p


def _cfg(data_file: Path):
    c = base.get_config()
    c.name = "eval_test"
    c.data.test = (str(data_file),)
    c.data.system_prompt = "Answer briefly."
    c.judge.template = "short"
    # The rigged judge reads random 6-token texts that commit to nothing: the last line keeps its
    # verdicts varied, which these bookkeeping checks need (tests/test_answers.py covers the view).
    c.judge.view = "last_line"
    c.judge.max_prompt_len = 256
    c.judge.batch_size = 4
    c.rollout.max_prompt_len = 128
    c.rollout.max_new_tokens = 6
    return c


@pytest.fixture(scope="module")
def run(tiny_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "results.json"
    res = E.evaluate(
        _cfg(data_file), model=str(tiny_dir), judge=str(tiny_dir), out=out, batch_size=3,
        probe_kinds=["colon", "empty", "question_repeated", "thought_process"], quiet=True,
    )  # fmt: skip
    return res, out


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def test_results_file_layout(run):
    res, out = run
    on_disk = json.loads(out.read_text())
    assert on_disk["accuracy"] == res["accuracy"]
    assert on_disk["n_questions"] == 7 and on_disk["votes"] == 1
    assert on_disk["sampling"]["greedy"] is True
    assert on_disk["wall_time_s"] > 0 and set(on_disk["time_s"]) >= {"generate", "judge"}
    acc = on_disk["accuracy"]
    assert set(acc["subject"]) == set(SUBJECTS)
    assert set(acc["field"]) == {"Social Sciences", "STEM"}
    for m in (acc["all"], *acc["subject"].values(), *acc["field"].values()):
        assert set(m) == {"n", "binary", "soft", "rule_binary", "rule_jaccard"}
        assert all(0.0 <= m[k] <= 1.0 for k in m if k != "n")
    paths = E.out_paths(out)
    table = paths["table"].read_text()
    assert table == on_disk["table"] and "| economics | 3 |" in table and "field average" in table
    assert not list(out.parent.glob("*.tmp"))  # atomic writes leave no temporary files
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths.values())


def test_per_subject_numbers_equal_recomputation_from_rows(run):
    res, out = run
    rows = _jsonl(E.out_paths(out)["generations"])
    assert [r["id"] for r in rows] == [r["id"] for r in _rows()]
    for r in rows:  # the judgment layout tools/judge_agreement.py reads
        assert {"question", "reference", "response", "binary", "soft", "subject"} <= set(r)
        assert r["binary"] == r["greedy_binary"] == r["votes"][0]
    acc = res["accuracy"]
    for subj in SUBJECTS:
        mine = [r for r in rows if r["subject"] == subj]
        assert acc["subject"][subj]["n"] == len(mine)
        for k in ("binary", "soft", "rule_binary", "rule_jaccard"):
            assert acc["subject"][subj][k] == pytest.approx(np.mean([r[k] for r in mine]), abs=1e-6)
    for k in ("binary", "soft", "rule_binary", "rule_jaccard"):
        fields = [acc["field"][f][k] for f in ("Social Sciences", "STEM")]
        assert acc["field_average"][k] == pytest.approx(np.mean(fields))
        assert acc["all"][k] == pytest.approx(np.mean([r[k] for r in rows]), abs=1e-6)
    # The rigged judge is not constant: the checks above compare non-trivial numbers.
    assert 0 < sum(r["binary"] for r in rows) < len(rows)
    assert len({r["soft"] for r in rows}) > 1


def test_row_scores_belong_to_their_rows(run, tiny_dir):
    """Rows are judged in length order and put back: each row's scores are its own."""
    _, out = run
    rows = _jsonl(E.out_paths(out)["generations"])
    m = load_model(tiny_dir)
    judge = scoring.Judge(m.graphdef, m.state, m.tokenizer,
                    judge_prompts.JudgeConfig(template="short", max_prompt_len=256,
                                              batch_size=4))  # fmt: skip
    cols = [[r[k] for r in rows] for k in ("question", "response", "reference")]
    want = judge.score(*cols)
    np.testing.assert_allclose([r["judge_p_yes"] for r in rows], want.p_yes, atol=1e-5)
    assert [r["greedy_binary"] for r in rows] == want.binary.astype(int).tolist()
    # Three-valued verdict per row, and its NEITHER share in the results.
    assert [r["verdict"] for r in rows] == [scoring.verdict_label(v) for v in want.verdict]
    res, _ = run
    assert res["judge_neither_rate"] == pytest.approx(np.mean(want.verdict == -1))
    for r in rows:
        assert r["rule_binary"] == rules.rule_binary(r["response"], r["reference"])
        assert r["rule_jaccard"] == pytest.approx(rules.rule_jaccard(r["response"], r["reference"]))


def test_probe_fpr_is_over_probe_rows(run):
    res, out = run
    prs = _jsonl(E.out_paths(out)["probes"])
    kinds = ["colon", "empty", "question_repeated", "thought_process"]
    assert len(prs) == 7 * len(kinds) == res["probes"]["n"]
    assert all(r["label"] == "NO" and r["kind"].startswith("probe:") for r in prs)
    # The same rows as probes.probe_rows of the evaluated questions.
    want = probes.probe_rows(_rows(), kinds)
    assert [r["response"] for r in prs] == [r["response"] for r in want]
    assert res["probes"]["fpr"] == pytest.approx(np.mean([r["binary"] for r in prs]))
    for k in kinds:
        b = [r["binary"] for r in prs if r["kind"] == f"probe:{k}"]
        assert res["probes"]["per_probe"][k] == pytest.approx(np.mean(b))
    assert res["probes"]["per_probe"]["empty"] == 0.0  # an empty response is never accepted
    assert 0 < res["probes"]["fpr"] < 1  # the rigged judge accepts some probes, not all
    assert "false-positive rate" in E.out_paths(out)["table"].read_text()


def test_votes_are_a_majority_of_sampled_verdicts(tiny_dir, data_file, tmp_path):
    res = E.evaluate(
        _cfg(data_file), model=str(tiny_dir), judge=str(tiny_dir), votes=5, limit=4, batch_size=4,
        probe_kinds=["colon"], out=tmp_path / "r.json", quiet=True,
    )  # fmt: skip
    rows = _jsonl(E.out_paths(tmp_path / "r.json")["generations"])
    assert res["n_questions"] == 4 and res["votes"] == 5
    for r in rows:
        assert len(r["votes"]) == 5
        assert r["binary"] == int(sum(r["votes"]) > 2)
    # Sampled votes follow P(YES): rows with P(YES) near 0 or 1 vote (almost) unanimously.
    v = eval_rows.judge_votes(np.array([0.0, 1.0, 0.5]), np.array([False, False, True]),
                      np.array([0, 1, 1]), 64, jax.random.PRNGKey(0))[0]  # fmt: skip
    assert v[0].sum() == 0 and v[1].sum() == 64 and v[2].sum() == 0  # row 2 is an empty response


def test_rules_only_without_judge(tiny_dir, data_file):
    res = E.evaluate(_cfg(data_file), model=str(tiny_dir), judge="", limit=3, quiet=True)
    assert res["probes"] is None
    assert set(res["accuracy"]["all"]) == {"n", "rule_binary", "rule_jaccard"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlvr_jax.evaluate", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_cli_missing_model_dir_one_line_exit_2(tiny_dir, tmp_path):
    res = _cli("--model", str(tmp_path / "nope"), "--config", "configs/econ.py",
               "--judge", str(tiny_dir), "--out", str(tmp_path / "r.json"))  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: --model {tmp_path / 'nope'}: no such model directory"
    ]
    assert not (tmp_path / "r.json").exists()


def test_bad_data_row_names_file_line_field(tiny_dir, data_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows()[0]) + "\n" + json.dumps({**_rows()[1], "label": 7}) + "\n")
    cfg = _cfg(data_file)
    cfg.data.test = (str(bad),)
    with pytest.raises(data.DataError) as e:  # main() prints this as one `error:` line, exit 2
        E.evaluate(cfg, model=str(tiny_dir), judge=str(tiny_dir), out=tmp_path / "r.json")
    assert str(e.value).startswith(f"{bad}:line 2: label") and "\n" not in str(e.value)
    assert not (tmp_path / "r.json").exists()


def test_bad_arguments_fail_before_loading(data_file, tmp_path):
    cfg = _cfg(data_file)
    with pytest.raises(E.EvalError, match="unknown probe 'nope'"):
        E.evaluate(cfg, model="default", judge="default", probe_kinds=["colon", "nope"])
    with pytest.raises(E.EvalError, match="--votes must be >= 1"):
        E.evaluate(cfg, model="default", votes=0)
    with pytest.raises(E.EvalError, match="--judge .*: not a model directory"):
        E.evaluate(cfg, model="default", judge=str(tmp_path))


def test_importable_beside_train():
    import rlvr_jax.train  # noqa: F401  (both define --config: evaluate must not at import)


def test_training_evaluates_with_the_evaluation_judge(tiny_dir, data_file, tmp_path):
    """A run whose evaluation judge is another model directory: eval/accuracy is that judge's
    verdict on the greedy answers (rescored here), the reward judge's figures sit beside it, and
    the judge guards are logged every step."""
    import shutil

    from rlvr_jax import heldout, train
    from rlvr_jax.metrics import read_metrics

    other = tmp_path / "eval_judge"
    shutil.copytree(tiny_dir, other)
    cfg = _cfg(data_file)
    cfg.policy.model, cfg.judge.model, cfg.judge.eval_model = (
        str(tiny_dir),
        str(tiny_dir),
        str(other),
    )
    cfg.data.train = (str(data_file),)
    cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt = 2, 2
    cfg.optim.micro_batch, cfg.rl.beta = 4, 0.0
    cfg.train.steps, cfg.train.ckpt_every, cfg.train.eval_batch = 1, 1, 4
    cfg.train.export_hf = cfg.train.tensorboard = False
    cfg.train.guards.probes = ("colon", "thought_process")
    train.train(cfg, tmp_path / "w")
    recs = read_metrics(tmp_path / "w" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1]
    for r in recs:
        assert {"eval/accuracy", "eval/reward_judge/binary", "eval/rule_binary"} <= set(r)
        assert r["eval/n"] == 7 and "eval/field/STEM" in r
    assert {"guard/probe_yes_rate", "judge/neither_rate", "guard/length_ratio"} <= set(recs[1])
    rows = heldout.read_rows(tmp_path / "w", 1)
    m = load_model(other)
    jcfg = judge_prompts.judge_config_for(other, "auto", max_prompt_len=256, batch_size=4)
    want = scoring.Judge(m.graphdef, m.state, m.tokenizer, jcfg).score(
        [r["query"][0]["content"] for r in _rows()], [r["response"] for r in rows],
        [r["label"] for r in _rows()],
    )  # fmt: skip
    assert [r["correct"] for r in rows] == want.binary.astype(float).tolist()
    assert (tmp_path / "w" / "summary.json").is_file()


def test_evaluate_defaults_to_the_evaluation_judge(tiny_dir, data_file, tmp_path):
    """No --judge: judge.eval_model scores, and the reward judge's figures sit beside its own."""
    import shutil

    other = tmp_path / "eval_judge"
    shutil.copytree(tiny_dir, other)
    cfg = _cfg(data_file)
    cfg.judge.model, cfg.judge.eval_model = str(tiny_dir), str(other)
    res = E.evaluate(cfg, model=str(tiny_dir), limit=4, probe_kinds=(), quiet=True,
                     out=tmp_path / "r.json")  # fmt: skip
    assert res["judge"] == str(other) and res["reward_judge"] == str(tiny_dir)
    assert res["judge_template"] == "auto"  # the evaluation judge's own prompt settings
    rows = _jsonl(E.out_paths(tmp_path / "r.json")["generations"])
    m = load_model(tiny_dir)
    jcfg = judge_prompts.JudgeConfig(template="short", max_prompt_len=256, batch_size=4)
    cols = [[r[k] for r in rows] for k in ("question", "response", "reference")]
    want = scoring.Judge(m.graphdef, m.state, m.tokenizer, jcfg).score(*cols)
    assert [r["reward_judge_binary"] for r in rows] == want.binary.astype(float).tolist()
    assert "reward_judge_binary" in res["table"]


def test_evaluation_judge_report_measures_both_judges_on_policy_answers(tiny_dir, tmp_path):
    """The evaluation judge's quality report on labelled on-policy answers: the held-out split
    only, both judges plain and gated beside the rules, kappa between their verdicts, its targets;
    the judges' columns are the on-policy report's own (`onpolicy.judge_columns`)."""
    import shutil

    from rlvr_jax.judge import agreement, onpolicy
    from rlvr_jax.judge.distill.quality import onpolicy_comparison, summary_lines

    other = tmp_path / "eval_judge"
    shutil.copytree(tiny_dir, other)
    rows = [
        {"id": f"q{i}", "question": f"Q{i}?", "reference": ref, "response": resp,
         "subject": "economics", "correct": c, "cut": False, "split": split}
        for i, (ref, resp, c, split) in enumerate([
            ("Paris", "The answer is Paris.", 1, "heldout"),
            ("Paris", "It is Rome.", 0, "heldout"),
            ("42 units", "So 42.", 1, "heldout"),
            ("42 units", "Um.", 0, "heldout"),
            ("demand", "Demand.", 1, "train"),
        ])
    ]  # fmt: skip
    f = tmp_path / "answers.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = onpolicy_comparison(other, tiny_dir, (str(f),))["answers.jsonl"]
    held = rows[:4]
    ev = onpolicy.judge_columns(other, held, name="e")
    rw = onpolicy.judge_columns(tiny_dir, held, name="r")
    assert got["evaluation_judge"] == onpolicy.reward_quality([1, 0, 1, 0], ev["e"]["soft"],
                                                              ev["e"]["binary"])  # fmt: skip
    assert got["reward_judge_gated"]["n"] == 4 and got["rule_binary"]["auc"] == 0.75
    # The gate zeroes the two answers that name nothing of their reference.
    np.testing.assert_array_equal(ev["e_gated"]["soft"][[1, 3]], 0.0)
    want = agreement.cohen_kappa(ev["e"]["binary"], rw["r"]["binary"])
    assert got["kappa_between_judges"] == pytest.approx(want, nan_ok=True)
    assert set(got["evaluation_judge_targets"]) == {"auc", "auc_over_best_rule", "precision"}
    lines = summary_lines({"onpolicy": {"answers.jsonl": got}})
    assert lines[0] == "on-policy answers.jsonl (held out; 4 answers, 2 right):"
    assert lines[-1].startswith("  Cohen's kappa, evaluation vs reward judge")

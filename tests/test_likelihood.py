"""The likelihood rewards (rlvr_jax/judge/likelihood.py): against a transformers forward by hand,
the RLPR debiasing and filter, responses without an answer line, meshes, resume, no judge built.

The mesh check runs in one subprocess with 8 emulated CPU devices (`python
tests/test_likelihood.py --worker`), as tests/test_mesh.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_hf_model, make_tiny_hf_tokenizer

ROOT = Path(__file__).resolve().parents[1]

SYSTEM = "You are a chatbot who can solve problems."
# (question, response, reference, the reasoning the scored text must hold, has an answer line)
ROWS = [
    ("What is 2+2?", "I add 2 and 2.\nTherefore, the answer is 5.", "4", "I add 2 and 2.", True),
    ("What is 2+2?", "  no answer line, maybe 4\n", "4", "no answer line, maybe 4", False),
    ("Sky colour?", "", "blue sky", "", False),
    (
        "Sky colour?",
        "Hmm. " * 12 + "So the final answer is red",
        "blue sky",
        "Hmm. " * 11 + "Hmm.",
        True,
    ),  # fmt: skip
    ("Sky colour?", "Answer: blue", "blue sky", "", True),
]


@pytest.fixture(scope="module")
def tiny():
    """(transformers model, rlvr_jax LoadedModel) with the same random weights."""
    from rlvr_jax.models.config import ModelConfig
    from rlvr_jax.models.hf_io import state_from_tensors
    from rlvr_jax.models.model_dir import LoadedModel
    from rlvr_jax.models.transformer import abstract_model
    from rlvr_jax.tokenizer import Tokenizer

    hf = make_tiny_hf_model("llama_tied_gqa", seed=3)
    cfg = ModelConfig.from_hf_dict(hf.config.to_dict()).replace(dtype="float32")
    state = state_from_tensors(cfg, ((k, v.numpy()) for k, v in hf.state_dict().items()))
    graphdef, _ = abstract_model(cfg)
    return hf, LoadedModel(cfg, graphdef, state, Tokenizer(make_tiny_hf_tokenizer()))


def _messages(q: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": q}]


def _by_hand(hf, tok, q: str, reasoning: str, ref: str, system: str = SYSTEM) -> tuple:
    """(mean log-prob, mean prob) of the reference's tokens: one plain transformers forward over
    prompt + assistant text + reference, then log_softmax."""
    import torch

    prompt = tok.chat_ids(_messages(q, system))
    lead = (reasoning + "\n" if reasoning else "") + "Therefore, the answer is"
    ref_ids = tok.encode(" " + ref)
    ids = prompt + tok.encode(lead) + ref_ids
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    start = len(ids) - len(ref_ids)
    lp = np.array([float(logp[start + i - 1, t]) for i, t in enumerate(ref_ids)])
    return float(lp.mean()), float(np.exp(lp).mean())


def test_reward_equals_logprob_by_hand(tiny):
    from rlvr_jax.judge.likelihood import LikelihoodScorer

    hf, m = tiny
    scorer = LikelihoodScorer(m.graphdef, m.tokenizer, batch_size=8)
    prompts = [scorer.prompt_ids(_messages(q)) for q, *_ in ROWS]
    got = scorer.score(m.state, prompts, [r[1] for r in ROWS], [r[2] for r in ROWS])
    for i, (q, _, ref, reasoning, line) in enumerate(ROWS):
        want_lp, want_p = _by_hand(hf, m.tokenizer, q, reasoning, ref)
        base_lp, base_p = _by_hand(hf, m.tokenizer, q, "", ref)
        assert got["likelihood"][i] == pytest.approx(want_lp, abs=2e-4), i
        assert got["mean_p"][i] == pytest.approx(want_p, abs=2e-5), i
        assert got["base_p"][i] == pytest.approx(base_p, abs=2e-5), i
        assert got["rlpr"][i] == pytest.approx(np.clip(want_p - base_p, 0, 1), abs=2e-5), i
        assert got["answer_line"][i] == line
    assert abs(got["likelihood"][0] - got["likelihood"][1]) > 1e-2  # the reasoning matters
    # Rows whose reasoning is empty score exactly their prompt's baseline: rlpr 0.
    for i in (2, 4):
        assert got["mean_p"][i] == pytest.approx(got["base_p"][i], abs=1e-6)
        assert got["rlpr"][i] == pytest.approx(0.0, abs=1e-6)


def test_batches_and_padding_do_not_change_scores(tiny):
    """Row order, batch size (1 row per call vs all) and batch padding leave every score as is."""
    from rlvr_jax.judge.likelihood import LikelihoodScorer

    _, m = tiny
    prompts = [m.tokenizer.chat_ids(_messages(q)) for q, *_ in ROWS]
    resp, refs = [r[1] for r in ROWS], [r[2] for r in ROWS]
    whole = LikelihoodScorer(m.graphdef, m.tokenizer, 16).score(m.state, prompts, resp, refs)
    one = LikelihoodScorer(m.graphdef, m.tokenizer, 1).score(m.state, prompts, resp, refs)
    rev = LikelihoodScorer(m.graphdef, m.tokenizer, 16).score(
        m.state, prompts[::-1], resp[::-1], refs[::-1]
    )
    for k in ("likelihood", "rlpr", "mean_p", "base_p"):
        np.testing.assert_allclose(one[k], whole[k], atol=2e-5)
        np.testing.assert_allclose(rev[k][::-1], whole[k], atol=2e-5)


def test_split_reasoning_answer_lines():
    from rlvr_jax.judge.likelihood import assistant_text, split_reasoning

    assert split_reasoning("Work.\nTherefore, the answer is 5.") == ("Work.", True)
    assert split_reasoning("a\nTHEREFORE THE ANSWER IS 5\nSo the answer is 6") == ("a", True)
    assert split_reasoning("x. The answer is: 10.") == ("x.", True)
    assert split_reasoning("So the final answer is 3") == ("", True)
    assert split_reasoning("steps\nFinal answer: 3") == ("steps", True)
    # No answer line: the whole response is the reasoning (stripped), nothing is replaced.
    assert split_reasoning("  it is 42 \n") == ("it is 42", False)
    assert split_reasoning("the answers is 4") == ("the answers is 4", False)
    assert split_reasoning("") == ("", False)
    assert assistant_text("") == "Therefore, the answer is"
    assert assistant_text("it is 42") == "it is 42\nTherefore, the answer is"


def test_split_reasoning_reads_the_answer_lines_the_judge_reads():
    """The reward's answer line is the judge's answer statement (answers.answer_line_start): a
    markdown "**Final Answer:**", "Final answer is" without "the" and "would be" end the reasoning
    too, as they are the answer the judge is shown."""
    from rlvr_jax.judge.answers import answer_view
    from rlvr_jax.judge.likelihood import split_reasoning

    for response, answer in (
        ("Steps.\n**Final Answer:** 5", "5"),
        ("Steps.\nFinal answer is 3", "3"),
        ("Steps.\nThe answer would be 7.", "7"),
    ):
        assert split_reasoning(response) == ("Steps.", True)
        assert answer_view(response).text == answer


def test_debiasing_and_filter_hand_made():
    """rlpr = clip(mean p - baseline p, 0, 1); the filter drops prompts with near-equal rewards."""
    import jax.numpy as jnp

    from rlvr_jax.judge.likelihood import debiased, std_filter

    mean_p = jnp.array([0.6, 0.2, 0.5, 0.9])
    base_p = jnp.array([0.25, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(np.asarray(debiased(mean_p, base_p)), [0.35, 0.0, 0.0, 0.9], 1e-6)
    r = np.array([0.1, 0.1, 0.1, 0.1, 0.0, 0.4, 0.2, 0.2])  # G = 4: stds 0 and ~0.141
    assert std_filter(r, 4, 0.0).all()
    assert std_filter(r, 4, 0.05).tolist() == [False] * 4 + [True] * 4
    assert not std_filter(r, 4, 0.2).any()


def test_likelihood_rewards_build_no_judge(monkeypatch):
    """configs/econ.py names the distilled judge; with a likelihood reward it is never resolved
    (which would distil it), and the rule rewards are still scored."""
    from configs import econ
    from rlvr_jax import builders
    from rlvr_jax import run as rl_run
    from rlvr_jax.judge import runner, specs

    def no_judge(spec):
        raise AssertionError(f"resolved judge model {spec!r}")

    monkeypatch.setattr(specs, "judge_model_dir", no_judge)
    monkeypatch.setattr(specs, "judge_architecture_dir", no_judge)
    cfg = econ.get_config("smoke")
    cfg.policy.model = "synthetic"
    for kind in runner.LIKELIHOOD_REWARDS:
        cfg.judge.reward = kind
        assert specs.judge_spec(cfg) == "" and rl_run.model_configs(cfg)[1] is None
        mesh = builders.build_mesh(cfg)
        rr = runner.RewardRunner.from_config(cfg, mesh, builders.synthetic_model(cfg, mesh))
        assert rr.judge is None and rr.likelihood is not None
        assert set(rr.rules) == {"rule_binary", "rule_jaccard"}
    cfg.judge.reward = "soft"
    assert specs.judge_spec(cfg) == "distilled"


def test_likelihood_run_builds_its_evaluation_judge_even_when_it_is_judge_model(monkeypatch):
    """A likelihood run builds no judge; an evaluation judge named like the config's judge.model
    is still built for the held-out evaluation, not replaced by the judge-less reward runner."""
    from configs import econ
    from rlvr_jax import heldout

    built = []
    monkeypatch.setattr(
        heldout.RewardRunner, "from_config", staticmethod(lambda c, m, p: built.append(c) or "ev")
    )
    cfg = econ.get_config("smoke")
    cfg.judge.eval_model = "distilled"  # the config's judge.model too
    rewards = object()
    cfg.judge.reward = "soft"  # the reward judge is built: it evaluates
    assert heldout.eval_rewards(cfg, None, None, rewards) is rewards and not built
    cfg.judge.reward = "likelihood"
    assert heldout.eval_rewards(cfg, None, None, rewards) == "ev"
    assert built[0].judge.model == "distilled" and built[0].judge.reward == "binary"


def test_resume_equals_uninterrupted_with_likelihood_reward(tmp_path):
    """A run stopped after step 3 (last checkpoint: step 2) resumes to the same metrics."""
    from configs import tiny as tiny_cfg
    from rlvr_jax import train
    from rlvr_jax.metrics import read_metrics

    def cfg():
        c = tiny_cfg.get_config("grpo")
        c.judge.reward = "rlpr"
        c.judge.rlpr_filter = 1e-4
        c.judge.batch_size = 16
        c.rollout.prompts_per_step, c.rollout.samples_per_prompt = 4, 4
        c.optim.micro_batch = 16
        c.train.steps, c.train.ckpt_every, c.train.tensorboard = 4, 2, False
        return c

    strip = lambda recs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]
    whole = train.train(cfg(), tmp_path / "whole")
    assert "time/likelihood_s" in whole[0] and "reward/rlpr" in whole[0]
    train.train(cfg(), tmp_path / "cut", stop_after=3)
    train.train(cfg(), tmp_path / "cut")
    resumed = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]  # step 0: the held-out evaluation
    assert strip(resumed) == strip(read_metrics(tmp_path / "whole" / "metrics.jsonl"))


def test_score_tool_policy_columns(tiny, tmp_path):
    """tools/score.py --policy adds likelihood and rlpr to every row, no judge needed."""
    from rlvr_jax.cli import score
    from rlvr_jax.data import DEFAULT_SYSTEM_PROMPT
    from rlvr_jax.models.model_dir import save_model

    _, m = tiny
    save_model(tmp_path / "policy", m.cfg, m.state, m.tokenizer)
    rows = [{"question": q, "response": r, "reference": a, "id": i}
            for i, (q, r, a, *_) in enumerate(ROWS)]  # fmt: skip
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--policy", str(tmp_path / "policy"), "--input", str(inp), "--out", str(out)]
    assert score.main(args + ["--batch-size", "4"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in got] == list(range(len(ROWS)))
    hf, _ = tiny
    for r, (q, _, ref, reasoning, _) in zip(got, ROWS, strict=True):
        assert "verdict" not in r and {"rule_binary", "rule_jaccard"} <= set(r)
        # score.py prompts with the paper's system prompt and the question
        lp, p = _by_hand(hf, m.tokenizer, q, reasoning, ref, DEFAULT_SYSTEM_PROMPT)
        _, base_p = _by_hand(hf, m.tokenizer, q, "", ref, DEFAULT_SYSTEM_PROMPT)
        assert r["likelihood"] == pytest.approx(lp, abs=2e-4)
        assert r["rlpr"] == pytest.approx(np.clip(p - base_p, 0, 1), abs=2e-5)
    assert score.main(["--input", str(inp), "--out", str(out)]) == 2


def test_onpolicy_report_policy_columns(tiny, tmp_path, capsys):
    """python -m rlvr_jax.onpolicy --policy: the likelihood rewards' AUC against the labels, from
    the same scores as tools/score.py, beside the rules."""
    from rlvr_jax import onpolicy
    from rlvr_jax.data import DEFAULT_SYSTEM_PROMPT
    from rlvr_jax.models.model_dir import save_model

    hf, m = tiny
    save_model(tmp_path / "policy", m.cfg, m.state, m.tokenizer)
    rows = [{"id": f"q{i}", "question": q, "response": r, "reference": a, "subject": "economics",
             "correct": i % 2, "cut": False, "split": "heldout"}
            for i, (q, r, a, *_) in enumerate(ROWS)]  # fmt: skip
    inp, out = tmp_path / "labelled.jsonl", tmp_path / "table.json"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--input", str(inp), "--policy", str(tmp_path / "policy"), "--out", str(out)]
    assert onpolicy.main(args) == 0
    table = json.loads(out.read_text())
    lik = [_by_hand(hf, m.tokenizer, q, reasoning, ref, DEFAULT_SYSTEM_PROMPT)[0]
           for q, _, ref, reasoning, _ in ROWS]  # fmt: skip
    from sklearn.metrics import roc_auc_score

    want = roc_auc_score([r["correct"] for r in rows], lik)
    assert table["likelihood"]["auc"] == pytest.approx(want, abs=1e-9)
    assert {"rule_binary", "rule_jaccard", "rlpr"} <= set(table)
    assert "| likelihood |" in capsys.readouterr().out


# ------------------------------------------------------------------ offline quality table


def test_crossfit_threshold_hand_made():
    from rlvr_jax.judge.agreement import best_threshold, crossfit_binary

    s, y = np.array([-3.0, -2.0, -1.0, -0.5]), np.array([0, 0, 1, 1])
    assert best_threshold(s, y) == pytest.approx(-1.5)
    assert best_threshold(s, 1 - y) == pytest.approx(-3.0 - 1.0)  # all YES beats any cut (0.5)
    groups = ["q1", "q2", "q1", "q2"] * 2
    # 0/1 scores are their own verdicts; a score's threshold comes from the other fold's rows.
    assert crossfit_binary([1, 0, 0, 1] * 2, [0] * 8, groups).tolist() == [1, 0, 0, 1] * 2
    # Separable scores over 20 questions: each fold's threshold, chosen on the other, is right.
    y = np.arange(40) % 2
    scores = np.where(y == 1, -1.0, -2.0) + np.linspace(0, 0.5, 40)
    got = crossfit_binary(scores, y, [f"q{i % 20}" for i in range(40)])
    assert got.tolist() == y.tolist()
    # Labels that contradict the score: each fold is cut at its other fold's best (all NO here).
    assert crossfit_binary(scores, 1 - y, [f"q{i % 20}" for i in range(40)]).sum() in (0, 40)


def test_agreement_cli_scores_columns(tmp_path, capsys):
    """judge_agreement.py --scores compares score columns (no verdict needed) in one table."""
    from rlvr_jax.cli import judge_agreement

    rows = [{"question": f"q{i % 5}", "reference": "r", "response": f"a{i}", "correct": i % 2,
             "likelihood": -3.0 + i % 2 + 0.01 * i, "rule_binary": 1 - i % 2, "subject": "s"}
            for i in range(20)]  # fmt: skip
    f = tmp_path / "scored.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rep.json"
    args = [str(f), "--scores", "likelihood,rule_binary", "--label-field", "correct"]
    assert judge_agreement.main(args + ["--json", str(out)]) == 0
    assert "Quality on labelled rows, all subjects" in capsys.readouterr().out
    q = json.loads(out.read_text())["quality"]
    assert q["likelihood"]["all"]["auc"] == 1.0 and q["likelihood"]["all"]["accuracy"] == 1.0
    assert q["rule_binary"]["all"]["auc"] == 0.0 and q["rule_binary"]["all"]["accuracy"] == 0.0
    assert q["likelihood"]["all"]["calibration"] is None  # log-probs are not probabilities
    bad = [str(f), "--scores", "rlpr", "--label-field", "correct"]
    assert judge_agreement.main(bad) == 2
    assert "rlpr: missing" in capsys.readouterr().err


# ------------------------------------------------------------------------------- meshes


def _worker() -> dict:
    import jax

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax import synthetic
    from rlvr_jax.judge.likelihood import LikelihoodScorer
    from rlvr_jax.models.config import ModelConfig
    from rlvr_jax.models.transformer import init_model

    assert jax.device_count() == 8
    tok = synthetic.make_tokenizer()
    cfg = ModelConfig(model_type="llama", vocab_size=tok.vocab_size, hidden_size=64,
                      intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, rope_theta=1e5)  # fmt: skip
    graphdef, state0 = init_model(cfg, 0)
    state0 = jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, state0)  # O(5) logits
    host = jax.tree.map(np.asarray, state0)
    words = synthetic.WORDS
    prompts, responses, refs = [], [], []
    for i in range(8):  # 4 prompts x 2 samples
        w = words[i // 2]
        prompts.append(tok.chat_ids([{"role": "user", "content": f"say {w}"}]))
        responses.append(" ".join(words[(i + k) % 10] for k in range(i + 1)))
        refs.append(w)
    out = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
        devices = jax.devices()[: int(np.prod(shape))]
        m = mesh_lib.make_mesh(shape, devices)
        state = mesh_lib.shard_params(host, m, mesh_lib.TRAIN_RULES)
        scorer = LikelihoodScorer(graphdef, tok, batch_size=8, mesh=m)
        with jax.set_mesh(m):
            got = scorer.score(state, prompts, responses, refs)
        out[",".join(map(str, shape))] = {k: v.tolist() for k, v in got.items()}
    return out


def test_reward_identical_on_meshes_111_and_222():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, "--worker"], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = r["1,1,1"], r["2,2,2"]
    assert np.ptp(one["likelihood"]) > 0.1  # rows differ: the comparison means something
    for k in ("likelihood", "rlpr", "mean_p", "base_p"):
        np.testing.assert_allclose(two[k], one[k], atol=1e-5, err_msg=k)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(_worker()))

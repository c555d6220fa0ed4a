"""The judge: prompt, P(YES) parity with transformers, batch independence, budget cuts, rules."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_hf_model

from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import rules, scoring
from rlvr_jax.judge.runner import RewardRunner
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.hf_io import state_from_tensors
from rlvr_jax.models.transformer import abstract_model
from rlvr_jax.tokenizer import left_pad

# The byte-level tiny tokenizer has no multi-letter tokens: single letters stand in for YES / NO.
TINY = judge_prompts.JudgeConfig(
    template="short",
    yes_spellings=("Y", " Y", "y"),
    no_spellings=("N", " N", "n"),
    max_prompt_len=256,
    buckets=(64, 128, 256),
)


def jax_from_torch(model):
    cfg = ModelConfig.from_hf_dict(model.config.to_dict()).replace(dtype="float32")
    tensors = ((k, v.detach().float().numpy()) for k, v in model.state_dict().items())
    return abstract_model(cfg)[0], state_from_tensors(cfg, tensors, source="torch")


@pytest.fixture(scope="module", params=["qwen2_bias_untied_1kv", "llama_tied_gqa"])
def tiny(request, tiny_tokenizer):
    hf = make_tiny_hf_model(request.param, seed=3)
    graphdef, state = jax_from_torch(hf)
    return hf, scoring.Judge(graphdef, state, tiny_tokenizer, TINY)


ROWS = [
    ("What is 2+2?", "Let me think.\n\nThe answer is 4.\n\n", "4"),
    ("Name the capital of France, please, in one word.", "Paris", "Paris"),
    ("Q?", "first line\nsecond line\n  \n", "second line"),
]


def test_paper_prompt_lines():
    lines = judge_prompts.PAPER_PROMPT.split("\n")
    assert lines[0].startswith("Given a problem, determine whether the final answer")
    assert lines[-1] == "" and lines[-2] == "**Output:**  "  # ends with a newline
    for line in lines[:-1]:
        if line and line != "---":
            assert line.endswith("  ") and not line.endswith("   "), repr(line)
        else:
            assert line in ("", "---")
    assert judge_prompts.PAPER_PROMPT.count("{question}  \n") == 1
    assert "{response}  \n\n**Reference Answer:**  \n{reference}  \n" in judge_prompts.PAPER_PROMPT
    assert len(lines) == 25  # 24 lines, each ending in a newline


def test_last_nonempty_line():
    assert rules.last_nonempty_line("a\nb  \n\n   \n") == "b"
    assert rules.last_nonempty_line("  only  ") == "only"
    assert rules.last_nonempty_line("\n \n") == "" and rules.last_nonempty_line("") == ""


def test_prompt_holds_last_line_inside_chat_template(tiny_tokenizer):
    p = judge_prompts.build_judge_prompt(
        tiny_tokenizer, *ROWS[0], judge_prompts.JudgeConfig(view="last_line")
    )
    text = tiny_tokenizer.decode(p.ids, skip_special_tokens=False)
    user = judge_prompts.PAPER_PROMPT.format(
        question=ROWS[0][0], response="The answer is 4.", reference="4"
    )
    assert text == (
        f"<|im_start|>system\n{judge_prompts.SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "Let me think" not in text
    short = judge_prompts.build_judge_prompt(
        tiny_tokenizer,
        *ROWS[0],
        judge_prompts.JudgeConfig(
            template="short", system=None, chat_template=False, view="last_line"
        ),
    )
    assert tiny_tokenizer.decode(short.ids) == judge_prompts.SHORT_PROMPT.format(
        question=ROWS[0][0], response="The answer is 4.", reference="4"
    )


def hf_p_yes(hf, ids: list[int], yes_ids, no_ids) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, -1].double()
    probs = torch.softmax(logits, -1).numpy()
    return float(probs[yes_ids].sum()), float(probs[no_ids].sum())


def test_p_yes_matches_transformers_and_ignores_neighbours(tiny):
    hf, judge = tiny
    rows = ROWS * 3
    prompts = judge.prompts(*zip(*rows, strict=True))
    batch = judge.score_prompts(prompts)
    yes, no = np.asarray(judge.yes_ids), np.asarray(judge.no_ids)
    for i in range(len(ROWS)):
        ref_yes, ref_no = hf_p_yes(hf, prompts[i].ids, yes, no)
        assert abs(batch.p_yes[i] - ref_yes) <= 1e-4 and abs(batch.p_no[i] - ref_no) <= 1e-4
    # The same row alone (other padding, other bucket, other neighbours) scores the same.
    for i in range(len(ROWS)):
        alone = judge.score_prompts([prompts[i]])
        np.testing.assert_allclose(alone.p_yes, batch.p_yes[i : i + 1], atol=1e-6)
        np.testing.assert_allclose(alone.soft, batch.soft[i : i + 1], atol=1e-6)
    # Repeated rows in one batch agree with each other.
    np.testing.assert_allclose(batch.p_yes[:3], batch.p_yes[3:6], atol=1e-6)


def test_soft_binary_normalized_formulas(tiny):
    _, judge = tiny
    prompts = judge.prompts(*zip(*ROWS, strict=True))
    greedy = int(judge.score_prompts(prompts[:1]).greedy[0])
    others = [t for t in range(3, 40) if t != greedy]

    def rigged(yes: list[int], no: list[int]) -> scoring.Rewards:
        j = scoring.Judge(judge.graphdef, judge.state, judge.tok, TINY)
        j.yes_ids, j.no_ids = jnp.asarray(yes, jnp.int32), jnp.asarray(no, jnp.int32)
        return j.score_prompts(prompts[:1])

    yes = rigged([greedy, others[0]], others[1:3])  # the greedy token is a YES spelling
    no = rigged(others[1:3], [greedy, others[0]])  # ... a NO spelling
    neither = rigged(others[:2], others[2:4])
    assert (yes.verdict[0], no.verdict[0], neither.verdict[0]) == (1, 0, -1)
    # Three-valued: a first token that is neither spelling is reported as NEITHER, not as NO.
    labels = [scoring.verdict_label(r.verdict[0]) for r in (yes, no, neither)]
    assert labels == ["YES", "NO", "NEITHER"]
    assert (
        scoring.neither_rate(np.array([yes.verdict[0], no.verdict[0], neither.verdict[0]])) == 1 / 3
    )
    assert (yes.binary[0], no.binary[0], neither.binary[0]) == (1.0, 0.0, 0.0)
    assert yes.soft[0] == pytest.approx(yes.p_yes[0], abs=1e-7)
    assert no.soft[0] == pytest.approx(1.0 - no.p_no[0], abs=1e-7)
    assert neither.soft[0] == 0.0 and 0 < neither.p_yes[0] < 1
    for r in (yes, no, neither):
        assert r.soft_normalized[0] == pytest.approx(r.p_yes[0] / (r.p_yes[0] + r.p_no[0]), 1e-5)


def test_reward_runner_reports_the_verdict_for_neither_rate(tiny):
    """The trainer logs judge/neither_rate from RewardRunner.score's judge_verdict column."""
    from rlvr_jax import data

    _, judge = tiny
    rows = [data.Example(str(i), q, (), a, "s", "STEM") for i, (q, _, a) in
            enumerate(ROWS)]  # fmt: skip
    out = RewardRunner("soft", judge).score(rows, [r for _, r, _ in ROWS])
    want = judge.score(*zip(*ROWS, strict=True))
    np.testing.assert_array_equal(out["judge_verdict"], want.verdict)
    assert scoring.neither_rate(out["judge_verdict"]) == np.mean(want.verdict == -1)
    np.testing.assert_array_equal(out["soft"][out["judge_verdict"] == -1], 0.0)


def test_yes_bias_is_a_logit_offset_on_the_yes_spellings(tiny, tmp_path):
    """A calibrated judge (yes_bias b) reads the distribution with b added to the YES spellings'
    logits: P(YES) odds scale by e^b against every other token, P(NO) by the same normaliser;
    the calibration is stored in judge.json and read back by judge_config_for."""
    import dataclasses
    import json

    _, judge = tiny
    prompts = judge.prompts(*zip(*ROWS, strict=True))
    base = judge.score_prompts(prompts)
    b = 1.5
    cal = scoring.Judge(
        judge.graphdef, judge.state, judge.tok, dataclasses.replace(TINY, yes_bias=b)
    )
    got = cal.score_prompts(prompts)
    z = 1.0 - base.p_yes + base.p_yes * np.exp(b)
    np.testing.assert_allclose(got.p_yes, base.p_yes * np.exp(b) / z, rtol=1e-5)
    np.testing.assert_allclose(got.p_no, base.p_no / z, rtol=1e-5)
    assert not np.allclose(got.p_yes, base.p_yes)
    settings = dataclasses.replace(TINY, yes_bias=b).prompt_settings()
    (tmp_path / judge_prompts.JUDGE_FILE).write_text(json.dumps(settings))
    assert judge_prompts.judge_config_for(tmp_path).yes_bias == b
    del settings["yes_bias"]  # a file written before judges were calibrated
    (tmp_path / judge_prompts.JUDGE_FILE).write_text(json.dumps(settings))
    assert judge_prompts.judge_config_for(tmp_path).yes_bias == 0.0


def test_empty_response_gets_zero_without_failing(tiny):
    _, judge = tiny
    r = judge.score(["Q1", "Q2", "Q3"], ["", "answer", " \n\n"], ["a", "answer", "b"])
    assert r.empty.tolist() == [True, False, True]
    for field in (r.binary, r.soft, r.soft_normalized):
        assert field[0] == 0.0 and field[2] == 0.0
    assert r.p_yes[1] > 0 and np.isfinite(r.p_yes).all()
    # Never shown to the judge: a sure NO, and only the one real row reaches the model.
    assert r.p_yes[0] == r.p_yes[2] == 0.0 and r.p_no[0] == r.p_no[2] == 1.0
    assert r.greedy[0] == int(judge.no_ids[0]) and r.verdict[0] == 0
    seen = []
    real = judge._score_batch
    judge._score_batch = lambda rows, lp: seen.append(len(rows)) or real(rows, lp)
    try:
        judge.score(["Q1", "Q2", "Q3"], ["", "answer", " \n\n"], ["a", "answer", "b"])
    finally:
        del judge._score_batch
    assert seen == [1]


def test_grouped_prefixes_equal_full_forward(tiny):
    """A rollout's answers to one question share the question and reference as one prefix, run
    once; mixed with other questions, identical answers and a batch split, every row scores as
    the full forward scores it."""
    _, judge = tiny
    qs = ["What is the price elasticity of a vertical demand curve?", "Name the capital of France."]
    refs = ["zero", "Paris"]
    answers = [["It is zero.", "The answer is 0.", "Infinite, I think.", "It is zero."],
               ["Paris", "Lyon is the capital of France.", "Marseille"]]  # fmt: skip
    q = [qs[i] for i, a in enumerate(answers) for _ in a]
    r = [refs[i] for i, a in enumerate(answers) for _ in a]
    prompts = judge.prompts(q, [x for a in answers for x in a], r)
    lp = len(judge.prefix_ids)
    cuts = scoring.shared_prefix_lengths([p.ids for p in prompts], lp)
    assert min(cuts[:4]) > lp + 8 and min(cuts[4:]) > lp + 8  # the question is in the prefix
    assert all(c < len(p.ids) for p, c in zip(prompts, cuts, strict=True))
    assert scoring.shared_prefix_lengths([prompts[0].ids, prompts[5].ids], lp) == [lp, lp]
    seqs = [p.ids for p in prompts]
    ids, mask = left_pad(seqs, max(map(len, seqs)), judge.tok.pad_id)
    full = scoring.judge_scores(judge.graphdef, judge.state, ids, mask, judge.yes_ids,
                                judge.no_ids, jnp.ones(len(seqs), bool))  # fmt: skip
    small = dataclasses.replace(judge.cfg, batch_size=4)  # 7 rows: two batches
    for j in (judge, scoring.Judge(judge.graphdef, judge.state, judge.tok, small)):
        got = j.score_prompts(prompts)
        np.testing.assert_allclose(got.p_yes, np.asarray(full.p_yes), atol=1e-6)
        np.testing.assert_allclose(got.p_no, np.asarray(full.p_no), atol=1e-6)
        np.testing.assert_array_equal(got.greedy, np.asarray(full.greedy))


def test_over_budget_cuts_question_then_response_never_reference(tiny_tokenizer):
    tok = tiny_tokenizer
    question = "Q" * 300 + " What is the answer?"
    response = "reasoning\n" + "R" * 100 + " final answer: 42"
    reference = "forty-two"

    def build(budget: int) -> tuple[judge_prompts.JudgePrompt, str]:
        cfg = judge_prompts.JudgeConfig(max_prompt_len=budget, view="last_line")
        p = judge_prompts.build_judge_prompt(tok, question, response, reference, cfg)
        return p, tok.decode(p.ids, skip_special_tokens=False)

    full, _ = build(2048)
    assert not (full.cut_question or full.cut_response or full.cut_hard)
    budget = len(full.ids) - 150
    p, text = build(budget)
    assert len(p.ids) <= budget and p.cut_question and not p.cut_response and not p.cut_hard
    assert (
        judge_prompts.CUT_MARK in text and "What is the answer?" in text and text.count("Q") < 300
    )
    assert "R" * 100 + " final answer: 42" in text and f"{reference}  \n" in text
    # A budget that even a removed question does not meet: the response line is cut from the left.
    budget = len(full.ids) - 300 - 60
    p, text = build(budget)
    assert len(p.ids) <= budget and p.cut_question and p.cut_response and not p.cut_hard
    assert "final answer: 42  \n" in text and f"{reference}  \n" in text
    # Absurdly small: the prompt's tail is kept, no crash, counted.
    p, _ = build(20)
    assert len(p.ids) == 20 and p.cut_hard


def test_judge_counts_cuts(tiny):
    _, judge = tiny
    small = scoring.Judge(
        judge.graphdef,
        judge.state,
        judge.tok,
        dataclasses.replace(TINY, max_prompt_len=200),
    )
    r = small.score(["x" * 500, "short"], ["a", "b"], ["a", "b"])
    assert r.cut_question == 1 and r.cut_response == 0 and np.isfinite(r.soft).all()


def test_rule_rewards():
    assert rules.rule_binary("The answer is  Paris.", "paris") == 1.0
    assert rules.rule_binary("The answer is London.", "Paris") == 0.0
    assert rules.rule_binary("", "Paris") == 0.0 and rules.rule_binary("x", "") == 0.0
    assert rules.rule_jaccard("thinking\nthe answer is paris", "Paris") == pytest.approx(1 / 4)
    assert rules.rule_jaccard("", "") == 0.0
    assert rules.math_equivalent("Therefore, the answer is $\\frac{1}{2}$", "0.5") == 1.0
    assert rules.math_equivalent("Therefore, the answer is 3", "0.5") == 0.0
    assert rules.math_equivalent("", "0.5") == 0.0


def test_content_word_gate():
    # Stop words and case never open the gate; numbers are content words.
    assert rules.shares_content_word("I think it is Accommodation.", "accommodation") == 1.0
    assert rules.shares_content_word("It is the one of them.", "the law of demand") == 0.0
    assert rules.shares_content_word("Um.", "law of demand") == 0.0
    assert rules.shares_content_word("The price rises to 42.", "42 units") == 1.0
    assert rules.shares_content_word("anything", "the") == 1.0  # nothing to gate on


def test_soft_gated_reward_is_soft_where_the_gate_opens(tiny):
    from rlvr_jax import data

    _, tiny_judge = tiny
    # Nearly every token a YES spelling, so the judge pays both answers something.
    judge = scoring.Judge(tiny_judge.graphdef, tiny_judge.state, tiny_judge.tok, TINY)
    vocab = int(judge.tok.vocab_size)
    judge.yes_ids = jnp.arange(3, vocab - 2, dtype=jnp.int32)
    judge.no_ids = jnp.asarray([vocab - 2, vocab - 1], jnp.int32)
    rows = [data.Example(str(i), q, (), a, "s", "STEM") for i, (q, a) in
            enumerate((("Capital?", "Paris"), ("Capital?", "Paris")))]  # fmt: skip
    responses = ["The answer is Paris.", "The answer is Rome."]
    out = RewardRunner("soft_gated", judge).score(rows, responses)
    assert out["soft_gated"][0] == out["soft"][0] and out["soft"][0] > 0
    assert out["soft_gated"][1] == 0.0 and out["soft"][1] > 0
    with pytest.raises(data.DataError, match="needs a judge"):
        RewardRunner("soft_gated", None)


def test_judge_rejects_vocab_without_yes(tiny_tokenizer):
    graphdef, state = jax_from_torch(make_tiny_hf_model("llama_tied_gqa"))
    with pytest.raises(ValueError, match="YES"):
        scoring.Judge(
            graphdef, state, tiny_tokenizer, judge_prompts.JudgeConfig()
        )  # "YES" is 3 byte tokens here


@pytest.mark.slow
def test_real_default_model_p_yes_matches_transformers(default_model_dir):
    """One row on the real SmolLM2-135M-Instruct: P(YES) equals transformers' (from the GGUF)."""
    from transformers import AutoModelForCausalLM

    from rlvr_jax.models.default import default_gguf_path
    from rlvr_jax.models.model_dir import load_model

    m = load_model(default_model_dir)
    judge = scoring.Judge(m.graphdef, m.state, m.tokenizer)
    prompt = judge.prompts(["What is the capital of France?"], ["It is Paris."], ["Paris"])[0]
    ours = judge.score_prompts([prompt])
    gguf = default_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    ref_yes, ref_no = hf_p_yes(hf, prompt.ids, np.asarray(judge.yes_ids), np.asarray(judge.no_ids))
    assert abs(ours.p_yes[0] - ref_yes) <= 1e-4 and abs(ours.p_no[0] - ref_no) <= 1e-4
    assert ref_yes + ref_no > 1e-3  # the spellings carry real mass: the check is not vacuous


def test_shared_prefix_path_equals_full_forward(tiny):
    """Rows sharing the template prefix are scored with the prefix computed once; the result is
    the full forward's. A row that lost the prefix (tail kept) takes the full path in the same
    call."""
    _, judge = tiny
    prompts = judge.prompts(*zip(*ROWS, strict=True))
    lp = len(judge.prefix_ids)
    assert lp > 5 and all(p.ids[:lp] == judge.prefix_ids for p in prompts)
    tail = judge_prompts.JudgePrompt(prompts[0].ids[lp + 3 :])  # no longer starts with the prefix
    got = judge.score_prompts(prompts + [tail])
    seqs = [p.ids for p in prompts + [tail]]
    ids, mask = left_pad(seqs, max(map(len, seqs)), judge.tok.pad_id)
    valid = jnp.ones(len(seqs), bool)
    full = scoring.judge_scores(
        judge.graphdef, judge.state, ids, mask, judge.yes_ids, judge.no_ids, valid
    )
    np.testing.assert_allclose(got.p_yes, np.asarray(full.p_yes), atol=1e-6)
    np.testing.assert_allclose(got.p_no, np.asarray(full.p_no), atol=1e-6)
    np.testing.assert_array_equal(got.greedy, np.asarray(full.greedy))


def test_judge_prompt_reads_the_committed_answer(tiny_tokenizer):
    cfg = judge_prompts.JudgeConfig(template="short", system=None, chat_template=False)
    resp = "Let me think about supply.\nTherefore, the answer is $25.\nIt was a long road to get"
    p = judge_prompts.build_judge_prompt(tiny_tokenizer, "Q?", resp, "$25", cfg, cut=True)
    assert tiny_tokenizer.decode(p.ids).endswith("Student's final answer: $25") and not p.empty
    old = dataclasses.replace(cfg, view="last_line")
    p = judge_prompts.build_judge_prompt(tiny_tokenizer, "Q?", resp, "$25", old, cut=True)
    assert tiny_tokenizer.decode(p.ids).endswith(
        "Student's final answer: It was a long road to get"
    )


def test_no_committed_answer_scores_zero_and_no(tiny):
    """A cut-off ramble that commits to nothing gets every judge reward 0 and the verdict NO,
    whatever the model would say; the reward runner reports it as no_answer."""
    from rlvr_jax.data import Example

    _, judge = tiny
    ex = Example(id="q1", question="What is the price?", messages=(), reference="$25",
                 subject="economics", field="")  # fmt: skip
    responses = ["To find the price we first need to look at the", "Therefore, the answer is $25."]
    res = judge.score([ex.question] * 2, responses, [ex.reference] * 2, cut=[True, False])
    assert res.empty.tolist() == [True, False] and res.verdict[0] == 0
    assert res.soft[0] == 0.0 and res.binary[0] == 0.0 and res.p_yes[1] > 0
    out = RewardRunner("soft", judge, ("rule_binary",)).score(
        [ex, ex], responses, cut=[True, False]
    )
    assert out["no_answer"].tolist() == [1.0, 0.0] and out["soft"][0] == 0.0
    # Unknown cut: a finished short fragment is an answer, shown to the judge.
    assert not judge.score(["Q"], ["To find the price"], ["$25"]).empty[0]

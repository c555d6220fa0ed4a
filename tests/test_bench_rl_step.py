"""bench/rl_step.py's TRL side scores what rlvr_jax scores: its reward functions against
rlvr_jax's rule and judge on the same strings (no timing here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import scoring
from rlvr_jax.judge.rules import rule_binary

ROOT = Path(__file__).resolve().parents[1]
# The byte-level tiny tokenizer has no multi-letter tokens: single letters stand in for YES / NO;
# the offset makes some greedy verdicts YES, so that soft rewards are not all 0.
TINY = judge_prompts.JudgeConfig(
    template="short",
    yes_spellings=("Y", "y"),
    no_spellings=("N", "n"),
    max_prompt_len=256,
    buckets=(64, 128, 256),
    yes_bias=4.0,
)
ROWS = [
    ("What is 2+2?", "Let me think.\nTherefore, the answer is 4.", "4"),
    ("Name the capital of France.", "It is Paris.", "Paris"),
    ("Q?", "", "x"),  # commits to nothing: 0 without the judge on both sides
    ("Price elasticity of a vertical demand curve?", "The answer is zero.", "0"),
    ("Who sets the policy rate?", "I think the central", "the central bank"),
]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rule_reward_is_rlvr_jax_rule():
    trl_grpo = _load("trl_grpo")
    texts = [r for _, r, _ in ROWS] + ["THE ANSWER IS  PARIS", "parisian"]
    refs = [a for _, _, a in ROWS] + ["paris", "Paris"]
    ours = [rule_binary(t, a) for t, a in zip(texts, refs, strict=True)]
    chats = [[{"role": "assistant", "content": t}] for t in texts]  # conversational completions
    assert trl_grpo.rule_reward(chats, reference=refs, prompts=texts) == ours
    assert trl_grpo.rule_reward(texts, reference=refs) == ours
    assert sum(ours) >= 2


def test_parse_args_defaults_and_errors():
    rl_step = _load("rl_step")
    a = rl_step.parse_args(["--reward", "rule"])
    assert (a.prompts, a.samples, a.max_new_tokens, a.beta, a.skip_trl) == (4, 4, 96, 0.01, False)
    with pytest.raises(SystemExit):
        rl_step.parse_args(["--reward", "judge", "--samples", "1"])
    cfg = rl_step.jax_config(rl_step.parse_args(["--reward", "rule", "--prompts", "2"]), None)
    assert (cfg.rl.algo, cfg.rl.kl_mode, cfg.judge.model, cfg.judge.reward) == (
        "grpo",
        "loss",
        "",
        "rule_binary",
    )
    assert cfg.rollout.prompts_per_step == 2 and cfg.optim.min_lr_ratio == 1.0


def test_torch_judge_reward_is_rlvr_jax_soft_reward(tiny_hf_dirs, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax.models.config import ModelConfig
    from rlvr_jax.models.hf_io import state_from_tensors
    from rlvr_jax.models.transformer import abstract_model

    trl_grpo = _load("trl_grpo")
    hf_dir = tiny_hf_dirs["llama_tied_gqa"]
    stop = tiny_tokenizer.stop_ids
    judge_t = trl_grpo.TorchJudge(str(hf_dir), TINY, stop)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    cfg = ModelConfig.from_hf_dict(hf.config.to_dict()).replace(dtype="float32")
    tensors = ((k, v.detach().float().numpy()) for k, v in hf.state_dict().items())
    state = state_from_tensors(cfg, tensors, source="torch")
    judge = scoring.Judge(abstract_model(cfg)[0], state, tiny_tokenizer, TINY)

    q, r, a = (list(c) for c in zip(*ROWS, strict=True))
    # The last response was cut by the token limit (no stop token among its ids).
    ids = [[*tiny_tokenizer.encode(x), stop[0]] for x in r[:-1]] + [tiny_tokenizer.encode(r[-1])]
    cut = [False] * (len(r) - 1) + [True]
    for qi, ri, ai, ci in zip(q, r, a, cut, strict=True):
        text = judge_t.prompt_text(qi, ri, ai, ci)
        want = judge_prompts.build_judge_prompt(tiny_tokenizer, qi, ri, ai, TINY, ci)
        if want.empty:
            assert text is None
        else:
            assert judge_t.tok(text, add_special_tokens=False)["input_ids"] == want.ids
    got = judge_t(completions=r, completion_ids=ids, question=q, reference=a, prompts=q)
    want = judge.score(q, r, a, cut=cut).soft
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[2] == 0.0 and got[4] == 0.0  # nothing committed
    assert any(g > 0 for g in got)
    # The calibration offset is applied: without it the rewards differ.
    plain = trl_grpo.TorchJudge(str(hf_dir), dataclasses.replace(TINY, yes_bias=0.0), stop)
    assert plain(completions=r, completion_ids=ids, question=q, reference=a) != got

"""tools/sample.py and tools/score.py on a tiny model directory: outputs, seeds, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_hf_model, make_tiny_hf_tokenizer

from rlvr_jax.cli import sample, score
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.hf_io import state_from_tensors
from rlvr_jax.models.model_dir import save_model
from rlvr_jax.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama model directory whose tokenizer has YES / NO as single (added) tokens."""
    hf = make_tiny_hf_model("llama_tied_gqa", seed=4)
    cfg = ModelConfig.from_hf_dict(hf.config.to_dict()).replace(dtype="float32")
    state = state_from_tensors(cfg, ((k, v.numpy()) for k, v in hf.state_dict().items()))
    tok = make_tiny_hf_tokenizer()
    tok.add_tokens(["YES", "NO", " YES", " NO"])  # ids 259..262, inside the 320-id vocabulary
    path = tmp_path_factory.mktemp("tools") / "tiny"
    save_model(path, cfg, state, Tokenizer(tok))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_rows_fields_and_seed(model_dir, tmp_path):
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "Hello there", "id": 1},
            {"messages": [{"role": "user", "content": "Hi"}], "id": 2},
            {"prompt_ids": [5, 6, 7, 8], "id": 3},
        ],
    )
    base = ["--model", model_dir, "--prompts", inp, "--max-new-tokens", "6", "--n", "2"]
    base = [str(a) for a in base] + ["--batch-size", "2"]
    assert sample.main(base + ["--out", str(tmp_path / "g.jsonl"), "--temperature", "0"]) == 0
    greedy = read_jsonl(tmp_path / "g.jsonl")
    assert [r["id"] for r in greedy] == [1, 1, 2, 2, 3, 3]
    assert [r["sample"] for r in greedy] == [0, 1] * 3
    for r in greedy:
        assert 1 <= len(r["completion_ids"]) <= 6 and len(r["logprobs"]) == len(r["completion_ids"])
        assert all(lp <= 0 for lp in r["logprobs"]) and isinstance(r["completion"], str)
        # stopped: a stop token ended it; one shorter than --max-new-tokens can only have stopped.
        assert isinstance(r["stopped"], bool) and (r["stopped"] or len(r["completion_ids"]) == 6)
    for a, b in zip(greedy[::2], greedy[1::2], strict=True):
        assert a["completion_ids"] == b["completion_ids"]  # greedy: the G samples agree
    outs = []
    for name in ("s1", "s2"):
        args = base + ["--out", str(tmp_path / name), "--seed", "7", "--top-k", "20"]
        assert sample.main(args) == 0
        outs.append(read_jsonl(tmp_path / name))
    assert outs[0] == outs[1]


def test_sample_no_chat_template_uses_raw_text(model_dir, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "abc"}])
    out = tmp_path / "o.jsonl"
    args = ["--model", model_dir, "--prompts", inp, "--out", out, "--max-new-tokens", "6"]
    args += ["--no-chat-template", "--temperature", "0", "--n", "2", "--batch-size", "2"]
    assert sample.main([str(a) for a in args]) == 0  # the shapes of the test above: no compile
    assert len(read_jsonl(out)) == 2


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"prompt": "ok"}, "{not json"], "in.jsonl:line 2: not valid JSON"),
        ([{"prompt": "ok"}, {"prompt_ids": [1, "x"]}], "in.jsonl:line 2: prompt_ids:"),
        ([{"text": "no prompt"}], "in.jsonl:line 1: prompt: missing"),
        ([{"messages": [{"role": "user"}]}], "in.jsonl:line 1: messages[0].content:"),
    ],
)
def test_sample_malformed_row_is_one_line(model_dir, tmp_path, capsys, rows, needle):
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert sample.main(["--model", str(model_dir), "--prompts", str(inp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert not out.exists()


def test_score_fields_empty_response_and_order(model_dir, tmp_path):
    rows = [
        {"question": "2+2?", "reference": "4", "response": "so\nthe answer is 4", "subject": "m"},
        {"question": "Capital of France?", "reference": "Paris", "response": ""},
        {"question": "x" * 3000, "reference": "y", "response": "z"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    args = ["--judge", model_dir, "--input", inp, "--out", out, "--template", "short"]
    assert score.main([str(a) for a in args] + ["--max-prompt-len", "512", "--math"]) == 0
    got = read_jsonl(out)
    assert [r["question"] for r in got] == [r["question"] for r in rows]
    assert got[0]["subject"] == "m"
    for r in got:
        assert (
            r["verdict"] in ("YES", "NO", "NEITHER")
            and 0 <= r["p_yes"] <= 1
            and 0 <= r["p_no"] <= 1
        )
        assert 0 <= r["soft"] <= 1 and r["binary"] == int(r["verdict"] == "YES")
        if r["verdict"] == "NEITHER":  # Eq. 4: soft 0 when the first token is neither spelling
            assert r["soft"] == 0
    assert got[0]["rule_binary"] == 1 and got[0]["rule_jaccard"] == pytest.approx(1 / 4)
    assert got[0]["rule_math"] == 1
    assert got[1]["soft"] == 0 and got[1]["binary"] == 0 and got[1]["soft_normalized"] == 0


def test_score_uses_the_prompt_settings_stored_with_the_judge(model_dir, tmp_path):
    """A distilled judge carries judge.json (the prompts it was trained on); score.py's default
    --template auto uses it, and differs from the paper prompt it would otherwise use."""
    import shutil

    import numpy as np

    from rlvr_jax.judge import prompts as judge_prompts
    from rlvr_jax.judge import scoring
    from rlvr_jax.models.model_dir import load_model

    judge = tmp_path / "judge"
    shutil.copytree(model_dir, judge)
    settings = {
        "template": "Q: {question}\nRef: {reference}\nSame? {response}",
        "system": None,
        "chat_template": False,
        "max_prompt_len": 256,
    }
    (judge / judge_prompts.JUDGE_FILE).write_text(json.dumps(settings))
    rows = [
        {"question": "2+2?", "reference": "4", "response": "the answer is 4"},
        {"question": "Capital of France?", "reference": "Paris", "response": "Lyon"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    base = ["--judge", judge, "--input", inp, "--batch-size", "2"]
    assert score.main([str(a) for a in base + ["--out", tmp_path / "auto.jsonl"]]) == 0
    args = base + ["--out", tmp_path / "paper.jsonl", "--template", "paper"]
    assert score.main([str(a) for a in args]) == 0
    auto = [r["p_yes"] for r in read_jsonl(tmp_path / "auto.jsonl")]
    paper = [r["p_yes"] for r in read_jsonl(tmp_path / "paper.jsonl")]
    m = load_model(judge)
    # A judge.json without a "view" is a judge trained on last lines, before the committed view.
    cfg = judge_prompts.JudgeConfig(
        **settings, view="last_line", batch_size=2, buckets=(64, 128, 256)
    )
    want = scoring.Judge(m.graphdef, m.state, m.tokenizer, cfg).score(
        [r["question"] for r in rows], [r["response"] for r in rows], [r["reference"] for r in rows]
    )
    np.testing.assert_allclose(auto, want.p_yes, rtol=1e-5, atol=1e-7)
    assert not np.allclose(auto, paper, rtol=1e-3, atol=0)


def test_score_malformed_row_via_subprocess(model_dir, tmp_path):
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [{"question": "q", "reference": "a", "response": "r"}, {"question": "q", "response": "r"}],
    )
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "score.py"), "--judge", str(model_dir)]
        + ["--input", str(inp), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {inp}:line 2: reference: missing"
    assert out.read_text() == "previous\n"  # untouched


def test_score_bad_judge_dir_is_one_line(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": "q", "reference": "a", "response": "r"}])
    args = ["--judge", str(tmp_path / "nope"), "--input", str(inp), "--out", str(tmp_path / "o")]
    assert score.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --judge:") and "\n" not in err

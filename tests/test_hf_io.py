"""Hugging Face <-> rlvr_jax conversion through tools/convert_checkpoint.py: exact round trips,
exports that transformers loads, and one clear line (exit 2, nothing written) on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import random_tokens, save_tiny_hf_dir
from safetensors import safe_open
from safetensors.numpy import save_file

from rlvr_jax.cli import convert_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), "numpy") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def _cli(*args: str) -> int:
    return convert_checkpoint.main([str(a) for a in args])


def _hf_logits(hf_dir: Path, ids: np.ndarray) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize(
    "name", ["llama_tied_gqa", "qwen2_bias_untied_1kv", "qwen3_tied_hd24", "qwen3_untied_1kv_hd32"]
)
def test_round_trip_is_bit_identical(name, tiny_hf_dirs, tmp_path):
    src = tiny_hf_dirs[name]
    assert _cli("hf-to-jax", src, tmp_path / "m") == 0
    assert _cli("jax-to-hf", tmp_path / "m", tmp_path / "hf") == 0
    a, b = _tensors(src), _tensors(tmp_path / "hf")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def test_bf16_round_trip_and_fp32_load(tmp_path):
    src = tmp_path / "src"
    save_tiny_hf_dir(src, "llama3_rope", seed=3, dtype="bfloat16")
    assert _cli("hf-to-jax", src, tmp_path / "m16") == 0
    assert json.loads((tmp_path / "m16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert _cli("jax-to-hf", tmp_path / "m16", tmp_path / "hf16") == 0
    a, b = _tensors(src), _tensors(tmp_path / "hf16")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == ml_dtypes.bfloat16 and a[k].tobytes() == b[k].tobytes(), k
    # the same checkpoint widened to fp32 on load holds exactly the same values
    assert _cli("hf-to-jax", src, tmp_path / "m32", "--dtype", "float32") == 0
    assert _cli("jax-to-hf", tmp_path / "m32", tmp_path / "hf32") == 0
    c = _tensors(tmp_path / "hf32")
    for k in a:
        assert c[k].dtype == np.float32
        np.testing.assert_array_equal(c[k], a[k].astype(np.float32))


@pytest.mark.parametrize(
    "name, shard",
    [
        ("qwen2_bias_untied_1kv", "2GB"),
        ("qwen2_bias_untied_1kv", "40KB"),
        ("llama3_rope", "2GB"),
        ("qwen3_tied_hd24", "2GB"),
        ("qwen3_untied_1kv_hd32", "40KB"),
    ],
)
def test_transformers_loads_export(name, shard, tiny_hf_dirs, tmp_path):
    src = tiny_hf_dirs[name]
    assert _cli("hf-to-jax", src, tmp_path / "m") == 0
    out = tmp_path / "hf"
    assert _cli("jax-to-hf", tmp_path / "m", out, "--max-shard-size", shard) == 0
    shards = sorted(out.glob("*.safetensors"))
    if shard == "40KB":
        assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    else:
        assert [s.name for s in shards] == ["model.safetensors"]
    for f in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (out / f).is_file(), f
    ids = random_tokens(5, (2, 40))  # past llama3_rope's original context of 16
    np.testing.assert_array_equal(_hf_logits(out, ids), _hf_logits(src, ids))


# A Qwen3-style chat template (written for this test): thinking on by default; with
# enable_thinking=False the assistant turn opens with an empty think block.
QWEN3_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def test_qwen3_chat_template_thinking_on_and_off(tiny_hf_dirs, tmp_path):
    """A converted Qwen3 directory renders chats as transformers does, with thinking on and off,
    and the run config's data.enable_thinking picks which one the policy's prompts use."""
    import shutil

    from transformers import AutoTokenizer

    from configs import base
    from rlvr_jax import builders

    src = tmp_path / "src"
    shutil.copytree(tiny_hf_dirs["qwen3_tied_hd24"], src)
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.chat_template = QWEN3_STYLE_TEMPLATE
    tok.save_pretrained(str(src))
    assert _cli("hf-to-jax", src, tmp_path / "m") == 0
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    ref = AutoTokenizer.from_pretrained(str(src))
    render = lambda **kw: ref.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, **kw
    )
    on, off = render(enable_thinking=True), render(enable_thinking=False)
    assert off == on + "<think>\n\n</think>\n\n" and render() == on
    cfg = base.get_config()
    cfg.policy.model = str(tmp_path / "m")
    mesh = builders.build_mesh(cfg)
    for thinking, want in ((True, on), (False, off)):
        cfg.data.enable_thinking = thinking
        policy = builders.build_policy(cfg, mesh)
        assert policy.cfg.model_type == "qwen3"
        assert policy.tokenizer.render_chat(msgs) == want
        assert policy.tokenizer.chat_ids(msgs) == ref.encode(want, add_special_tokens=False)


def test_sharded_input_is_read(tiny_hf_dirs, tmp_path):
    """A sharded HF directory (index + shards, as transformers writes it) converts too."""
    src = tmp_path / "sharded"
    save_tiny_hf_dir(src, "llama_tied_gqa", max_shard_size="40KB")
    assert (src / "model.safetensors.index.json").is_file()
    assert _cli("hf-to-jax", src, tmp_path / "m") == 0
    assert _cli("jax-to-hf", tmp_path / "m", tmp_path / "hf") == 0
    a, b = _tensors(src), _tensors(tmp_path / "hf")
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


# --- bad input ------------------------------------------------------------------------------------


def _edit_tensors(d: Path, edit) -> None:
    """Rewrite d/model.safetensors after `edit(tensors: dict)` changed its tensors."""
    t = _tensors(d)
    edit(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


def _bad_config(d: Path, **changes) -> None:
    c = json.loads((d / "config.json").read_text())
    c.update(changes)
    (d / "config.json").write_text(json.dumps(c))


K0 = "model.layers.0.self_attn.k_proj.weight"  # [Hkv*K, D] = [32, 64] in the tiny llama
BAD_INPUTS = {
    # case: (how to break a copy of the tiny llama dir, words the error line must contain)
    "unsupported_arch": (
        lambda d: _bad_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2"),
        "unsupported architecture",
    ),
    "unsupported_qwen3_moe": (  # the Qwen3 family's mixture-of-experts models are not dense
        lambda d: _bad_config(d, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe"),
        "unsupported architecture ['Qwen3MoeForCausalLM']",
    ),
    "qwen3_sliding_window": (
        lambda d: _bad_config(
            d, architectures=["Qwen3ForCausalLM"], model_type="qwen3", use_sliding_window=True
        ),
        "use_sliding_window",
    ),
    "missing_tensor": (
        lambda d: _edit_tensors(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
        "missing tensor for 'layers.1.mlp.up'",
    ),
    "unexpected_tensor": (
        lambda d: _edit_tensors(d, lambda t: t.update({"model.extra.weight": np.zeros(3)})),
        "unexpected tensor 'model.extra.weight'",
    ),
    "shape_mismatch": (  # transposed: same size, so a reshape alone would not notice
        lambda d: _edit_tensors(d, lambda t: t.update({K0: np.ascontiguousarray(t[K0].T)})),
        f"{K0!r} has shape (64, 32), expected (32, 64)",
    ),
    "truncated_safetensors": (_truncate, "unreadable safetensors"),
    "missing_config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_no_output(case, tiny_hf_dirs, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_hf_dirs["llama_tied_gqa"], src)
    breaker, words = BAD_INPUTS[case]
    breaker(src)
    out = tmp_path / "out" / "model"
    assert _cli("hf-to-jax", src, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir())), "temporary files left behind"


def test_jax_to_hf_bad_input(tmp_path, capsys):
    assert _cli("jax-to-hf", tmp_path / "nope", tmp_path / "hf") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such model directory" in err[0]
    assert not (tmp_path / "hf").exists()


def test_destination_exists_is_refused(tiny_hf_dirs, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep").write_text("x")
    assert _cli("hf-to-jax", tiny_hf_dirs["llama_tied_gqa"], tmp_path / "m") == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["keep"]


def test_cli_process_exit_code_and_single_line(tmp_path):
    """The real process: exit status 2 and exactly one stderr line, no traceback."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"architectures": ["MambaForCausalLM"],\n')
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "convert_checkpoint.py"),
            "hf-to-jax",
            str(tmp_path / "hf"),
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "invalid JSON" in lines[0], lines
    assert not (tmp_path / "m").exists()

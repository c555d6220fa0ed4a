"""The RL loop end to end on the tiny synthetic task: learning, resume, drift, NaN, bad data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from rlvr_jax import builders, data, losses, train
from rlvr_jax.metrics import CompileMeter, read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _cfg(algo: str = "rloo", **over):
    c = tiny.get_config(algo)
    c.train.tensorboard = False
    for k, v in over.items():
        sec, name = k.split("__")
        c[sec][name] = v
    return c


def _strip_times(recs):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]


@pytest.mark.parametrize("algo", ["reinforce", "rloo", "reinforce++", "grpo"])
def test_tiny_task_is_learned(algo, tmp_path):
    recs = train.train(_cfg(algo, train__log_rollouts=algo == "rloo"), tmp_path)
    rewards = [r["reward/raw_mean"] for r in recs]
    assert np.mean(rewards[:3]) < 0.5, rewards[:3]  # near chance at the start
    assert np.mean(rewards[-5:]) >= 0.8, rewards[-10:]
    # Sampler and trainer compute the same log-probs (fp32) on every step.
    assert max(r["train/logp_drift"] for r in recs) <= 1e-4
    assert (tmp_path / "curves.png").is_file()
    # The first step builds its programs; the steps after it mostly reuse them.
    assert recs[0]["time/compiles"] >= 1 and recs[0]["time/compile_s"] > 0
    assert sum(r["time/compiles"] == 0 for r in recs[1:]) >= len(recs) // 2, [
        r["time/compiles"] for r in recs
    ]
    # Each step logs the pages it took fresh from the system (a count, not an error marker).
    assert all(isinstance(r["time/page_faults"], int) and r["time/page_faults"] >= 0 for r in recs)
    if algo == "rloo":  # each step's rollouts, with what every reward made of them
        from rlvr_jax import rollout_log

        c = _cfg(algo)
        n = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
        for r in recs:
            rows = [json.loads(x) for x in rollout_log.path(tmp_path, r["step"]).read_text()
                    .splitlines()]  # fmt: skip
            assert len(rows) == n and [x["sample"] for x in rows[:2]] == [0, 1]
            assert np.mean([x["reward"] for x in rows]) == pytest.approx(r["reward/raw_mean"])
            assert all(x["question"] and isinstance(x["cut"], bool) for x in rows)
    else:
        assert not (tmp_path / "rollouts").exists()


def test_compile_meter_counts_programs_built():
    import jax
    import jax.numpy as jnp

    meter = CompileMeter()
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x7, x9 = np.ones(7, np.float32), np.ones(9, np.float32)
    f(x7).block_until_ready()
    first = meter.take()
    f(x7).block_until_ready()
    again = meter.take()
    f(x9).block_until_ready()
    new_shape = meter.take()
    meter.close()
    f(np.ones(11, np.float32)).block_until_ready()
    assert first["time/compiles"] >= 1 and first["time/compile_s"] > 0
    assert again == {"time/compile_s": 0.0, "time/compiles": 0}
    assert new_shape["time/compiles"] >= 1
    assert meter.take()["time/compiles"] == 0  # closed: no longer listening


def test_minibatch_schedule_steps_clip_and_lr(tmp_path):
    """train_batch 32 of a 128-sample rollout: 4 optimizer steps per RL step, each against the
    rollout's log-probs (the clip acts once the policy moved), and the LR schedule spans every
    optimizer step of the run (2 RL steps x 4 = 8), not the RL steps."""
    from rlvr_jax import update

    cfg = _cfg("grpo", rl__train_batch=32, train__steps=2, optim__min_lr_ratio=0.1)
    recs = train.train(cfg, tmp_path)
    assert [r["train/opt_steps"] for r in recs] == [4, 4]
    assert [r["train/opt_step_total"] for r in recs] == [4, 8]
    assert all(r["train/clip_frac_max"] > 0 and r["train/approx_kl_max"] > 0 for r in recs)
    assert all(r["train/logp_drift"] <= 1e-4 for r in recs)  # the first step: policy unmoved
    sched = update.make_schedule(cfg.optim, 8)
    for i, r in enumerate(recs):
        want = np.mean([float(sched(4 * i + j)) for j in range(4)])
        assert r["train/lr"] == pytest.approx(want, rel=1e-5)


def _run_cli(workdir: Path, steps: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "rlvr_jax.train",
        "--config",
        "configs/tiny.py",
        f"--config.train.steps={steps}",
        "--config.train.ckpt_every=2",
        "--config.train.tensorboard=False",
        # 4 shuffled optimizer steps per rollout: resume must restore the run mid-schedule.
        "--config.rl.train_batch=32",
        f"--workdir={workdir}",
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_kill9_resume_equals_uninterrupted(tmp_path):
    steps = 8
    ref = _run_cli(tmp_path / "ref", steps)
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    killed = _run_cli(tmp_path / "run", steps)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill -9 once step 5 is written (last checkpoint: step 4)
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:  # + the step-0 row
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    again = _run_cli(tmp_path / "run", steps)
    err = again.communicate(timeout=600)[1].decode()
    assert again.returncode == 0, err[-2000:]
    assert "resumed" in err
    a = _strip_times(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    b = _strip_times(read_metrics(metrics))
    assert [r["step"] for r in b] == list(range(0, steps + 1))  # step 0: evaluation only
    assert a == b  # exactly equal on CPU, every metric of every step


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, monkeypatch):
    cfg = _cfg(train__max_nonfinite=3, train__steps=10)
    real = losses.compute_advantages
    calls: list[int] = []

    def nan_after_two(*args, **kwargs):
        calls.append(1)
        adv = real(*args, **kwargs)
        return adv * np.nan if len(calls) > 2 else adv  # steps 3.. get a NaN loss

    monkeypatch.setattr(losses, "compute_advantages", nan_after_two)
    with pytest.raises(train.RunStopped, match="3 non-finite updates in a row at step 5"):
        train.train(cfg, tmp_path)
    recs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"]]  # updates only
    assert [r["train/nonfinite"] for r in recs] == [0, 0, 1, 1, 1]
    assert recs[-1]["train/nonfinite_total"] == 3
    assert train.latest_checkpoint(tmp_path) == 5  # the run stopped with a checkpoint


def _bad_data_cfg(tmp_path, bad_rows):
    good = {"query": [{"role": "user", "content": "say one"}], "label": "one", "subject": "echo"}
    lines = [json.dumps(good)] * 20
    lines[6] = json.dumps({**good, "label": ""})
    lines[11] = json.dumps({**good, "query": 5})
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return _cfg(
        data__synthetic="",
        data__train=(str(f),),
        data__test=(str(f),),
        data__bad_rows=bad_rows,
        train__steps=1,
    ), f


def test_bad_rows_stop_before_training(tmp_path):
    cfg, f = _bad_data_cfg(tmp_path, "error")
    with pytest.raises(data.DataError, match=rf"{f.name}:line 7: label.*and 1 more"):
        train.train(cfg, tmp_path / "w")
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_bad_rows_skipped_with_count(tmp_path, capsys):
    cfg, _ = _bad_data_cfg(tmp_path, "skip")
    recs = train.train(cfg, tmp_path / "w")
    assert len(recs) == 1
    assert "2 bad rows skipped" in capsys.readouterr().err


def test_hf_export_loads_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax.models import hf_io
    from rlvr_jax.models.transformer import forward

    train.train(_cfg(train__steps=2, train__export_hf=True), tmp_path)
    hf_dir = tmp_path / "hf"
    cfg, state = hf_io.load_hf(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens = np.array([[3, 15, 13, 4, 9, 10]])
    with torch.no_grad():
        want = model(torch.tensor(tokens)).logits.numpy()
    from rlvr_jax.models.transformer import abstract_model

    graphdef = abstract_model(cfg)[0]
    got, _ = forward(graphdef, state, tokens, np.arange(6)[None])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    # The export is the trained policy, not the initial one.
    assert not np.allclose(
        np.asarray(got),
        np.asarray(
            forward(
                graphdef,
                builders.synthetic_model(_cfg(), builders.build_mesh(_cfg())).state,
                tokens,
                np.arange(6)[None],
            )[0]
        ),
        atol=1e-3,
    )


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_mesh_run_equals_single_device(lora_rank, tmp_path):
    """The same config on 8 emulated devices as a (2,2,2) mesh gives the single-device run (a
    LoRA policy too: its adapters split over fsdp and tensor as the weights they adapt)."""
    steps = 3
    single = train.train(_cfg(train__steps=steps, lora__rank=lora_rank), tmp_path / "one")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    cmd = [
        sys.executable,
        "-m",
        "rlvr_jax.train",
        "--config",
        "configs/tiny.py",
        "--mesh=2,2,2",
        f"--config.lora.rank={lora_rank}",
        f"--config.train.steps={steps}",
        "--config.train.tensorboard=False",
        f"--workdir={tmp_path / 'mesh'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meshed = [r for r in read_metrics(tmp_path / "mesh" / "metrics.jsonl") if r["step"]]
    for a, b in zip(single, meshed, strict=True):
        assert a["reward/raw_mean"] == b["reward/raw_mean"]  # identical samples
        for k in ("train/loss", "train/grad_norm", "train/entropy"):
            assert abs(a[k] - b[k]) <= 1e-5, (k, a[k], b[k])


def test_run_that_cannot_fit_stops_before_compiling(tmp_path):
    cfg = _cfg(
        rollout__prompts_per_step=4096,
        rollout__max_new_tokens=8192,
        rollout__max_prompt_len=8192,
        optim__micro_batch=32768,
    )
    with pytest.raises(train.memory.MemoryPlanError, match="Largest term: train_activations"):
        train.train(cfg, tmp_path)
    assert (tmp_path / "memory_plan.txt").is_file()
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------- LoRA

# The tiny random model's tied head is frozen under LoRA: embed_scale gives it the sharpness a
# pretrained head has. Rank 64 = D: the adapters can reach every direction of the products.
LORA_STEPS = 200
LORA = dict(lora__rank=64, lora__alpha=64.0, policy__tiny_embed_scale=5.0, optim__lr=5e-3)


def _lora_cfg(**over):
    kw = {**LORA, **over}
    scale = kw.pop("policy__tiny_embed_scale")
    c = _cfg(**kw)
    c.policy.tiny.embed_scale = scale
    return c


def test_tiny_task_is_learned_with_lora(tmp_path):
    recs = train.train(_lora_cfg(train__steps=LORA_STEPS), tmp_path)
    rewards = [r["reward/raw_mean"] for r in recs]
    assert np.mean(rewards[:3]) < 0.5, rewards[:3]
    assert np.mean(rewards[-5:]) >= 0.8, rewards[-10:]
    # Sampler and trainer run on the same adapted weights; what differs is fp32 rounding, which
    # grows with the adapters (measured here: up to 2.5e-4 late in the run, 1e-6 early).
    assert max(r["train/logp_drift"] for r in recs[:10]) <= 1e-5
    assert max(r["train/logp_drift"] for r in recs) <= 1e-3
    plan = (tmp_path / "memory_plan.txt").read_text()
    assert "LoRA rank 64 adapters" in plan


def test_lora_resume_is_exact_and_checkpoints_hold_adapters(tmp_path):
    """A LoRA run stopped after 3 steps and resumed equals the uninterrupted run, metric for
    metric; its checkpoints hold the adapters and their optimizer state, not the base weights.
    rl.beta > 0: the reference (base weights, adapters off) enters every step's reward."""
    from rlvr_jax import checkpoint

    over = dict(train__steps=6, train__ckpt_every=3, rl__beta=0.05)
    full = train.train(_lora_cfg(**over), tmp_path / "full")
    train.train(_lora_cfg(**over), tmp_path / "cut", stop_after=3)
    assert train.latest_checkpoint(tmp_path / "cut") == 3
    resumed = train.train(_lora_cfg(**over), tmp_path / "cut")
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert _strip_times(full[3:]) == _strip_times(resumed)
    assert all(r["kl/mean"] != 0.0 for r in full[1:])  # the policy moved off its reference
    stored = checkpoint.pytree_metadata(tmp_path / "cut" / "checkpoints" / "3")
    n_stored = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(stored["state"]))
    (tmp_path / "probe").mkdir()
    run, state = train.build(_lora_cfg(**over), tmp_path / "probe")
    from rlvr_jax.models.lora import split_adapters

    adapters, base = split_adapters(state.params)
    n_adapters = sum(x.size for x in jax.tree.leaves(adapters))
    n_base = sum(x.size for x in jax.tree.leaves(base))
    # adapters + 2 Adam moments + a few scalars (step, counters, key, data position)
    assert 3 * n_adapters <= n_stored < 3 * n_adapters + 64, (n_stored, n_adapters, n_base)


def test_lora_export_is_merged_and_loads_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax.models import hf_io
    from rlvr_jax.models.transformer import forward

    cfg = _lora_cfg(train__steps=3, train__export_hf=True)
    train.train(cfg, tmp_path)
    run, state = train.build(cfg, tmp_path)  # the same run, restored at its end
    state = train.restore_checkpoint(run, state, train.latest_checkpoint(tmp_path))
    tokens = np.array([[3, 15, 13, 4, 9, 10]])
    adapted, _ = forward(run.policy.graphdef, state.params, tokens, np.arange(6)[None])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(adapted), atol=1e-4)
    # the adapters were trained: the export is not the base model
    base_cfg, base_state = hf_io.load_hf(tmp_path / "hf")
    assert base_cfg.lora is None
    from rlvr_jax.models.lora import split_adapters
    from rlvr_jax.models.transformer import abstract_model

    base = split_adapters(state.params)[1]
    base_logits, _ = forward(
        abstract_model(run.policy.cfg.replace(lora=None))[0], base, tokens, np.arange(6)[None]
    )
    assert np.abs(np.asarray(base_logits) - theirs).max() > 1e-3


def test_rollout_log_keeps_per_row_scores_only(tmp_path):
    from rlvr_jax import rollout_log

    ex = data.Example(id="q", question="Q?", messages=(), reference="x", subject="economics",
                      field="Social Sciences")  # fmt: skip
    scores = {"soft": np.array([0.2, 0.7]), "judge_verdict": np.array(["NO", "YES"]),
              "judge_truncated": np.array([0])}  # fmt: skip
    out = rollout_log.write(tmp_path, 3, [ex], ["a", "b"], np.array([False, True]),
                            np.array([4, 96]), np.array([0.2, 0.7]), np.array([-1.0, 1.0]),
                            scores)  # fmt: skip
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert out == rollout_log.path(tmp_path, 3)
    assert [r["judge_verdict"] for r in rows] == ["NO", "YES"] and rows[1]["cut"] is True
    assert "judge_truncated" not in rows[0] and rows[1]["soft"] == pytest.approx(0.7)

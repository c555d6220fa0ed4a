"""Meshes, sharding rules and memory planning.

Multi-device checks run in ONE subprocess with 8 emulated CPU devices (XLA_FLAGS must be set
before jax is imported, and the rest of the suite runs with 1 device): `python tests/test_mesh.py
--worker` prints a JSON report, and the tests below assert on it. Single-device checks run here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

SHAPES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (4, 1, 2)]
BORN_SHAPE = (2, 2, 2)
ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**kw):
    from rlvr_jax.models.config import ModelConfig

    base = dict(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e5,
    )  # fmt: skip
    return ModelConfig(**{**base, **kw})


# ------------------------------------------------------------------------------- the worker


def _worker() -> dict:
    """Runs under 8 emulated devices; returns plain numbers for the parent to check."""
    import jax
    import jax.numpy as jnp
    import optax

    from rlvr_jax import logprobs, memory, mesh, rollout, update
    from rlvr_jax.judge.scoring import judge_scores
    from rlvr_jax.models.kv_cache import KVCache
    from rlvr_jax.models.transformer import forward, init_model, init_sharded, positions_from_mask

    assert jax.device_count() == 8, jax.devices()
    cfg = tiny_cfg()
    graphdef, state0 = init_model(cfg, 0)
    # Weights at 8x init scale so that logits are O(5): a tolerance means something against them.
    state0 = jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, state0)
    host = jax.tree.map(np.asarray, state0)

    def max_diff(a, b) -> float:  # in numpy: a jnp comparison per leaf would compile per leaf
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)

    n, p, l_new, g = 8, 12, 6, 2  # n prompts, each sampled g times: N = 16 rows
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, cfg.vocab_size, (n, p)).astype(np.int32)
    amask = np.ones((n, p), bool)
    amask[:3, :5] = False  # left padding in some rows
    pos = np.asarray(positions_from_mask(jnp.asarray(amask)))
    fwd = jax.jit(lambda s, t, q, m: forward(graphdef, s, t, q, m)[0])
    yes, no, valid = jnp.array([1, 2], jnp.int32), jnp.array([3], jnp.int32), np.ones(n, bool)

    def sample(state, key, temperature):  # -> (tokens, log-probs) of N rows
        sc = rollout.SamplingConfig(max_new_tokens=l_new, temperature=temperature)
        ro = rollout.generate(graphdef, state, tokens, amask, key, sc, g)
        return np.asarray(ro.tokens), np.asarray(ro.logprobs)

    def judge(state, ids, mask, ok):
        out = judge_scores(graphdef, state, ids, mask, yes, no, ok)
        return np.stack([np.asarray(out.p_yes), np.asarray(out.p_no), np.asarray(out.soft)])

    # One train step on a batch of N rows whose completions are the greedy samples. SGD: AdamW's
    # first step is lr * g / (|g| + eps), which turns the fp32 rounding of gradients near eps
    # into differences of up to lr; SGD shows the gradient reductions themselves.
    optimizer = optax.sgd(0.1)
    adamw = optax.adamw(1e-3)  # for the optimizer-state bytes
    trainable = update.trainable_filter(cfg.num_layers)
    step_cfg = update.StepConfig(micro_batch=n * g, with_entropy=False)
    greedy0, _ = sample(state0, jax.random.PRNGKey(0), 0.0)
    full = np.concatenate([np.repeat(tokens, g, 0), greedy0], 1)
    full_mask = np.concatenate([np.repeat(amask, g, 0), np.ones_like(greedy0, bool)], 1)
    logp_old = np.asarray(logprobs.token_logprobs(graphdef, state0, full, full_mask, l_new))
    adv = rng.randn(n * g, l_new).astype(np.float32)
    batch = update.Batch(full, full_mask, np.ones_like(greedy0, bool), adv, logp_old)
    ts0 = update.init_train_state(state0, optimizer, trainable, jax.random.PRNGKey(0))
    ts_host = jax.tree.map(np.asarray, ts0)
    ref_ts, _ = update.make_train_step(graphdef, optimizer, step_cfg, trainable)(ts0, batch)

    ref = {
        "logits": np.asarray(fwd(state0, tokens, pos, amask)),
        "greedy": greedy0,
        "seeded": sample(state0, jax.random.PRNGKey(7), 1.0),
        "judge": judge(state0, tokens, amask, valid),
        "init": jax.jit(lambda: init_model(cfg, 3)[1])(),
        "trained": jax.tree.map(np.asarray, ref_ts.params),
    }
    out_step = max_diff(ref["trained"], host)
    ref_logits = ref["logits"]
    run = memory.RunShape(prompts=n, group=g, prompt_len=p, completion_len=l_new, micro_batch=n)
    total_param_bytes = sum(x.nbytes for x in jax.tree.leaves(host))

    out: dict = {"ref_logit_scale": float(np.abs(ref_logits).max()), "shapes": {}}
    out["train_step_size"] = out_step
    for shape in SHAPES:
        m = mesh.make_mesh(shape)
        r: dict = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error", mesh.ShardingWarning)  # tiny model: everything divides
            state = mesh.shard_params(host, m, mesh.TRAIN_RULES)
        if shape == BORN_SHAPE:  # one shape: the random init is slow to compile for 8 devices
            _, born = init_sharded(cfg, m, mesh.TRAIN_RULES, seed=3)
            out["init_max_diff"] = max_diff(born, ref["init"])
            wanted = jax.tree.leaves(mesh.param_shardings(born, m, mesh.TRAIN_RULES))
            out["init_shardings_ok"] = [x.sharding for x in jax.tree.leaves(born)] == wanted
            out["init_any_split"] = any(not x.sharding.is_fully_replicated
                                        for x in jax.tree.leaves(born))  # fmt: skip
        inputs = mesh.put_batch((tokens, pos, amask), m)
        r["batch_shard_rows"] = inputs[0].addressable_shards[0].data.shape[0]
        with jax.set_mesh(m):
            logits = fwd(state, *inputs)
        r["logits_max_diff"] = float(np.abs(np.asarray(logits) - ref_logits).max())

        sample_state = mesh.reshard(state, m, mesh.SAMPLE_RULES)
        with jax.set_mesh(m):
            greedy = sample(sample_state, jax.random.PRNGKey(0), 0.0)
            seeded = sample(sample_state, jax.random.PRNGKey(7), 1.0)
            scores = judge(sample_state, *mesh.put_batch((tokens, amask, valid), m))
        r["greedy_tokens_equal"] = bool((greedy[0] == ref["greedy"]).all())
        r["seeded_tokens_equal"] = bool((seeded[0] == ref["seeded"][0]).all())
        r["seeded_logprob_max_diff"] = float(np.abs(seeded[1] - ref["seeded"][1]).max())
        r["judge_max_diff"] = float(np.abs(scores - ref["judge"]).max())

        ts = mesh.shard_params(ts_host, m, mesh.TRAIN_RULES)
        ts_shardings = mesh.param_shardings(ts, m, mesh.TRAIN_RULES)
        placed = mesh.put_batch(batch, m)
        step = update.make_train_step(
            graphdef, optimizer, step_cfg, trainable, state_shardings=ts_shardings,
            batch_shardings=jax.tree.map(lambda x: x.sharding, placed),
        )  # fmt: skip
        opt_state = jax.jit(
            adamw.init, out_shardings=mesh.param_shardings(jax.eval_shape(adamw.init, state), m)
        )(state)
        with jax.set_mesh(m):
            trained, _ = step(ts, placed)
        r["trained_max_diff"] = max_diff(trained.params, ref["trained"])

        # Measured per-device bytes against the plan.
        plan = memory.plan_memory(cfg, run, m)
        make_cache = lambda: KVCache.init(cfg, run.rows, run.prompt_len + run.completion_len)
        cache_sh = jax.eval_shape(make_cache).shardings(m)
        cache = jax.jit(make_cache, out_shardings=cache_sh)()
        r["params"] = [plan.terms["params"], memory.measured_bytes_per_device(state)]
        r["optimizer"] = [plan.terms["optimizer"], memory.measured_bytes_per_device(opt_state)]
        r["kv_cache"] = [plan.terms["kv_cache"], memory.measured_bytes_per_device(cache)]
        r["sample_params"] = [
            plan.terms["sample_params"] or plan.terms["params"],
            memory.measured_bytes_per_device(sample_state),
        ]
        r["param_fraction"] = r["params"][1] / total_param_bytes
        r["optimizer_fraction"] = r["optimizer"][1] / (2 * total_param_bytes)
        r["reshard_max_diff"] = max_diff(sample_state, state)
        r["sample_embed_spec"] = str(sample_state["embed"][...].sharding.spec)
        r["train_embed_spec"] = str(state["embed"][...].sharding.spec)
        out["shapes"][",".join(map(str, shape))] = r
    return out


@pytest.fixture(scope="module")
def worker() -> dict:
    # Unoptimised CPU codegen: the worker compiles ~40 programs for 8 devices; this halves it.
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {flags}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, "--worker"], capture_output=True, text=True, env=env,
        timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_logits_equal_single_device(worker, shape):
    r = worker["shapes"][",".join(map(str, shape))]
    assert worker["ref_logit_scale"] > 5.0  # a tolerance means something only against big logits
    assert r["logits_max_diff"] <= 1e-5, r["logits_max_diff"]


def test_born_sharded_equals_single_device_init(worker):
    assert worker["init_shardings_ok"] and worker["init_any_split"]
    assert worker["init_max_diff"] == 0.0


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_samples_judge_and_train_step_equal_single_device(worker, shape):
    r = worker["shapes"][",".join(map(str, shape))]
    assert r["greedy_tokens_equal"] and r["seeded_tokens_equal"]
    assert r["seeded_logprob_max_diff"] <= 1e-5
    assert r["judge_max_diff"] <= 1e-5
    assert worker["train_step_size"] > 1e-2  # the step moved the weights far beyond the tolerance
    assert r["trained_max_diff"] <= 1e-5, r["trained_max_diff"]


def test_batch_rows_split_over_data_and_fsdp(worker):
    rows = {k: r["batch_shard_rows"] for k, r in worker["shapes"].items()}
    assert rows == {"8,1,1": 1, "1,8,1": 1, "2,2,2": 2, "4,1,2": 2}


def test_fsdp8_holds_an_eighth(worker):
    r = worker["shapes"]["1,8,1"]
    # Norm scales ([D] vectors) stay whole; everything else splits 8 ways.
    assert 1 / 8 <= r["param_fraction"] < 1 / 8 * 1.1, r["param_fraction"]
    assert 1 / 8 <= r["optimizer_fraction"] < 1 / 8 * 1.1, r["optimizer_fraction"]
    assert worker["shapes"]["8,1,1"]["param_fraction"] == 1.0  # data parallel: whole copies


@pytest.mark.parametrize("term", ["params", "optimizer", "kv_cache", "sample_params"])
def test_plan_matches_measured(worker, term):
    for shape, r in worker["shapes"].items():
        planned, measured = r[term]
        assert abs(planned - measured) <= 0.2 * measured, (shape, term, planned, measured)


def test_reshard_train_to_sample(worker):
    r = worker["shapes"]["2,2,2"]
    assert r["reshard_max_diff"] == 0.0
    assert r["train_embed_spec"] == "P('tensor', 'fsdp')"
    assert r["sample_embed_spec"] == "P('tensor', None)"


# ------------------------------------------------------------------ single-device checks


def test_parse_and_resolve_mesh():
    from rlvr_jax.mesh import MeshError, parse_mesh, resolve_shape

    assert parse_mesh("2,2,2") == (2, 2, 2)
    assert parse_mesh(" -1, 1,2") == (-1, 1, 2)
    assert resolve_shape((-1, 1, 2), 8) == (4, 1, 2)
    for bad in ("2,2", "a,1,1", "1,1,1,1"):
        with pytest.raises(MeshError, match="--mesh"):
            parse_mesh(bad)
    with pytest.raises(MeshError, match="needs 8 devices, 4 are present"):
        resolve_shape((2, 2, 2), 4)
    with pytest.raises(MeshError, match="do not divide"):
        resolve_shape((-1, 3, 1), 8)


def test_make_mesh_one_device():
    import jax

    from rlvr_jax.mesh import local_rows, make_mesh

    m = make_mesh("-1,1,1")
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert dict(m.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert local_rows(m, 16) == slice(0, 16)  # one process loads every row


def test_rules_drop_axes_that_do_not_divide():
    from jax.sharding import PartitionSpec as P

    from rlvr_jax.mesh import SAMPLE_RULES, TRAIN_RULES, MeshError, logical_to_spec

    sizes = {"data": 2, "fsdp": 4, "tensor": 2}
    spec, dropped = logical_to_spec(("embed", "kv_heads", "head_dim"), (576, 3, 64), sizes,
                                    TRAIN_RULES)  # fmt: skip
    assert spec == P("fsdp", None, None)
    assert dropped == ["kv_heads[3] not split over tensor=2"]
    # batch: the longest prefix of (data, fsdp) that divides the rows.
    assert logical_to_spec(("batch",), (16,), sizes, TRAIN_RULES)[0] == P(("data", "fsdp"))
    assert logical_to_spec(("batch",), (6,), sizes, TRAIN_RULES)[0] == P("data")
    # size-1 axes are left out; sampling keeps embed whole.
    assert logical_to_spec(("vocab", "embed"), (256, 64), (8, 1, 1), TRAIN_RULES)[0] == P(
        None, None
    )
    assert logical_to_spec(("vocab", "embed"), (256, 64), sizes, SAMPLE_RULES)[0] == P(
        "tensor", None
    )
    with pytest.raises(MeshError, match="no rule"):
        logical_to_spec(("nonsense",), (4,), sizes, TRAIN_RULES)


def test_smollm2_heads_warn_not_crash():
    import jax

    from rlvr_jax.memory import abstract_params
    from rlvr_jax.mesh import TRAIN_RULES, ShardingWarning, tree_shardings

    cfg = tiny_cfg(num_heads=9, num_kv_heads=3, hidden_size=72, head_dim=8)
    with pytest.warns(ShardingWarning, match="kv_heads\\[3\\] not split over tensor=2"):
        specs = tree_shardings(abstract_params(cfg), (1, 2, 2), TRAIN_RULES)
    assert len(jax.tree.leaves(specs)) == len(jax.tree.leaves(abstract_params(cfg)))


def test_initialize_distributed_modes(monkeypatch):
    from rlvr_jax.mesh import initialize_distributed

    calls = []
    fake = lambda **kw: calls.append(kw)
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JAX_NUM_PROCESSES",
                "JAX_PROCESS_ID"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert not initialize_distributed({"distributed": False}, fake)
    assert not initialize_distributed({"distributed": "auto"}, fake)  # one machine: nothing
    assert calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert initialize_distributed(None, fake)
    assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=0)
    cfg = {"distributed": True, "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert initialize_distributed(cfg, fake)
    assert calls[-1] == dict(coordinator_address="h:1", num_processes=2, process_id=1)


def test_plan_from_base_config():
    from configs import base
    from rlvr_jax.memory import RunShape, device_memory_bytes, plan_memory

    run = RunShape.from_config(base.get_config())
    assert (run.rows, run.prompt_len + run.completion_len) == (16, 384)
    plan = plan_memory(tiny_cfg(), run, (1, 1, 1))
    assert plan.terms["sample_params"] == 0 and plan.terms["gathered_weights"] == 0
    assert plan.total == sum(plan.terms[t] for t in plan.persistent) + max(
        plan.phase_bytes(p) for p in plan.phases
    )
    assert "kv_cache" in plan.table()
    # CPU reports no memory limit: the fallback, else host RAM shared by the devices.
    assert device_memory_bytes(fallback=123) == 123
    assert device_memory_bytes() > 2**30


def test_too_big_stops_before_compiling():
    """A 7B policy on one 80 GB device: the plan refuses, naming the largest term, and nothing
    was compiled or allocated (the weights alone exceed this machine's RAM)."""
    import jax

    from rlvr_jax.memory import MemoryPlanError, RunShape, check_fits, plan_memory

    qwen7b = tiny_cfg(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                      intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                      head_dim=128, attention_bias=True)  # fmt: skip
    run = RunShape(prompts=8, group=8, prompt_len=1024, completion_len=1024, micro_batch=16)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if "compile" in name else None
    )
    plan = plan_memory(qwen7b, run, (1, 1, 1))
    with pytest.raises(MemoryPlanError) as e:
        check_fits(plan, 80 * 1024**3)
    msg = str(e.value)
    assert "Largest term: train_activations" in msg and "optim.micro_batch" in msg
    assert "remat" in msg and "mesh 1,1,1" in msg
    assert not [c for c in compiles if "backend_compile" in c], compiles
    # With fsdp 8, remat and micro-batch 2 the weights and state split and the plan fits.
    small = RunShape(prompts=8, group=8, prompt_len=1024, completion_len=1024, micro_batch=8,
                     remat=True, reference=False)  # fmt: skip
    fits = plan_memory(qwen7b, small, (1, 8, 1))
    check_fits(fits, 80 * 1024**3)
    assert fits.terms["params"] == pytest.approx(plan.terms["params"] / 8, rel=0.01)
    assert math.isclose(fits.terms["optimizer"], 2 * fits.terms["params"], rel_tol=0.01)


def _mesh_bench():
    from rlvr_jax.cli import mesh_bench

    return mesh_bench


def test_mesh_bench_counts_collectives():
    hlo = """
  %all-gather.1 = f32[8,64]{1,0} all-gather(f32[1,64]{1,0} %p), dimensions={0}
  %ag-start = (f32[1,64]{1,0}, f32[8,64]{1,0}) all-gather-start(f32[1,64]{1,0} %p)
  %ag-done = f32[8,64]{1,0} all-gather-done((f32[1,64]{1,0}, f32[8,64]{1,0}) %ag-start)
  %all-reduce.2 = (bf16[4,4]{1,0}, pred[]) all-reduce(bf16[4,4]{1,0} %a, pred[] %b), to_apply=%add
  %rs = s32[2]{0} reduce-scatter(s32[16]{0} %c), dimensions={0}
  %fusion = f32[8]{0} fusion(f32[8]{0} %all-reduce.2), kind=kLoop
"""
    got = _mesh_bench().collectives(hlo)
    assert got["all-gather"] == (2, 2 * 8 * 64 * 4)
    assert got["all-reduce"] == (1, 4 * 4 * 2 + 1)
    assert got["reduce-scatter"] == (1, 8)
    assert got["all-to-all"] == (0, 0) and got["collective-permute"] == (0, 0)


def test_mesh_bench_bad_shape_exits_2(capsys):
    assert _mesh_bench().main(["--shapes", "3,3,3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mesh shape (3, 3, 3) needs 27 devices")


if __name__ == "__main__" and "--worker" in sys.argv:
    print(json.dumps(_worker()))

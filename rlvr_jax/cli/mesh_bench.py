"""Mesh experiments: the forward, the sampler and one train step over a list of mesh shapes.

  python tools/mesh_bench.py --emulate 8 --shapes 8,1,1 1,8,1 2,2,2 4,1,2
  python tools/mesh_bench.py --model default --shapes 1,1,1          (on the devices present)

For each (data, fsdp, tensor) shape it prints a table: the median wall time of each program, the
collectives in its compiled (SPMD-partitioned) HLO with their count and bytes, and the memory per
device that `rlvr_jax.memory` planned against what the arrays' shards hold (and XLA's own temp
buffer size). A shape whose plan does not fit stops before compiling, with the plan's message.

Collective bytes are the result size per device of each op; ops inside a loop body (the decode
loop) are counted once, not once per iteration. `--emulate N` sets
XLA_FLAGS=--xla_force_host_platform_device_count=N before jax is imported (CPU only).
Bad input prints one `error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import types
from collections import Counter
from pathlib import Path

from rlvr_jax import atomic

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OP = re.compile(
    r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def _array_bytes(dtype: str, dims: str) -> int:
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n * bits // 8


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
    """{op: (count, bytes)} of the collectives in a compiled HLO module's text.

    An async `-start` op's tuple holds (operand, result, ...): its second array is the result.
    """
    out: dict[str, list[int]] = {op: [0, 0] for op in COLLECTIVES}
    for m in _OP.finditer(hlo_text):
        arrays = [_array_bytes(t, d) for t, d in _ARRAY.findall(m["type"])]
        nbytes = arrays[1] if m["start"] and len(arrays) > 1 else sum(arrays)
        out[m["op"]][0] += 1
        out[m["op"]][1] += nbytes
    return {op: (c, b) for op, (c, b) in out.items()}


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["8,1,1", "1,8,1", "2,2,2", "4,1,2"],
                    help="mesh shapes DATA,FSDP,TENSOR (-1 = the rest)")  # fmt: skip
    ap.add_argument("--emulate", type=int, default=0, help="N emulated CPU devices")
    ap.add_argument("--model", default="tiny", help="tiny | default | a model directory")
    ap.add_argument("--dim", type=int, default=256, help="tiny model width (heads of 32)")
    ap.add_argument("--layers", type=int, default=4, help="tiny model depth")
    ap.add_argument("--prompts", type=int, default=8, help="B prompts")
    ap.add_argument("--group", type=int, default=2, help="G samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=32, help="P")
    ap.add_argument("--new-tokens", type=int, default=16, help="L")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per program")
    ap.add_argument("--device-bytes", type=int, default=0, help="memory per device (0: ask jax)")
    ap.add_argument("--json", default="", help="also write the results here")
    return ap.parse_args(argv)


def _model(args, jax, mesh_lib):
    """(cfg, graphdef, host-or-None state); tiny models are born sharded per mesh instead."""
    from rlvr_jax.models.config import ModelConfig

    if args.model == "tiny":
        d, h = args.dim, max(args.dim // 32, 2)
        cfg = ModelConfig(model_type="llama", vocab_size=1024, hidden_size=d,
                          intermediate_size=2 * d, num_layers=args.layers, num_heads=h,
                          num_kv_heads=h // 2, head_dim=32, rope_theta=1e5)  # fmt: skip
        from rlvr_jax.models.transformer import abstract_model

        return cfg, abstract_model(cfg)[0], None
    from rlvr_jax.models.model_dir import load_model

    if args.model == "default":
        from rlvr_jax.models.default import default_model_dir

        path = default_model_dir()
    else:
        path = Path(args.model)
    loaded = load_model(path)
    return loaded.cfg, loaded.graphdef, jax.tree.map(lambda x: jax.device_get(x), loaded.state)


def _timed(fn, repeats: int) -> tuple[float, bool]:
    """Median wall seconds of `fn()` (after one warm-up) and whether the runs were contended."""
    import jax

    from rlvr_jax.cpu_meter import CONTENDED, CpuMeter, robust_median

    jax.block_until_ready(fn())
    walls, shares = [], []
    for _ in range(repeats):
        with CpuMeter() as m:
            jax.block_until_ready(fn())
        walls.append(m.wall)
        shares.append(m.other_share)
    median, used = robust_median(walls, shares)
    return median, used < repeats or min(shares) >= CONTENDED


def bench_shape(shape, args, cfg, graphdef, host_state) -> dict:
    """Run and measure the three programs on one mesh shape; returns the rows of its table."""
    import jax
    import numpy as np

    from rlvr_jax import memory, rollout, update
    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax.models.transformer import forward, init_sharded, positions_from_mask

    m = mesh_lib.make_mesh(shape)
    n, p, big_l = args.prompts * args.group, args.prompt_len, args.new_tokens
    run = memory.RunShape(prompts=args.prompts, group=args.group, prompt_len=p,
                          completion_len=big_l, micro_batch=n, reference=False)  # fmt: skip
    plan = memory.plan_memory(cfg, run, m)
    budget = args.device_bytes or memory.device_memory_bytes()
    memory.check_fits(plan, budget)  # before anything is compiled or placed
    if host_state is None:
        _, state = init_sharded(cfg, m, mesh_lib.TRAIN_RULES, seed=0)
    else:
        state = mesh_lib.shard_params(host_state, m, mesh_lib.TRAIN_RULES)
    rng = np.random.RandomState(0)
    prompts = rng.randint(0, cfg.vocab_size, (args.prompts, p)).astype(np.int32)
    pmask = np.ones_like(prompts, bool)
    rows: dict[str, dict] = {}
    measured = {"params": memory.measured_bytes_per_device(state)}

    with jax.set_mesh(m):
        # Forward over N rows of T = P + L tokens (the train layout).
        toks = rng.randint(0, cfg.vocab_size, (n, p + big_l)).astype(np.int32)
        tmask = np.ones_like(toks, bool)
        inputs = mesh_lib.put_batch((toks, np.asarray(positions_from_mask(tmask)), tmask), m)
        fwd = jax.jit(lambda s, t, q, k: forward(graphdef, s, t, q, k)[0])
        compiled = fwd.lower(state, *inputs).compile()
        rows["forward"] = _program(compiled, lambda: compiled(state, *inputs), args.repeats)

        # Train -> sample layout, then the sampler (prefill + decode loop).
        sample_state = mesh_lib.reshard(state, m, mesh_lib.SAMPLE_RULES)
        fresh = plan.terms["sample_params"] > 0  # else the same arrays as the train layout
        measured["sample_params"] = memory.measured_bytes_per_device(sample_state) if fresh else 0
        t_reshard, _ = _timed(lambda: mesh_lib.reshard(state, m, mesh_lib.SAMPLE_RULES), 1)
        sc = rollout.SamplingConfig(max_new_tokens=big_l, temperature=1.0)
        ids, msk = mesh_lib.put_batch((prompts, pmask), m)
        size = p + big_l
        pre = rollout.prefill.lower(graphdef, sample_state, ids, msk, size, args.group).compile()
        cache, first = pre(sample_state, ids, msk)
        measured["kv_cache"] = memory.measured_bytes_per_device(cache)
        rep_mask = mesh_lib.put_batch(np.repeat(pmask, args.group, 0), m)
        key = jax.random.PRNGKey(0)
        dec = rollout.decode.lower(graphdef, sample_state, cache, first, rep_mask, key, sc)
        dec = dec.compile()
        # decode donates the cache: every run prefills a fresh one, as `rollout.generate` does.
        gen = lambda: dec(sample_state, *pre(sample_state, ids, msk), rep_mask, key)
        rows["sampler"] = _program(dec, gen, args.repeats, extra=pre)
        rows["sampler"]["tokens_per_s"] = n * big_l / rows["sampler"]["time_s"]
        sampled, sampled_mask, sampled_lp, *_ = gen()

        # One train step (AdamW, one micro-batch of N rows) on the sampled completions.
        opt = update.make_optimizer(_OPTIM, 10)
        trainable = update.trainable_filter(cfg.num_layers)
        ts = update.init_train_state(state, opt, trainable, jax.random.PRNGKey(0))
        ts = jax.device_put(ts, mesh_lib.param_shardings(ts, m, mesh_lib.TRAIN_RULES))
        adv = rng.randn(n, big_l).astype(np.float32)
        sampled, sampled_mask = np.asarray(sampled), np.asarray(sampled_mask)
        batch = update.Batch(np.concatenate([np.repeat(prompts, args.group, 0), sampled], 1),
                             np.concatenate([np.repeat(pmask, args.group, 0), sampled_mask], 1),
                             sampled_mask, adv, np.asarray(sampled_lp))  # fmt: skip
        batch = mesh_lib.put_batch(batch, m)
        ts_sh = mesh_lib.param_shardings(ts, m, mesh_lib.TRAIN_RULES)
        step = update.make_train_step(
            graphdef, opt, update.StepConfig(micro_batch=n), trainable, state_shardings=ts_sh,
            batch_shardings=jax.tree.map(lambda x: x.sharding, batch),
        )  # fmt: skip
        measured["optimizer"] = memory.measured_bytes_per_device(ts.opt_state)
        step_c = step.lower(ts, batch).compile()
        holder = [ts]

        def one_step():
            holder[0], met = step_c(holder[0], batch)
            return met

        rows["train_step"] = _program(step_c, one_step, args.repeats)

    measured["train temp (XLA)"] = rows["train_step"]["temp_bytes"]
    planned = dict(plan.terms)
    planned["train temp (XLA)"] = sum(
        plan.terms[t] for t in ("grads", "gathered_weights", "train_activations")
    )
    return {"shape": list(shape), "programs": rows, "reshard_s": t_reshard,
            "planned": planned, "measured": measured, "plan_total": plan.total}  # fmt: skip


_OPTIM = types.SimpleNamespace(lr=1e-5, warmup_frac=0.0, min_lr_ratio=1.0, b1=0.9, b2=0.95,
                               weight_decay=0.0, grad_clip=1.0)  # fmt: skip


def _program(compiled, call, repeats: int, extra=None) -> dict:
    """Time `call` and read the collectives (of `compiled` and `extra`) and XLA's temp bytes."""
    secs, contended = _timed(call, repeats)
    colls = Counter()
    nbytes = Counter()
    for c in (compiled, extra):
        if c is None:
            continue
        for op, (k, b) in collectives(c.as_text()).items():
            colls[op] += k
            nbytes[op] += b
    ma = compiled.memory_analysis()
    temp = getattr(ma, "temp_size_in_bytes", 0) if ma is not None else 0
    return {"time_s": secs, "contended": contended, "temp_bytes": int(temp),
            "collectives": {op: [colls[op], nbytes[op]] for op in COLLECTIVES}}  # fmt: skip


def print_table(r: dict) -> None:
    from rlvr_jax.memory import fmt_bytes as _fmt_bytes

    shape = "x".join(map(str, r["shape"]))
    print(f"\n== mesh data,fsdp,tensor = {shape} ==")
    head = f"{'program':<11} {'time':>9} " + " ".join(f"{op:>22}" for op in COLLECTIVES)
    print(head)
    for name, row in r["programs"].items():
        t = f"{row['time_s'] * 1e3:8.1f}ms" + ("*" if row["contended"] else " ")
        cells = " ".join(f"{f'{c} / {_fmt_bytes(b)}':>22}" for c, b in row["collectives"].values())
        print(f"{name:<11} {t:>9}{cells}")
    s = r["programs"]["sampler"]
    print(f"sampler {s['tokens_per_s']:.0f} tokens/s; train->sample reshard "
          f"{r['reshard_s'] * 1e3:.1f}ms  (* = other processes used >10% CPU)")  # fmt: skip
    print(f"{'memory/device':<18} {'planned':>10} {'measured':>10}")
    for term, got in r["measured"].items():
        want = r["planned"][term]
        print(f"{term:<18} {_fmt_bytes(want):>10} {_fmt_bytes(got):>10}")
    print(f"{'plan peak':<18} {_fmt_bytes(r['plan_total']):>10}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.emulate:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.emulate}"
        )
    import jax

    from rlvr_jax import memory
    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax.models.config import ConfigError

    try:
        shapes = [mesh_lib.resolve_shape(mesh_lib.parse_mesh(s), jax.device_count())
                  for s in args.shapes]  # fmt: skip
        cfg, graphdef, host = _model(args, jax, mesh_lib)
    except (mesh_lib.MeshError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; model {args.model}: "
          f"{cfg.num_layers} layers, D={cfg.hidden_size}, H={cfg.num_heads}/{cfg.num_kv_heads}, "
          f"V={cfg.vocab_size}; B={args.prompts} G={args.group} P={args.prompt_len} "
          f"L={args.new_tokens}")  # fmt: skip
    results = []
    for shape in shapes:
        try:
            r = bench_shape(shape, args, cfg, graphdef, host)
        except memory.MemoryPlanError as e:
            print(f"\n== mesh {shape}: skipped, {e}")
            continue
        print_table(r)
        results.append(r)
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

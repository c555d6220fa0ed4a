"""The sampler: parity with transformers, log-probs, seeds, top-k/top-p, stop handling, meshes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_hf_model, with_random_adapters
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlvr_jax import rollout as R
from rlvr_jax import sampling
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.hf_io import state_from_tensors
from rlvr_jax.models.transformer import abstract_model, forward, positions_from_mask

REPO = Path(__file__).resolve().parents[1]


def jax_from_torch(model):
    """(cfg, graphdef, state) holding the same weights as a transformers model."""
    cfg = ModelConfig.from_hf_dict(model.config.to_dict()).replace(dtype="float32")
    tensors = ((k, v.detach().float().numpy()) for k, v in model.state_dict().items())
    state = state_from_tensors(cfg, tensors, source="torch")
    return cfg, abstract_model(cfg)[0], state


@pytest.fixture(scope="module")
def tiny_llama():
    return make_tiny_hf_model("llama_tied_gqa", seed=1)


@pytest.fixture(scope="module")
def tiny_qwen():
    return make_tiny_hf_model("qwen2_bias_untied_1kv", seed=2)


@pytest.fixture(scope="module")
def tiny_qwen3():
    return make_tiny_hf_model("qwen3_tied_hd24", seed=3)


def ragged_prompts(seed: int, lengths, vocab: int = 259) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@jax.jit(static_argnums=0)
def _teacher_forced(graphdef, state, ro: R.Rollout):
    ids = jnp.concatenate([ro.prompt_ids, ro.tokens], axis=1)
    mask = jnp.concatenate([ro.prompt_mask, ro.mask], axis=1)
    # Tokens after a row's end are masked out of attention; they do not change earlier positions.
    logits, _ = forward(graphdef, state, ids, positions_from_mask(mask), mask)
    logits = logits[:, ro.prompt_ids.shape[1] - 1 : -1]
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ro.tokens[..., None], -1)[..., 0]
    return logits, jnp.where(ro.mask, lp, 0.0)


def teacher_forced_logprobs(graphdef, state, ro: R.Rollout, temperature: float = 1.0):
    """Full-forward (no cache) logits [N,L,V] / temperature and log-probs [N,L] of the tokens."""
    logits, lp = _teacher_forced(graphdef, state, ro)
    return np.asarray(logits) / np.float32(temperature), np.asarray(lp)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen", "tiny_qwen3"])
def test_greedy_matches_transformers_generate(which, request):
    import torch

    hf = request.getfixturevalue(which)
    _, graphdef, state = jax_from_torch(hf)
    seqs = ragged_prompts(0, [5, 11, 2, 8])
    ids, mask, _ = R.pad_prompts(seqs, pad_id=0, buckets=(16,))
    sc = R.SamplingConfig(max_new_tokens=12, temperature=0.0)
    ro = R.generate(graphdef, state, ids, mask, jax.random.key(0), sc)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, ids.shape[1] :].numpy()
    np.testing.assert_array_equal(np.asarray(ro.tokens), ref)
    assert np.asarray(ro.mask).all() and not np.asarray(ro.stopped).any()


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen"])
def test_logprobs_equal_teacher_forced(which, request):
    _, graphdef, state = jax_from_torch(request.getfixturevalue(which))
    ids, mask, _ = R.pad_prompts(ragged_prompts(1, [3, 9, 6]), pad_id=0, buckets=(16,))
    sc = R.SamplingConfig(max_new_tokens=10, temperature=1.3, top_k=50, top_p=0.95)
    ro = R.generate(graphdef, state, ids, mask, jax.random.key(3), sc, n=2, stop_ids=(7, 9))
    _, ref = teacher_forced_logprobs(graphdef, state, ro)
    got = np.asarray(ro.logprobs)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert np.all(got[~np.asarray(ro.mask)] == 0.0)


def test_same_seed_same_samples_and_g_copies_differ(tiny_llama):
    _, graphdef, state = jax_from_torch(tiny_llama)
    ids, mask, _ = R.pad_prompts(ragged_prompts(2, [4, 7]), pad_id=0, buckets=(8,))
    sc = R.SamplingConfig(max_new_tokens=16, temperature=1.0)
    a = R.generate(graphdef, state, ids, mask, jax.random.key(5), sc, n=3)
    b = R.generate(graphdef, state, ids, mask, jax.random.key(5), sc, n=3)
    c = R.generate(graphdef, state, ids, mask, jax.random.key(6), sc, n=3)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    toks = np.asarray(a.tokens).reshape(2, 3, -1)
    assert not np.array_equal(toks[:, 0], toks[:, 1])  # the G samples of a prompt are not copies
    # The prompts are repeated G times, adjacent.
    np.testing.assert_array_equal(np.asarray(a.prompt_ids), np.repeat(ids, 3, axis=0))


def test_nothing_after_stop_token(tiny_llama):
    _, graphdef, state = jax_from_torch(tiny_llama)
    ids, mask, _ = R.pad_prompts(ragged_prompts(3, [5, 3, 8, 6]), pad_id=0, buckets=(8,))
    stops = tuple(range(3, 130))  # about half the vocabulary: rows stop at different steps
    sc = R.SamplingConfig(max_new_tokens=12, temperature=1.0)
    ro = R.generate(
        graphdef, state, ids, mask, jax.random.key(0), sc, n=4, stop_ids=stops, pad_id=0
    )
    toks, m = np.asarray(ro.tokens), np.asarray(ro.mask)
    lengths, stopped = np.asarray(ro.lengths), np.asarray(ro.stopped)
    assert len(set(lengths.tolist())) > 1
    for r in range(toks.shape[0]):
        n = lengths[r]
        assert m[r, :n].all() and not m[r, n:].any()  # one contiguous prefix
        hits = np.flatnonzero(np.isin(toks[r, :n], stops))
        if stopped[r]:  # ends at its first stop token, which is in the mask
            assert hits.tolist() == [n - 1]
        else:
            assert n == 12 and hits.size == 0
        assert (toks[r, n:] == 0).all()
        assert (np.asarray(ro.logprobs)[r, n:] == 0).all()


def kept_set(scaled: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Reference top-k then top-p keep mask over temperature-scaled logits [..., V]."""
    v = scaled.shape[-1]
    order = np.argsort(-scaled, axis=-1, kind="stable")
    srt = np.take_along_axis(scaled, order, -1)
    keep_sorted = np.ones_like(srt, bool)
    if 0 < top_k < v:
        keep_sorted[..., top_k:] = False
    if top_p < 1.0:
        masked = np.where(keep_sorted, srt, -np.inf)
        probs = np.exp(masked - masked.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        keep_sorted &= (np.cumsum(probs, -1) - probs) < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, -1)
    return keep


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    top_k=st.sampled_from([0, 1, 2, 5, 20]),
    top_p=st.sampled_from([1.0, 0.9, 0.5, 0.1]),
    temperature=st.sampled_from([0.5, 1.0, 2.0]),
    spread=st.floats(0.1, 8.0),
)
def test_sample_tokens_stays_in_kept_set(seed, top_k, top_p, temperature, spread):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((16, 64)) * spread).astype(np.float32)
    sc = R.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    tok = sampling.sample_tokens(
        jnp.asarray(logits), jax.random.key(seed), sc
    )  # eager: no compiles
    keep = kept_set(logits / np.float32(temperature), top_k, top_p)
    assert keep[np.arange(16), np.asarray(tok)].all()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    top_k=st.sampled_from([0, 3]),
    top_p=st.sampled_from([1.0, 0.6]),
)
def test_rollout_never_emits_outside_kept_set(seed, top_k, top_p):
    """On a tiny random model: every sampled token is in the top-k/top-p set of the distribution
    recomputed by a teacher-forced forward (the sampler's own logits are not trusted)."""
    if (top_k, top_p) == (0, 1.0):
        top_k = 2
    cfg = ModelConfig("llama", 96, 32, 64, 2, 4, 2, 8, rope_theta=1e4)
    from rlvr_jax.models.transformer import init_model

    graphdef, state = init_model(cfg, seed=0)
    # Sharpen the random model so that top-p sets are small.
    state["embed"].set_value(state["embed"][...] * 40.0)
    ids, mask, _ = R.pad_prompts(ragged_prompts(seed, [3, 6], vocab=96), pad_id=0, buckets=(8,))
    sc = R.SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=top_k, top_p=top_p)
    ro = R.generate(graphdef, state, ids, mask, jax.random.key(seed), sc, n=4)
    scaled, _ = teacher_forced_logprobs(graphdef, state, ro, temperature=0.8)
    keep = kept_set(scaled, top_k, top_p)
    toks = np.asarray(ro.tokens)
    assert np.take_along_axis(keep, toks[..., None], -1)[..., 0].all()


def test_pad_prompts_buckets_cut_and_batch():
    ids, mask, cut = R.pad_prompts([[5, 6, 7], [8] * 40], pad_id=0, buckets=(4, 32))
    assert ids.shape == (2, 32) and cut == 1
    assert ids[1].tolist() == [8] * 32 and mask[1].all()  # the LAST 32 tokens are kept
    assert ids[0, -3:].tolist() == [5, 6, 7] and mask[0].sum() == 3 and not mask[0, :-3].any()
    ids, mask, cut = R.pad_prompts([[1, 2]], pad_id=9, buckets=(4,), batch=3)
    assert ids.shape == (3, 4) and cut == 0 and (ids[:, :2] == 9).all()
    with pytest.raises(ValueError, match="no tokens"):
        R.pad_prompts([[]], pad_id=0)


def test_sampling_config_rejects_bad_values():
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            R.SamplingConfig(**bad)


MESH_SCRIPT = r"""
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
sys.path.insert(0, sys.argv[1])
from conftest import make_tiny_hf_model, make_tiny_hf_tokenizer
from test_rollout import jax_from_torch, ragged_prompts
from rlvr_jax import rollout as R
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import scoring
from rlvr_jax.mesh import SAMPLE_RULES, make_mesh, shard_params
from rlvr_jax.tokenizer import Tokenizer

assert jax.device_count() == 8
_, graphdef, state = jax_from_torch(make_tiny_hf_model("llama_tied_gqa", seed=1))
ids, mask, _ = R.pad_prompts(ragged_prompts(4, [3, 9, 6, 12]), pad_id=0, buckets=(16,))
sc = R.SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9)
tok = Tokenizer(make_tiny_hf_tokenizer())
jcfg = judge_prompts.JudgeConfig(template="short", yes_spellings=("Y",), no_spellings=("N",),
                     max_prompt_len=128, buckets=(64, 128), batch_size=8)
rows = [(f"question {i}?", f"so\nanswer {i}", "answer 3") for i in range(6)] + [("q", "", "a")]

def run(st, bs):
    stops = tuple(range(3, 60))
    ro = R.generate(graphdef, st, ids, mask, jax.random.key(7), sc, 2, stop_ids=stops,
                    batch_sharding=bs)
    res = scoring.Judge(graphdef, st, tok, jcfg, batch_sharding=bs).score(*zip(*rows))
    return ro, res

ro1, res1 = run(state, None)
mesh = make_mesh((2, 2, 2))
with jax.set_mesh(mesh):
    st = shard_params(state, mesh, SAMPLE_RULES)
    ro2, res2 = run(st, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
out = {
    "tokens_equal": bool((np.asarray(ro1.tokens) == np.asarray(ro2.tokens)).all()),
    "mask_equal": bool((np.asarray(ro1.mask) == np.asarray(ro2.mask)).all()),
    "logprob_diff": float(np.abs(np.asarray(ro1.logprobs) - np.asarray(ro2.logprobs)).max()),
    "p_yes_diff": float(np.abs(res1.p_yes - res2.p_yes).max()),
    "soft_diff": float(np.abs(res1.soft - res2.soft).max()),
    "verdict_equal": bool((res1.verdict == res2.verdict).all()),
    "weights_split": str(st["layers"][0]["attn"]["q"][...].sharding.spec),
    "tokens_split": str(ro2.tokens.sharding.spec),
    "mask_any_stop": bool(np.asarray(ro1.stopped).any()),
}
print("RESULT " + json.dumps(out))
"""


def test_sampling_and_scoring_on_2x2x2_mesh_equal_single_device(tmp_path):
    """8 emulated CPU devices (the flag must be set before jax starts: a subprocess)."""
    script = tmp_path / "mesh_check.py"
    script.write_text(MESH_SCRIPT)
    flags = "--xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO / "tests")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["tokens_equal"] and out["mask_equal"] and out["verdict_equal"], out
    assert out["logprob_diff"] <= 1e-5 and out["p_yes_diff"] <= 1e-6 and out["soft_diff"] <= 1e-6
    assert "tensor" in out["weights_split"], out  # the weights really are split
    assert "data" in out["tokens_split"], out  # and so are the sampled rows
    assert out["mask_any_stop"], out  # some rows stopped early: the stop path ran on the mesh


REAL_PROMPTS = [
    "Hi!",
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "What is 17 times 23? Show your working step by step, then give the final answer.",
    "List the planets of the solar system in order from the sun, with one fact about each.",
    "You are a chatbot who can solve problems. A train travels 120 km in 1.5 hours. What is its "
    "average speed in km/h, and how long would it take to travel 200 km at that speed?",
]


@pytest.mark.slow
def test_real_default_model_greedy_matches_transformers(default_model_dir):
    """SmolLM2-135M-Instruct: 8 chat prompts of different lengths batched, 64 greedy tokens,
    token-identical to transformers' greedy `generate` on the same GGUF weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_jax.models.default import default_gguf_path
    from rlvr_jax.models.model_dir import load_model

    m = load_model(default_model_dir)
    tok = m.tokenizer
    seqs = [R.encode_prompt(tok, p) for p in REAL_PROMPTS]
    assert len(set(map(len, seqs))) == 8
    ids, mask, _ = R.pad_prompts(seqs, tok.pad_id)
    sc = R.SamplingConfig(max_new_tokens=64, temperature=0.0)
    ro = R.generate(m.graphdef, m.state, ids, mask, jax.random.key(0), sc, stop_ids=tok.stop_ids,
                    pad_id=tok.pad_id)  # fmt: skip
    gguf = default_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=64,
            do_sample=False,
            eos_token_id=list(tok.stop_ids),
            pad_token_id=tok.pad_id,
        )[:, ids.shape[1] :].numpy()
    toks, m_ = np.asarray(ro.tokens), np.asarray(ro.mask)
    for r in range(8):
        n = int(m_[r].sum())
        assert toks[r, :n].tolist() == ref[r, :n].tolist(), f"row {r}: {REAL_PROMPTS[r]!r}"
        if n < 64:  # we stopped at a stop token: transformers stopped there too
            assert toks[r, n - 1] in tok.stop_ids and (ref[r, n:] == tok.pad_id).all()


def test_inverse_cdf_draws_match_probabilities():
    """The sampler's one-uniform-per-row draw follows the distribution (and skips zero weights)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(300, 0.3)).astype(np.float32)
    p[rng.choice(300, 100, replace=False)] = 0.0  # masked-out tokens
    p /= p.sum()
    n = 40000
    weights = jnp.broadcast_to(jnp.asarray(p), (n, 300))
    draws = np.asarray(sampling._inverse_cdf(weights, jax.random.key(0), block=64))
    freq = np.bincount(draws, minlength=300) / n
    assert (freq[p == 0] == 0).all()
    # Binomial standard error per token; 5 sigma everywhere.
    assert (np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9).all()


# tied GQA; bias, untied, 1 kv head; Qwen3's q/k norms; LoRA adapters on every target
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen", "tiny_qwen3", "tiny_qwen3+lora"])
def test_decode_step_layout_equals_model_forward(which, request):
    """models/decode.py's transposed-layout step computes what the model's cached forward does."""
    from rlvr_jax.models.decode import decode_cache, decode_step, decode_weights, model_cache

    cfg, graphdef, state = jax_from_torch(request.getfixturevalue(which.split("+")[0]))
    tol = 1e-5
    if which.endswith("+lora"):
        cfg, graphdef, state = with_random_adapters(cfg, state)
        tol = 3e-5  # two more products per weight, each summed in its own order: 1.5e-5 seen
    ids, mask, _ = R.pad_prompts(ragged_prompts(3, [5, 9, 2]), 0, (16,))
    cache, _ = R.prefill(graphdef, state, ids, mask, 24)
    w = jax.jit(decode_weights, static_argnums=0)(graphdef, state)
    step = jax.jit(lambda c, t, p: decode_step(cfg, w, t, p, c))
    ref = jax.jit(lambda c, t, p: forward(graphdef, state, t[:, None], p[:, None], None, c))
    pos = jnp.asarray(mask.sum(-1), jnp.int32)
    tok = jnp.asarray([7, 11, 13], jnp.int32)
    got_cache, want_cache = decode_cache(cache), cache
    for i in range(4):
        got, got_cache = step(got_cache, tok, pos + i)
        want, want_cache = ref(want_cache, tok, pos + i)
        np.testing.assert_allclose(got, want[:, 0], rtol=tol, atol=tol)
        tok = jnp.argmax(want[:, 0], axis=-1).astype(jnp.int32)
    got_cache = model_cache(got_cache)
    # The two paths group the projections' sums differently (decode.py's einsums, the model's
    # 2-D products): fp32 rounding, the same tolerance as the logits.
    for a, b in zip(jax.tree.leaves(got_cache), jax.tree.leaves(want_cache), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_cpu_decode_layout_also_under_a_one_device_mesh():
    """The trainer samples under `jax.set_mesh` (a 1x1x1 mesh on a laptop): the CPU layout
    must apply there too, not only outside a mesh context."""
    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax.models.decode import use_decode_layout

    assert use_decode_layout()
    with jax.set_mesh(mesh_lib.make_mesh("1,1,1")):
        assert use_decode_layout()


def _computations(hlo: str) -> dict[str, str]:
    """HLO text -> {computation name: its text}."""
    import re

    out, name = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            name, out[m.group(1)] = m.group(1), ""
        elif name is not None:
            out[name] += line + "\n"
    return out


def _called(comps: dict[str, str], root: str) -> set[str]:
    """root and every computation it calls, transitively."""
    import re

    seen, todo = set(), [root]
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        todo += re.findall(
            r"(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)", comps[c]
        )
    return seen


def test_decode_loop_copies_no_weights():
    """The compiled decode loop reads weights in place: no copy or transpose of any weight-shaped
    array inside the loop (a scan over stacked layers, for one, would copy every layer's weights
    every step). The CPU layout's transposed copy is made once, before the loop."""
    import re

    from rlvr_jax.models.transformer import init_model

    cfg = ModelConfig("llama", 256, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True)
    graphdef, state = init_model(cfg)
    ids, mask, _ = R.pad_prompts([[1, 2, 3]], 0, (8,))
    cache, first = jax.eval_shape(lambda s: R.prefill(graphdef, s, ids, mask, 16, 2), state)
    sc = R.SamplingConfig(8, 1.0)
    args = (graphdef, state, cache, first, np.repeat(mask, 2, 0), jax.random.key(0), sc)
    hlo = R.decode.lower(*args).compile().as_text()
    comps = _computations(hlo)
    bodies = re.findall(r" while\(.*body=%?([\w.\-]+)", hlo)
    # The decode loop is the largest (the others are sampling's small inner loops).
    loops = ["".join(comps[c] for c in _called(comps, b)) for b in bodies]
    loop = max(loops, key=len)
    assert "dot(" in loop and len(re.findall(r" dot\(", loop)) >= 7 * cfg.num_layers
    weights = {tuple(x.shape) for x in jax.tree.leaves(state) if x.ndim > 1}
    weights |= {s[::-1] for s in weights}
    moved = re.findall(r"= f32\[([\d,]*)\]\{[^}]*\} (?:copy|transpose)\(", loop)
    assert moved, "the pattern should see the (small) activation copies"
    assert not weights & {tuple(int(d) for d in m.split(",")) for m in moved}

"""Judge distillation: teacher rows, shared-prefix batching, the split forward, SFT, resume, export.

Everything runs on a tiny random model (D=64, 2 layers) over the byte-level test tokenizer with
YES and NO added as single tokens; the real default judge is checked by hand (see the issue note).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_VOCAB, make_tiny_hf_tokenizer
from flax import nnx

from rlvr_jax import data, update
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import rules, scoring
from rlvr_jax.judge.distill import examples as E
from rlvr_jax.judge.distill import minimal_pairs as mp
from rlvr_jax.judge.distill import sft, units
from rlvr_jax.judge.distill import split_model as sm
from rlvr_jax.judge.distill.cache import compute, hidden_batch, tokens_batch
from rlvr_jax.judge.distill.rows import load_questions, teacher_rows
from rlvr_jax.judge.distill.run import distill
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model_dir import load_model, save_model
from rlvr_jax.models.transformer import forward, init_model, positions_from_mask
from rlvr_jax.tokenizer import Tokenizer, left_pad

REPO = Path(__file__).resolve().parents[1]


def _row(i: int, subject: str = "economics", split: str = "train") -> dict:
    return {
        "id": f"{subject}-{split}-{i}",
        "query": [{"role": "user", "content": f"Q{i} {split}: what is item {i}?"}],
        "label": f"zeta{i}",
        "subject": subject,
        "rephrasings": [f"the zeta {i}"],
        "distractors": [f"omega{i}a", f"omega{i}b"],
    }


def _examples(n: int, split: str = "train") -> list[data.Example]:
    return [data.example_from_row(_row(i, split=split), f"r{i}", None) for i in range(n)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    hf = make_tiny_hf_tokenizer()
    hf.add_tokens(["YES", "NO"])  # single-token verdicts, as real judge vocabularies have
    return Tokenizer(hf)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok) -> Path:
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        eos_token_id=(tok.hf.convert_tokens_to_ids("<|im_end|>"),),
        pad_token_id=tok.pad_id,
        dtype="float32",
    )
    _, state = init_model(cfg, seed=0)
    return save_model(tmp_path_factory.mktemp("tiny") / "model", cfg, state, tok)


# ------------------------------------------------------------------------------ teacher rows


def test_labelled_rows_labels_and_master_key_negatives():
    exs = _examples(4)
    rows = E.labelled_rows(exs, seed=0, other_answers=1) + E.master_key_rows(exs, 0, 2)
    for r in rows:
        ex = next(e for e in exs if e.question == r["question"])
        line = rules.last_nonempty_line(r["response"])
        if r["kind"] in ("reference", "rephrasing"):
            assert r["label"] == "YES" and any(a in line for a in (ex.reference, *ex.rephrasings))
        elif r["kind"] == "distractor":
            assert r["label"] == "NO" and any(a in line for a in ex.distractors)
        elif r["kind"] == "other_answer":
            assert r["label"] == "NO" and ex.reference not in line and "zeta" in line
        else:
            assert r["kind"].startswith("probe:") and r["label"] == "NO"
            assert r["teacher"] == "master-key" and "zeta" not in r["response"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("other_answer") == 4 and sum(k.startswith("probe:") for k in kinds) == 8
    assert E.labelled_rows(exs, seed=0) == E.labelled_rows(exs, seed=0)  # seeded


@pytest.mark.parametrize(
    "answer, forms",
    [
        ("$25", ["25 dollars", "25"]),
        ("25 dollars", ["$25"]),
        ("$2.5 billion", ["2.5 billion dollars", "2.5 billion"]),
        ("+4 units", ["4 units", "4"]),
        ("an inferior good", ["inferior good", "An inferior good"]),
        ("P = 20", ["20"]),
        ("-1", ["-1.0"]),
        ("25%", ["25 percent"]),
        ("4 million", []),  # a scale word is no unit: "4" would change the value
        ("GDP", []),  # an acronym keeps its case
    ],
)
def test_surface_forms_keep_the_value(answer, forms):
    assert E.surface_forms(answer) == forms


def test_surface_rate_rewrites_yes_and_no_answers_and_keeps_labels():
    mk = lambda i, q, ref, reph, dis: data.Example(
        f"q{i}", q, ({"role": "user", "content": q},), ref, "economics", "economics", "micro",
        reph, dis,
    )  # fmt: skip
    exs = [
        mk(0, "Price?", "$20", ("P = 20",), ("$60", "$40")),
        mk(1, "Units?", "+4 units", (), ("-4 units",)),
    ]
    plain = E.labelled_rows(exs, seed=0, other_answers=0)
    rewritten = E.labelled_rows(exs, seed=0, other_answers=0, surface_rate=1.0)
    assert [r["label"] for r in plain] == [r["label"] for r in rewritten]
    lines = [rules.last_nonempty_line(r["response"]) for r in rewritten]
    for r, line in zip(rewritten, lines, strict=True):
        ex = next(e for e in exs if e.question == r["question"])
        sources = (ex.reference, *ex.rephrasings) if r["label"] == "YES" else ex.distractors
        assert any(f in line for a in sources for f in E.surface_forms(a))
    assert "$60" not in " ".join(lines) and "$20" not in " ".join(lines)  # YES and NO rewritten


@pytest.mark.parametrize(
    "answer, equal, different",
    [
        ("3/4", ["0.75"], ["-3/4", "3/5"]),
        ("0.375", ["3/8"], ["-0.375", "3.75", "0.0375", "0.5625", "0.2812"]),
        ("4%", ["0.04"], ["-4%", "40%", "0.4%", "6%", "3%", "0.4"]),
        ("1,200 units", ["1200 units"], ["-1,200 units", "12,000 units", "120 units"]),
        ("$9 million", ["$9,000,000"], ["-$9 million", "$90 million", "$0.9 million"]),
        ("+4 units", ["4 units"], ["-4 units", "40 units", "0.4 units", "6 units", "3 units"]),
        ("2", ["+2"], ["-2", "20", "0.2", "3", "1.5"]),
        ("0%", ["0"], []),  # zero has no sign to flip and no scale to change
        ("increasing returns to scale", [], ["decreasing returns to scale"]),
        ("the peso depreciates by about 6%", [], ["the peso appreciates by about 6%"]),
        ("first-degree price discrimination", [], ["second-degree price discrimination"]),
        ("but-1-ene", [], []),  # digits inside a name are no number
        ("1.4 × 10^10", [], []),
    ],
)
def test_minimal_pairs_of_an_answer(answer, equal, different):
    assert mp.equivalents(answer) == equal
    assert mp.near_misses(answer)[: len(different)] == different


@pytest.mark.parametrize(
    "answer", ["3/4", "0.375", "4%", "13.33%", "1,200", "2", "+4", "-1", "0.25"]
)
def test_minimal_pairs_agree_with_math_verify(answer):
    """An independent judge of numeric equality: every rewrite equal, every near miss not."""
    from math_verify import parse, verify

    gold = parse(f"${answer}$")
    assert all(verify(gold, parse(f"${x}$")) for x in mp.equivalents(answer))
    assert mp.near_misses(answer) and not any(
        verify(gold, parse(f"${x}$")) for x in mp.near_misses(answer)
    )


def test_minimal_pair_rows_add_to_the_other_rows():
    mk = lambda i, ref: data.Example(
        f"q{i}", f"Q{i}?", ({"role": "user", "content": f"Q{i}?"},), ref, "economics",
        "economics", "micro", (), ("wrong",),
    )  # fmt: skip
    exs = [mk(0, "0.25"), mk(1, "a rising price"), mk(2, "output falls")]
    plain = E.labelled_rows(exs, seed=0, other_answers=1)
    more = E.labelled_rows(exs, seed=0, other_answers=1, minimal_pairs=2)
    assert [r for r in more if r["kind"] not in ("equivalent", "near_miss")] == plain
    added = [r for r in more if r["kind"] in ("equivalent", "near_miss")]
    by_q = lambda q, kind: [rules.last_nonempty_line(r["response"]) for r in added
                            if r["question"] == q and r["kind"] == kind]  # fmt: skip
    assert len(by_q("Q0?", "equivalent")) == 1 and "1/4" in by_q("Q0?", "equivalent")[0]
    assert len(by_q("Q0?", "near_miss")) == 2 and not by_q("Q1?", "near_miss")
    assert "output rises" in by_q("Q2?", "near_miss")[0]
    for r in added:
        assert r["label"] == ("YES" if r["kind"] == "equivalent" else "NO")


def test_swapped_references_judge_the_other_way_round():
    mk = lambda i, reph: data.Example(
        f"q{i}", f"Q{i}?", ({"role": "user", "content": f"Q{i}?"},), f"ref{i}", "economics",
        "economics", "micro", reph, ("wrong a", "wrong b"),
    )  # fmt: skip
    exs = [mk(0, ("alt0 x", "alt0 y")), mk(1, ())]  # Q1 has no rephrasing to swap in
    plain = E.labelled_rows(exs, seed=0, minimal_pairs=2)
    more = E.labelled_rows(exs, seed=0, minimal_pairs=2, swapped_references=1)
    assert [r for r in more if not r["kind"].startswith("swap_")] == plain
    added = [r for r in more if r["kind"].startswith("swap_")]
    assert {r["question"] for r in added} == {"Q0?"}
    (ref,) = {r["reference"] for r in added}
    assert ref in ("alt0 x", "alt0 y")
    yes = {rules.last_nonempty_line(r["response"]) for r in added if r["label"] == "YES"}
    no = {rules.last_nonempty_line(r["response"]) for r in added if r["label"] == "NO"}
    other = "alt0 y" if ref == "alt0 x" else "alt0 x"
    assert len(yes) == 2 and any("ref0" in y for y in yes) and any(other in y for y in yes)
    assert len(no) == 2 and all("wrong" in n for n in no)
    assert all(r["kind"] == ("swap_yes" if r["label"] == "YES" else "swap_no") for r in added)
    assert len({r["id"] for r in more}) == len(more)


def test_no_heldout_question_leaks(tmp_path):
    train = [_row(i) for i in range(5)] + [_row(0, split="test")]  # one test question copied in
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps(_row(i, split="test")) + "\n" for i in range(2))
    )
    from configs import judge_econ

    cfg = judge_econ.get_config()
    cfg.data.train, cfg.data.test = (
        (str(tmp_path / "train.jsonl"),),
        (str(tmp_path / "test.jsonl"),),
    )
    cfg.distill.val_source, cfg.distill.val_questions = str(tmp_path / "train.jsonl"), 1
    train_q, val_q, held_q = load_questions(cfg)
    assert len(train_q) == 4 and len(val_q) == 1 and len(held_q) == 2
    assert val_q[0].question not in {q.question for q in train_q}
    rows = teacher_rows(cfg, train_q, val_q + held_q)
    held = {q.question for q in held_q}
    assert rows and not any(r["question"] in held for r in rows)
    assert any(r["teacher"] == "master-key" for r in rows)
    with pytest.raises(E.LeakError):
        E.check_no_leak(rows + E.heldout_rows(held_q, 0)[:1], held_q)


def test_shipped_config_keeps_economics_test_out():
    from configs import judge_econ

    train_q, val_q, held_q = load_questions(judge_econ.get_config())
    norm = lambda qs: {" ".join(q.question.lower().split()) for q in qs}
    assert len(held_q) >= 50 and {q.subject for q in train_q} >= {"economics", "medicine"}
    assert len(val_q) == 40 and {q.subject for q in val_q} == {"economics"}
    assert not norm(train_q) & norm(held_q) and not norm(train_q) & norm(val_q)
    assert not norm(val_q) & norm(held_q)


def test_calibration_maximises_validation_accuracy_within_the_probe_budget():
    """yes_bias: the offset with the best rephrasing-vs-distractor accuracy on validation rows
    whose master-key false-positive rate stays <= 5%, nearest 0 among equals (worked by hand:
    b in (-1, -0.83] gets 5/6 with no probe judged YES; b > 0.5 also gets 5/6 but passes the
    probe; the grid's point nearest 0 in the first range is -0.85)."""
    from rlvr_jax.judge.distill import evaluation

    kinds = ["rephrasing"] * 3 + ["distractor"] * 3 + ["probe:empty"]
    log_odds = np.array([2.0, 1.0, -0.5, 0.83, -1.0, -2.0, 0.2])
    rows = [{"kind": k, "label": "YES" if k == "rephrasing" else "NO"} for k in kinds]
    p_yes = 1 / (1 + np.exp(-log_odds))
    got = evaluation.choose_yes_bias(rows, p_yes, 1 - p_yes, np.zeros(7, bool))
    assert got["yes_bias"] == pytest.approx(-0.85)
    assert got["val_accuracy_rd"] == pytest.approx(5 / 6) and got["val_master_key_fpr"] == 0.0
    # Without the probe budget the other range wins: same accuracy, and 0.55 is nearer 0.
    loose = evaluation.choose_yes_bias(rows, p_yes, 1 - p_yes, np.zeros(7, bool), max_fpr=1.0)
    assert loose["yes_bias"] == pytest.approx(0.55) and loose["val_master_key_fpr"] == 1.0


def test_math_rows_follow_math_verify():
    exs = data.load_examples("math:4:0", "train", system_prompt=None).examples
    rows = E.math_rows(exs, seed=0)
    for r in rows:
        ex = next(e for e in exs if e.question == r["question"])
        k = int(r["id"].rsplit("/", 1)[1])  # candidates: reference, rephrasings, distractors
        assert (r["label"] == "YES") == (k <= len(ex.rephrasings)), r
        assert r["teacher"] == "math-verify"
    assert {r["label"] for r in rows} == {"YES", "NO"}


# ------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("merge_tokens", [100, 0])  # 0: one-unit buckets stay apart
def test_units_cover_every_row_once_and_rebuild_prompts(merge_tokens):
    rng = np.random.default_rng(0)
    ids, keys = [], []
    for g in range(7):
        prefix = rng.integers(3, 200, size=int(rng.integers(5, 40))).tolist()
        for _ in range(int(rng.integers(1, 12))):
            ids.append(prefix + rng.integers(3, 200, size=int(rng.integers(1, 30))).tolist())
            keys.append(g)
    buckets = units.build_buckets(ids, keys, pad_id=0, max_suffixes=4, merge_tokens=merge_tokens)
    seen = []
    for bt in units.sequential_batches(buckets, batch_tokens=64):
        b = buckets[bt.bucket]
        for j, owner in zip(bt.suffixes[bt.valid], bt.owner[bt.valid], strict=True):
            u = bt.units[owner]
            assert b.start[u] <= j < b.start[u + 1]
            rebuilt = b.prefix_ids[u][b.prefix_mask[u]].tolist()
            rebuilt += b.suffix_ids[j][b.suffix_mask[j]].tolist()
            assert rebuilt == ids[b.rows[j]]
            seen.append(int(b.rows[j]))
    assert sorted(seen) == list(range(len(ids)))
    for e in (0, 1):
        got = [
            int(buckets[bt.bucket].rows[j])
            for bt in units.epoch_batches(buckets, 64, 3, e)
            for j in bt.suffixes[bt.valid]
        ]
        assert sorted(got) == list(range(len(ids)))


# ------------------------------------------------------------------------------ split forward


def _batch(tok, seed=0):
    rng = np.random.default_rng(seed)
    exs = _examples(2)
    rows = E.labelled_rows(exs, seed) + E.master_key_rows(exs, seed, 2)
    ids = [
        judge_prompts.build_judge_prompt(
            tok,
            r["question"],
            r["response"],
            r["reference"],
            judge_prompts.JudgeConfig(template="short"),
        ).ids
        for r in rows
    ]
    buckets = units.build_buckets(ids, [r["question"] for r in rows], tok.pad_id, 16, 10**9)
    (bt,) = units.sequential_batches(buckets, 10_000)
    labels = np.array([r["label"] == "YES" for r in rows], np.int32)[buckets[0].rows[bt.suffixes]]
    del rng
    return rows, ids, buckets[0], bt, jnp.asarray(labels), jnp.asarray(bt.valid, jnp.float32)


@pytest.mark.parametrize("split", [0, 1])  # 0: a scanned block below the top one; 1: top only
def test_split_path_equals_plain_forward(tiny_dir, tok, split):
    m = load_model(tiny_dir)
    rows, ids, b, bt, _, _ = _batch(tok)
    yes, no = sm.spelling_ids(tok.token_ids_of(["YES"])), sm.spelling_ids(tok.token_ids_of(["NO"]))
    t = tokens_batch(b, bt)
    if split:
        block_def, stacked = sm.stack_blocks(m.graphdef, m.state, 0, split)
        h = sm.bottom(block_def, stacked, m.state["embed"][...], t)
    else:
        h = sm.embed_jit(m.state["embed"][...], t)
    got = sm.score(m.graphdef, m.state, split, h, yes, no)
    full = [ids[r] for r in b.rows[bt.suffixes]]
    pids, mask = left_pad(full, None, tok.pad_id)
    logits, _ = forward(m.graphdef, m.state, jnp.asarray(pids), positions_from_mask(mask), mask)
    p = jax.nn.softmax(logits[:, -1], axis=-1)
    np.testing.assert_allclose(got["p_yes"], p[:, int(yes[0])], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got["greedy"], jnp.argmax(logits[:, -1], axis=-1))


def test_cached_training_equals_uncached(tiny_dir, tok):
    m = load_model(tiny_dir)
    _, _, b, bt, labels, weights = _batch(tok)
    yes, no = sm.spelling_ids(tok.token_ids_of(["YES"])), sm.spelling_ids(tok.token_ids_of(["NO"]))
    trainable, frozen = update.split_trainable(m.state, update.trainable_filter(2, 1))
    t = tokens_batch(b, bt)
    h = hidden_batch(b, compute(m.graphdef, m.state, 1, [b], [bt])[0], bt)  # the cached path

    def cached(params):
        return sft.batch_loss(m.graphdef, 1, params, frozen, h, labels, weights, yes, no)[0]

    def uncached(params):  # every block from the tokens, the frozen one included
        logits = sm.full_logits(m.graphdef, nnx.merge_state(frozen, params), t)
        return sm.verdict_loss(*sm.verdict_logprobs(logits, yes, no), labels, weights)

    l1, g1 = jax.jit(jax.value_and_grad(cached))(trainable)
    l2, g2 = jax.jit(jax.value_and_grad(uncached))(trainable)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-6)


def test_sure_verdicts_stay_probabilities():
    """Six YES spellings holding all the mass: float32 sums round past 1 (by ~2e-7) unless
    clipped, and the evaluation's AUC/calibration (sklearn) then refuses the scores."""
    rng = np.random.default_rng(0)
    yes_ids, no_ids = jnp.arange(6), jnp.arange(6, 12)
    over = False
    for _ in range(50):
        logits = jnp.asarray(rng.normal(0, 3, (64, 40)).astype(np.float32)).at[:, :6].add(60.0)
        s = scoring._scores(logits, yes_ids, no_ids, jnp.ones(64, bool))
        for x in (s.p_yes, s.p_no, s.soft):
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        p_yes, p_no = scoring.verdict_probs(logits, yes_ids, no_ids)  # split_model.score's too
        assert float(p_yes.max()) <= 1.0 and float(p_no.min()) >= 0.0
        probs = jax.nn.softmax(logits, axis=-1)
        over |= float(jnp.take(probs, yes_ids, axis=-1).sum(-1).max()) > 1.0
    assert over  # the unclipped sums did round past 1: the case is exercised


def test_pair_loss_ranks_candidates_of_one_prompt_only():
    p_yes = jnp.array([0.9, 0.2, 0.6, 0.5, 0.3])
    p_no = jnp.array([0.1, 0.8, 0.4, 0.5, 0.7])
    labels = jnp.array([1, 0, 1, 0, 0])
    weights = jnp.array([1.0, 1.0, 1.0, 0.0, 2.0])  # row 3 is a filler slot
    owner = jnp.array([0, 0, 1, 1, 1])
    got = sm.pair_loss(jnp.log(p_yes), jnp.log(p_no), labels, weights, owner)
    m = np.log(np.asarray(p_yes) / np.asarray(p_no))
    pairs = [(0, 1), (2, 4)]  # (YES, NO) of the same owner; not (0, 4), not the filler (2, 3)
    want = np.mean([np.log1p(np.exp(m[j] - m[i])) for i, j in pairs])
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    none = sm.pair_loss(jnp.log(p_yes), jnp.log(p_no), labels, weights, jnp.arange(5))
    assert float(none) == 0.0  # no two candidates of one prompt: no pair


def test_sft_step_lowers_the_loss(tiny_dir, tok):
    import ml_collections

    m = load_model(tiny_dir)
    _, _, b, bt, labels, weights = _batch(tok)
    yes, no = sm.spelling_ids(tok.token_ids_of(["YES"])), sm.spelling_ids(tok.token_ids_of(["NO"]))
    trainable, frozen = update.split_trainable(m.state, update.trainable_filter(2, 1))
    t = tokens_batch(b, bt)
    block_def, stacked = sm.stack_blocks(m.graphdef, m.state, 0, 1)
    h = sm.bottom(block_def, stacked, m.state["embed"][...], t)
    opt = update.make_optimizer(
        ml_collections.ConfigDict(
            dict(
                lr=3e-3,
                warmup_frac=0.0,
                min_lr_ratio=1.0,
                b1=0.9,
                b2=0.95,
                weight_decay=0.0,
                grad_clip=1.0,
            )
        ),
        20,
    )
    step = sft.make_train_step(m.graphdef, 1, opt)
    st = sft.init_state(jax.tree.map(jnp.copy, trainable), opt)  # the step donates its state
    losses = []
    for _ in range(8):
        st, met = step(st, frozen, h, labels, weights, yes, no)
        losses.append(float(met["loss"]))
    assert losses[-1] < losses[0] - 0.5 and all(np.diff(losses) < 0), losses
    assert int(st.step) == 8
    leaves = lambda tree: [np.array(x) for x in jax.tree.leaves(tree)]  # copies: state is donated
    assert st.ema is None and st.judge_params is st.params  # no average kept by default
    # A non-finite loss leaves params and optimizer state as they were, and says so.
    before = leaves((st.params, st.opt_state))
    st, met = step(st, frozen, h, labels, weights * jnp.nan, yes, no)
    assert int(met["nonfinite"]) == 1 and not np.isfinite(float(met["loss"]))
    for a, b in zip(leaves((st.params, st.opt_state)), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # Decay 0.5: the same params (the average does not steer training), ema halfway each step.
    step_ema = sft.make_train_step(m.graphdef, 1, opt, ema_decay=0.5)
    st0 = sft.init_state(jax.tree.map(jnp.copy, trainable), opt)
    st_ema = sft.init_state(jax.tree.map(jnp.copy, trainable), opt, ema_decay=0.5)
    expected = leaves(st_ema.ema)
    for _ in range(3):
        st0, _ = step(st0, frozen, h, labels, weights, yes, no)
        st_ema, _ = step_ema(st_ema, frozen, h, labels, weights, yes, no)
        expected = [0.5 * e + 0.5 * p for e, p in zip(expected, leaves(st_ema.params), strict=True)]
        for a, b in zip(leaves(st_ema.ema), expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(leaves(st0.params), leaves(st_ema.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(leaves(st_ema.ema)[0], leaves(st_ema.params)[0])
    assert st_ema.judge_params is st_ema.ema
    with pytest.raises(ValueError, match="ema_decay"):
        sft.make_train_step(m.graphdef, 1, opt, ema_decay=1.0)
    with pytest.raises(ValueError, match="holds no average"):  # decay and state must agree
        step_ema(st0, frozen, h, labels, weights, yes, no)
    with pytest.raises(ValueError, match="holds an average"):
        step(st_ema, frozen, h, labels, weights, yes, no)


# ------------------------------------------------------------------------------ whole run


def _tiny_run_config(tmp_path: Path, model_dir: Path):
    from configs import judge_econ

    for split, n in (("train", 6), ("test", 2)):
        rows = [_row(i, split=split) for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = judge_econ.get_config()
    cfg.judge.model = str(model_dir)
    cfg.data.train, cfg.data.test = (
        (str(tmp_path / "train.jsonl"),),
        (str(tmp_path / "test.jsonl"),),
    )
    cfg.optim.train_layers = 1
    cfg.optim.lr = 3e-3
    cfg.distill.epochs = 2
    cfg.distill.batch_tokens = 256
    cfg.distill.merge_tokens = 10**9  # one shape: one compile per function
    cfg.distill.eval_probes_per_question = 2
    cfg.distill.val_source, cfg.distill.val_questions = str(tmp_path / "train.jsonl"), 2
    cfg.train.ckpt_every = 2
    cfg.train.tensorboard = False
    return cfg


def test_distill_resumes_exactly_and_exports(tmp_path, tiny_dir):
    cfg = _tiny_run_config(tmp_path, tiny_dir)
    full = distill(cfg, tmp_path / "a")
    assert full["steps"] >= 4 and full["scorer_check"]["max_abs_diff_p_yes"] < 1e-4
    assert distill(cfg, tmp_path / "b", stop_after=3) == {"stopped_at": 3}
    resumed = distill(cfg, tmp_path / "b")  # resumes from the step-2 checkpoint
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    a, b = lines(tmp_path / "a"), lines(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ("train/loss", "heldout/auc_rd"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-5), (ra["step"], k)
    assert resumed["distilled"]["kappa"] == pytest.approx(full["distilled"]["kappa"])

    # tools/score.py scores the model directory and its HF export, converted back in by
    # tools/convert_checkpoint.py, the same.
    from rlvr_jax.cli import convert_checkpoint, score

    back = tmp_path / "back"
    assert convert_checkpoint.main(["hf-to-jax", str(tmp_path / "a" / "judge_hf"), str(back)]) == 0
    trained_on = judge_prompts.judge_config_for(
        cfg.judge.model, str(cfg.judge.template), max_prompt_len=int(cfg.judge.max_prompt_len)
    )
    # ... with the calibration chosen on the validation questions
    trained_on = dataclasses.replace(trained_on, yes_bias=full["calibration"]["yes_bias"])
    assert full["calibration"]["val_questions"] == 2
    for d in (tmp_path / "a" / "judge", tmp_path / "a" / "judge_hf", back):
        assert judge_prompts.prompt_settings_of(d) == trained_on.prompt_settings(), d
    rows = [
        {"question": "Q1 test: what is item 1?", "reference": "zeta1", "response": r}
        for r in ("Therefore, the answer is zeta1", "Thought process:", "omega1a")
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = []
    for judge in (tmp_path / "a" / "judge", back):
        out = tmp_path / f"{judge.name}.jsonl"
        args = [
            "--judge",
            str(judge),
            "--input",
            str(inp),
            "--out",
            str(out),
        ]  # no --template: the prompt settings stored with the judge
        assert score.main(args) == 0
        outs.append([json.loads(x) for x in out.read_text().splitlines()])
    for r1, r2 in zip(*outs, strict=True):
        assert r1["verdict"] == r2["verdict"] and r1["binary"] == r2["binary"]
        for k in ("p_yes", "p_no", "soft", "soft_normalized"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-5, abs=1e-7), k

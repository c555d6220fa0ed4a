"""The distillation's judge rows made ready for the split model: the starting model and where
it is split (`Start`, `load_start`), rows with their judge prompts in shared-prefix buckets
(`Prepared`, `prepare`), their split-layer states computed once or read back from disk
(`fill_cache`), and every row's P(YES), P(NO) scored from those states (`score_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge.distill import cache as act_cache
from rlvr_jax.judge.distill import evaluation, units
from rlvr_jax.judge.distill import split_model as sm
from rlvr_jax.models.default import resolve_model_dir
from rlvr_jax.models.model_dir import load_model


@dataclasses.dataclass
class Prepared:
    """Rows with their judge prompts, bucketed; `cache` holds their split-layer states."""

    rows: list[dict]
    empty: np.ndarray
    buckets: list[units.Bucket]
    batches: list[units.Batch]
    cache: act_cache.Cache | None = None


def prepare(rows, tok, jcfg, cfg, drop_empty: bool) -> Prepared:
    """`rows` with their judge prompts in shared-prefix buckets and batches of config
    distill.batch_tokens; drop_empty drops the rows whose response commits to nothing."""
    ids, empty = judge_prompts.prompt_ids(tok, rows, jcfg)
    if drop_empty:  # the scorer forces these to 0 whatever the judge says: nothing to learn
        keep = [i for i, e in enumerate(empty) if not e]
        rows, ids, empty = [rows[i] for i in keep], [ids[i] for i in keep], [False] * len(keep)
    d = cfg.distill
    keys = [(r["question"], r["reference"]) for r in rows]
    buckets = units.build_buckets(ids, keys, tok.pad_id, int(d.max_suffixes), int(d.merge_tokens))
    batches = units.sequential_batches(buckets, int(d.batch_tokens))
    return Prepared(rows, np.asarray(empty, bool), buckets, batches)


def fill_cache(p: Prepared, name: str, model, split: int, workdir: Path, model_id: str) -> None:
    """Sets p.cache: the states after layer `split` of every bucket of `p`, read from
    WORKDIR/activations when they were saved for the same model, split and buckets, else
    computed once and saved there."""
    from tqdm import tqdm

    key = act_cache.cache_key(model_id, split, p.buckets)
    folder = workdir / "activations"
    p.cache = act_cache.load(folder, f"{name}-{key}", len(p.buckets))
    if p.cache is not None:
        print(f"rlvr_jax: {name} activations read from {folder}", file=sys.stderr)
        return
    real, padded = units.token_count(p.buckets, p.batches)
    desc = f"{name}: layers 0-{split} once ({real} tokens, {padded} padded)"
    with tqdm(total=len(p.rows), desc=desc, unit="row", file=sys.stderr) as bar:
        p.cache = act_cache.compute(
            model.graphdef, model.state, split, p.buckets, p.batches, bar.update
        )
    act_cache.save(folder, f"{name}-{key}", p.cache)


def score_rows(
    graphdef, state, split, p: Prepared, yes, no, yes_bias: float = 0.0
) -> dict[str, np.ndarray]:
    """p_yes, p_no, greedy [n_rows] of every row of `p`, from its cached split-layer states, under
    the calibration yes_bias."""
    n = len(p.rows)
    out = {"p_yes": np.zeros(n), "p_no": np.zeros(n), "greedy": np.zeros(n, np.int64)}
    for bt in p.batches:
        b = p.buckets[bt.bucket]
        h = act_cache.hidden_batch(b, p.cache[bt.bucket], bt)
        res = jax.device_get(sm.score(graphdef, state, split, h, yes, no, np.float32(yes_bias)))
        rows = b.rows[bt.suffixes[bt.valid]]
        for k in out:
            out[k][rows] = np.asarray(res[k])[bt.valid]
    return out


@dataclasses.dataclass
class Start:
    """The model the judge is distilled from, its prompt settings and verdict token ids, and the
    layer `split` below which its activations are cached (blocks from there up run every step)."""

    model: Any
    jcfg: judge_prompts.JudgeConfig
    yes_l: list[int]
    no_l: list[int]
    yes: Any
    no: Any
    train_layers: int
    split: int
    model_id: str

    def figures(self, state, p: Prepared, yes_bias: float = 0.0) -> tuple[dict, dict]:
        """(quality figures, rewards) of the judge `state` on the rows of `p`."""
        s = score_rows(self.model.graphdef, state, self.split, p, self.yes, self.no, yes_bias)
        r = evaluation.rewards(s["p_yes"], s["p_no"], s["greedy"], self.yes_l, self.no_l, p.empty)
        return evaluation.quality(p.rows, r), r

    def onpolicy_figures(self, state, p: Prepared | None, yes_bias: float = 0.0) -> dict | None:
        """The on-policy figures of `state` on the answers `p` (None without any)."""
        if p is None:
            return None
        s = score_rows(self.model.graphdef, state, self.split, p, self.yes, self.no, yes_bias)
        r = evaluation.rewards(s["p_yes"], s["p_no"], s["greedy"], self.yes_l, self.no_l, p.empty)
        return evaluation.onpolicy_quality(p.rows, r)


def load_start(cfg: Any) -> Start:
    """The starting model of config judge.model in fp32. The top optim.train_layers blocks are
    trained; distill.cache_layer, when lower, caches less and runs the blocks between frozen."""
    model_dir = resolve_model_dir(str(cfg.judge.model))
    model = load_model(model_dir, dtype="float32")
    n_layers = model.cfg.num_layers
    jcfg = judge_prompts.judge_config_for(
        model_dir, str(cfg.judge.template), max_prompt_len=int(cfg.judge.max_prompt_len)
    )
    yes_l, no_l = judge_prompts.verdict_ids(model.tokenizer, jcfg)
    k = int(cfg.optim.train_layers)
    split = 0 if k < 0 or k >= n_layers else n_layers - k
    if int(cfg.distill.cache_layer) >= 0:
        split = min(split, int(cfg.distill.cache_layer))
    # What the activation caches were computed with: a cache of another model is never read.
    model_id = json.dumps([str(Path(model_dir).resolve()), model.cfg.to_hf_dict()], default=str)
    yes, no = sm.spelling_ids(yes_l), sm.spelling_ids(no_l)
    return Start(model, jcfg, yes_l, no_l, yes, no, k, split, model_id)

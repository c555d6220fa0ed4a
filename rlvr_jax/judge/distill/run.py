"""One distillation run: teachers -> judge rows (rows.py) -> cached bottom -> SFT of the top ->
evaluation.

Rerunning with the same work directory resumes: the activation caches are read back from disk,
the SFT state from its last checkpoint, and the metrics file is cut to that step, so the run
continues exactly as an uninterrupted one would (batch order is a function of seed and epoch).
Artifacts in WORKDIR: judge/ (model directory), judge_hf/ (Hugging Face export), results.json,
heldout_table.md, metrics.jsonl, checkpoints/, activations/.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax import atomic, checkpoint, update
from rlvr_jax.cpu_meter import CpuMeter
from rlvr_jax.judge import prompts as judge_prompts
from rlvr_jax.judge import scoring
from rlvr_jax.judge.distill import cache as act_cache
from rlvr_jax.judge.distill import evaluation, examples, sft, units
from rlvr_jax.judge.distill import split_model as sm
from rlvr_jax.judge.distill.rows import eval_rows, load_questions, onpolicy_answers, teacher_rows
from rlvr_jax.metrics import MetricsWriter
from rlvr_jax.models.default import resolve_model_dir
from rlvr_jax.models.model_dir import load_model, save_model

# In the judge's directory: its held-out and on-policy figures from the distillation itself.
FIGURES_FILE = "heldout_figures.json"


@dataclasses.dataclass
class Prepared:
    """Rows with their judge prompts, bucketed; `cache` holds their split-layer states."""

    rows: list[dict]
    empty: np.ndarray
    buckets: list[units.Bucket]
    batches: list[units.Batch]
    cache: act_cache.Cache | None = None


def prepare(rows, tok, jcfg, cfg, drop_empty: bool) -> Prepared:
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


def _line(fig: dict) -> str:
    return " ".join(f"{k}={fig[k]:.3f}" for k, _, _ in evaluation.REPORTED)


def _scalars(figures: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in figures.items() if isinstance(v, int | float)}


def _restore_ckpt(ckpts: checkpoint.StepCheckpoints, st: sft.SFTState, step: int) -> sft.SFTState:
    leaves, treedef = jax.tree.flatten(st)
    abstract = {"leaves": [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]}
    return jax.tree.unflatten(treedef, ckpts.restore(step, abstract)["leaves"])


def resolve_workdir(cfg: Any, workdir: str | Path | None = None) -> Path:
    """The run's directory: `workdir`, else the config's, else runs/<name>."""
    return Path(workdir or cfg.workdir or f"runs/{cfg.name}")


def distill(cfg: Any, workdir: str | Path | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume) the distillation of `cfg` in `workdir`; returns results.json's content.

    stop_after: return after this many SFT steps of this call (tests use it to emulate a kill).
    """
    from rich.console import Console
    from tqdm import tqdm

    meter, phases = CpuMeter(), {}
    workdir = resolve_workdir(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    if (workdir / "results.json").is_file() and (workdir / "judge").is_dir():
        print(f"rlvr_jax: {workdir} holds a finished distillation", file=sys.stderr)
        return json.loads((workdir / "results.json").read_text())
    if cfg.judge.model == "distilled":
        raise ValueError("config judge.model: the starting model cannot be the distilled judge")
    model_dir = resolve_model_dir(str(cfg.judge.model))
    model = load_model(model_dir, dtype="float32")
    tok, n_layers = model.tokenizer, model.cfg.num_layers
    jcfg = judge_prompts.judge_config_for(
        model_dir, str(cfg.judge.template), max_prompt_len=int(cfg.judge.max_prompt_len)
    )
    yes_l, no_l = judge_prompts.verdict_ids(tok, jcfg)
    yes, no = sm.spelling_ids(yes_l), sm.spelling_ids(no_l)
    k = int(cfg.optim.train_layers)
    split = 0 if k < 0 or k >= n_layers else n_layers - k
    if int(cfg.distill.cache_layer) >= 0:  # cache lower than the trained blocks: the blocks in
        split = min(split, int(cfg.distill.cache_layer))  # between run frozen every step
    model_id = json.dumps([str(Path(model_dir).resolve()), model.cfg.to_hf_dict()], default=str)

    train_q, val_q, held_q = load_questions(cfg)
    train = prepare(teacher_rows(cfg, train_q, val_q + held_q), tok, jcfg, cfg, drop_empty=True)
    held = prepare(eval_rows(cfg, held_q), tok, jcfg, cfg, drop_empty=False)
    val = prepare(eval_rows(cfg, val_q), tok, jcfg, cfg, drop_empty=False) if val_q else None
    # Held-out on-policy answers to this run's own questions: how it will score RL's answers.
    onp_rows = examples.onpolicy_rows(
        examples.keep_questions(onpolicy_answers(cfg, "heldout"), train_q + val_q)
    )
    onp = prepare(onp_rows, tok, jcfg, cfg, drop_empty=False) if onp_rows else None
    counts = examples.label_counts(train.rows)
    print(
        f"rlvr_jax: {len(train_q)} training questions -> {len(train.rows)} judge rows {counts}; "
        f"{len(val_q)} validation questions -> {len(val.rows) if val else 0} rows; "
        f"{len(held_q)} held-out questions -> {len(held.rows)} rows",
        file=sys.stderr,
    )
    fill_cache(train, "train", model, split, workdir, model_id)
    fill_cache(held, "heldout", model, split, workdir, model_id)
    if val is not None:
        fill_cache(val, "val", model, split, workdir, model_id)
    if onp is not None:
        fill_cache(onp, "onpolicy", model, split, workdir, model_id)

    labels = np.array([r["label"] == "YES" for r in train.rows], np.int32)
    n_yes = max(int(labels.sum()), 1)
    n_no = max(len(labels) - n_yes, 1)
    w = np.where(labels == 1, len(labels) / (2 * n_yes), len(labels) / (2 * n_no))
    if not cfg.distill.class_balance:
        w = np.ones_like(w)
    w = w.astype(np.float32)

    def figures(state, p: Prepared = held, yes_bias: float = 0.0) -> tuple[dict, dict]:
        s = score_rows(model.graphdef, state, split, p, yes, no, yes_bias)
        r = evaluation.rewards(s["p_yes"], s["p_no"], s["greedy"], yes_l, no_l, p.empty)
        return evaluation.quality(p.rows, r), r

    def onpolicy_figures(state, yes_bias: float = 0.0) -> dict | None:
        if onp is None:
            return None
        s = score_rows(model.graphdef, state, split, onp, yes, no, yes_bias)
        r = evaluation.rewards(s["p_yes"], s["p_no"], s["greedy"], yes_l, no_l, onp.empty)
        return evaluation.onpolicy_quality(onp.rows, r)

    zero_shot, _ = figures(model.state)
    print("rlvr_jax: zero-shot " + _line(zero_shot), file=sys.stderr)
    phases["prepare_and_cache_s"] = meter.read()["wall_s"]

    trainable, frozen = update.split_trainable(model.state, update.trainable_filter(n_layers, k))
    epochs = [
        units.epoch_batches(train.buckets, int(cfg.distill.batch_tokens), int(cfg.seed), e)
        for e in range(int(cfg.distill.epochs))
    ]
    plan = [bt for ep in epochs for bt in ep]
    epoch_ends = set(np.cumsum([len(ep) for ep in epochs]).tolist())
    optimizer = update.make_optimizer(cfg.optim, len(plan))
    step_fn = sft.make_train_step(
        model.graphdef,
        split,
        optimizer,
        float(cfg.distill.ema_decay),
        float(cfg.distill.pair_weight),
    )
    # Committed to the device like the step's outputs, so the donated state keeps one compile.
    st = sft.init_state(jax.tree.map(jnp.copy, trainable), optimizer, float(cfg.distill.ema_decay))
    st = jax.device_put(st, jax.devices()[0])
    writer = MetricsWriter(workdir, tensorboard=bool(cfg.train.tensorboard))
    ckpts = checkpoint.StepCheckpoints(workdir, int(cfg.train.keep_ckpts))
    first = ckpts.latest() or 0
    if first:
        st = _restore_ckpt(ckpts, st, first)
        writer.truncate_after(first)
        print(f"rlvr_jax: resumed {workdir} from step {first}", file=sys.stderr)
    done_here = 0
    bar = tqdm(range(first, len(plan)), initial=first, total=len(plan), desc="SFT", unit="step")
    for i in bar:
        bt = plan[i]
        b = train.buckets[bt.bucket]
        h = act_cache.hidden_batch(b, train.cache[bt.bucket], bt)
        rows = b.rows[bt.suffixes]
        st, met = step_fn(
            st, frozen, h, jnp.asarray(labels[rows]), jnp.asarray(w[rows] * bt.valid), yes, no
        )
        met = {f"train/{k}": v for k, v in jax.device_get(met).items()}
        met["train/epoch"] = sum(e <= i for e in epoch_ends)
        writer.write(i + 1, met)
        bar.set_postfix(loss=f"{met['train/loss']:.3f}", acc=f"{met['train/acc']:.2f}")
        done_here += 1
        if cfg.distill.eval_each_epoch and i + 1 in epoch_ends and i + 1 < len(plan):
            fig, _ = figures(nnx.merge_state(frozen, st.judge_params))
            writer.write(i + 1, _scalars(fig, "heldout/"))
            bar.write(
                f"rlvr_jax: after epoch {len([e for e in epoch_ends if e <= i + 1])}: " + _line(fig)
            )
        if (i + 1) % int(cfg.train.ckpt_every) == 0 or i + 1 == len(plan):
            ckpts.save(i + 1, {"leaves": jax.tree.leaves(st)})
        if stop_after is not None and done_here >= stop_after and i + 1 < len(plan):
            writer.close()
            return {"stopped_at": i + 1}
    bar.close()
    phases["sft_s"] = meter.read()["wall_s"] - phases["prepare_and_cache_s"]

    state = nnx.merge_state(frozen, st.judge_params)
    calibration = {"yes_bias": 0.0}
    if val is not None and cfg.distill.calibrate:
        val_before, v = figures(state, val)
        calibration = evaluation.choose_yes_bias(val.rows, v["p_yes"], v["p_no"], val.empty)
        calibration["val_questions"] = len(val_q)
        calibration["val_uncalibrated"] = val_before
        calibration["val_calibrated"], _ = figures(state, val, calibration["yes_bias"])
        print(
            f"rlvr_jax: calibration on {len(val_q)} validation questions: yes_bias "
            f"{calibration['yes_bias']:+.2f}; validation before "
            + _line(calibration["val_uncalibrated"])
            + "; after "
            + _line(calibration["val_calibrated"]),
            file=sys.stderr,
        )
    bias = float(calibration["yes_bias"])
    jcfg = dataclasses.replace(jcfg, yes_bias=bias)
    uncalibrated, rewards = figures(state)
    distilled = uncalibrated
    if bias != 0.0:  # the offset changes the verdicts: a pass of its own
        distilled, rewards = figures(state, held, bias)
    writer.write(len(plan), _scalars(distilled, "heldout/"))
    onpolicy_heldout = onpolicy_figures(state, bias)
    writer.close()
    results = {
        "steps": len(plan),
        "train_rows": len(train.rows),
        "train_counts": counts,
        "heldout_questions": len(held_q),
        "split_layer": split,
        "zero_shot": zero_shot,
        "distilled_uncalibrated": uncalibrated,
        "calibration": calibration,
        "distilled": distilled,
        "passes": evaluation.passes(distilled),
        "onpolicy_heldout": onpolicy_heldout,
    }
    results["scorer_check"] = scorer_check(model, state, jcfg, held, rewards)
    _save_judge(workdir, model, state, jcfg, bool(cfg.train.export_hf))
    # Its figures travel with the judge, so that whoever scores with it can print them.
    quality = {"heldout": distilled, "onpolicy_heldout": onpolicy_heldout}
    (workdir / "judge" / FIGURES_FILE).write_text(json.dumps(quality, indent=2, default=float))
    results["cpu"] = {**meter.read(), **phases}
    cols = {"zero-shot": zero_shot, "distilled, yes_bias 0": uncalibrated}
    cols[f"distilled, yes_bias {bias:+.2f}"] = distilled
    Console(stderr=True).print(evaluation.table(cols, f"judge {cfg.name}: held-out questions"))
    md = evaluation.markdown(cols)
    if onpolicy_heldout is not None:
        from rlvr_jax.judge import onpolicy

        table = onpolicy.markdown(onpolicy_heldout)
        print(f"rlvr_jax: held-out on-policy answers\n{table}", file=sys.stderr)
        md += f"\nHeld-out on-policy answers ({len(onp.rows)}):\n\n{table}"
    (workdir / "heldout_table.md").write_text(md)
    atomic.write_json(workdir / "results.json", results)
    print(
        f"rlvr_jax: judge in {workdir / 'judge'} ({results['cpu']['wall_s']:.0f} s)",
        file=sys.stderr,
    )
    return results


def scorer_check(model, state, jcfg, held: Prepared, rewards: dict, n: int = 8) -> dict:
    """Score a few held-out rows with scoring.Judge (a plain full forward, as RL will) and compare
    with the cached split path: the two must agree, else training optimised the wrong quantity."""

    idx = [i for i in range(len(held.rows)) if not held.empty[i]][:: max(len(held.rows) // n, 1)][
        :n
    ]
    rows = [held.rows[i] for i in idx]
    judge = scoring.Judge(model.graphdef, state, model.tokenizer, jcfg)
    got = judge.score(
        [r["question"] for r in rows], [r["response"] for r in rows], [r["reference"] for r in rows]
    )
    diff = float(np.max(np.abs(got.p_yes - rewards["p_yes"][idx])))
    same = bool(np.all(got.binary == rewards["binary"][idx]))
    if diff > 1e-3 or not same:
        print(
            f"rlvr_jax: WARNING: scoring.Judge and the cached path disagree (max |dP(YES)| "
            f"{diff:.2e}, same verdicts: {same})",
            file=sys.stderr,
        )
    return {"rows": len(idx), "max_abs_diff_p_yes": diff, "same_binary": same}


def _save_judge(workdir: Path, model, state, jcfg, export_hf: bool) -> None:
    """The judge as a model directory and (optionally) a Hugging Face export, replacing any
    partial earlier attempt; both carry the prompt settings it was trained on (prompts.JUDGE_FILE),
    which scorers use by default."""
    from rlvr_jax.models import hf_io

    state = jax.device_get(state)
    extra = {judge_prompts.JUDGE_FILE: json.dumps(jcfg.prompt_settings(), indent=2) + "\n"}
    for name in ("judge", "judge_hf"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    save_model(workdir / "judge", model.cfg, state, model.tokenizer, extra)
    if export_hf:
        hf_io.save_hf(workdir / "judge_hf", model.cfg, state, model.tokenizer, extra_files=extra)

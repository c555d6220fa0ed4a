"""One distillation run: teachers -> judge rows (rows.py) -> cached bottom (prepared.py) -> SFT
of the top (`train_top`) -> calibration on validation rows -> evaluation and export.

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
from rlvr_jax.judge.distill.prepared import Prepared, Start, fill_cache, load_start, prepare
from rlvr_jax.judge.distill.rows import eval_rows, load_questions, onpolicy_answers, teacher_rows
from rlvr_jax.metrics import MetricsWriter
from rlvr_jax.models.model_dir import save_model

# In the judge's directory: its held-out and on-policy figures from the distillation itself.
FIGURES_FILE = "heldout_figures.json"


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


@dataclasses.dataclass
class Splits:
    """The prepared judge rows of each split (val and onp None when there are none), the label
    counts of the training rows and the question count of each split."""

    train: Prepared
    held: Prepared
    val: Prepared | None
    onp: Prepared | None
    counts: dict
    questions: dict[str, int]


def prepare_splits(cfg: Any, start: Start, workdir: Path) -> Splits:
    """Every split's judge rows, prompts and split-layer states (read back from the activation
    cache of an earlier attempt when it has them). The on-policy rows are held-out answers to this
    run's own questions: how the judge will score RL's answers."""
    tok, jcfg = start.model.tokenizer, start.jcfg
    train_q, val_q, held_q = load_questions(cfg)
    train = prepare(teacher_rows(cfg, train_q, val_q + held_q), tok, jcfg, cfg, drop_empty=True)
    held = prepare(eval_rows(cfg, held_q), tok, jcfg, cfg, drop_empty=False)
    val = prepare(eval_rows(cfg, val_q), tok, jcfg, cfg, drop_empty=False) if val_q else None
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
    for name, p in (("train", train), ("heldout", held), ("val", val), ("onpolicy", onp)):
        if p is not None:
            fill_cache(p, name, start.model, start.split, workdir, start.model_id)
    questions = {"train": len(train_q), "val": len(val_q), "heldout": len(held_q)}
    return Splits(train, held, val, onp, counts, questions)


def class_weights(rows: list[dict], balance: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n] int32, 1 for YES; weights [n] fp32): with `balance`, YES and NO rows weigh half
    the loss each, whatever their counts; else every row weighs 1."""
    labels = np.array([r["label"] == "YES" for r in rows], np.int32)
    n_yes = max(int(labels.sum()), 1)
    n_no = max(len(labels) - n_yes, 1)
    w = np.where(labels == 1, len(labels) / (2 * n_yes), len(labels) / (2 * n_no))
    if not balance:
        w = np.ones_like(w)
    return labels, w.astype(np.float32)


def train_top(
    cfg: Any,
    start: Start,
    data: Splits,
    writer: MetricsWriter,
    workdir: Path,
    stop_after: int | None = None,
) -> tuple[nnx.State | None, int]:
    """SFT of the judge's top blocks over distill.epochs epochs of the training rows, resumed from
    the last checkpoint in `workdir`: (the judge's whole state, steps of the plan), or (None, step
    reached) when `stop_after` steps of this call ended it first. With distill.eval_each_epoch
    the held-out figures are written after every epoch but the last."""
    from tqdm import tqdm

    model, split, train = start.model, start.split, data.train
    trainable, frozen = update.split_trainable(
        model.state, update.trainable_filter(model.cfg.num_layers, start.train_layers)
    )
    labels, w = class_weights(train.rows, bool(cfg.distill.class_balance))
    epochs = [
        units.epoch_batches(train.buckets, int(cfg.distill.batch_tokens), int(cfg.seed), e)
        for e in range(int(cfg.distill.epochs))
    ]
    plan = [bt for ep in epochs for bt in ep]
    epoch_ends = set(np.cumsum([len(ep) for ep in epochs]).tolist())
    optimizer = update.make_optimizer(cfg.optim, len(plan))
    decay = float(cfg.distill.ema_decay)
    step_fn = sft.make_train_step(
        model.graphdef, split, optimizer, decay, float(cfg.distill.pair_weight)
    )
    # Committed to the device like the step's outputs, so the donated state keeps one compile.
    st = sft.init_state(jax.tree.map(jnp.copy, trainable), optimizer, decay)
    st = jax.device_put(st, jax.devices()[0])
    ckpts = checkpoint.StepCheckpoints(workdir, int(cfg.train.keep_ckpts))
    first = ckpts.latest() or 0
    if first:
        st = _restore_ckpt(ckpts, st, first)
        writer.truncate_after(first)
        print(f"rlvr_jax: resumed {workdir} from step {first}", file=sys.stderr)
    bar = tqdm(range(first, len(plan)), initial=first, total=len(plan), desc="SFT", unit="step")
    for i in bar:
        bt = plan[i]
        b = train.buckets[bt.bucket]
        h = act_cache.hidden_batch(b, train.cache[bt.bucket], bt)
        rows = b.rows[bt.suffixes]
        weights = jnp.asarray(w[rows] * bt.valid)
        st, met = step_fn(st, frozen, h, jnp.asarray(labels[rows]), weights, start.yes, start.no)
        met = {f"train/{k}": v for k, v in jax.device_get(met).items()}
        met["train/epoch"] = sum(e <= i for e in epoch_ends)
        writer.write(i + 1, met)
        bar.set_postfix(loss=f"{met['train/loss']:.3f}", acc=f"{met['train/acc']:.2f}")
        if cfg.distill.eval_each_epoch and i + 1 in epoch_ends and i + 1 < len(plan):
            fig, _ = start.figures(nnx.merge_state(frozen, st.judge_params), data.held)
            writer.write(i + 1, _scalars(fig, "heldout/"))
            bar.write(
                f"rlvr_jax: after epoch {len([e for e in epoch_ends if e <= i + 1])}: " + _line(fig)
            )
        if (i + 1) % int(cfg.train.ckpt_every) == 0 or i + 1 == len(plan):
            ckpts.save(i + 1, {"leaves": jax.tree.leaves(st)})
        if stop_after is not None and i + 1 - first >= stop_after and i + 1 < len(plan):
            return None, i + 1
    bar.close()
    return nnx.merge_state(frozen, st.judge_params), len(plan)


def calibrate(cfg: Any, start: Start, state: nnx.State, data: Splits) -> dict:
    """The YES offset (`evaluation.choose_yes_bias`) chosen on the validation rows, with their
    figures before and after it; {"yes_bias": 0.0} without validation rows or distill.calibrate."""
    if data.val is None or not cfg.distill.calibrate:
        return {"yes_bias": 0.0}
    val, n_val = data.val, data.questions["val"]
    val_before, v = start.figures(state, val)
    calibration = evaluation.choose_yes_bias(val.rows, v["p_yes"], v["p_no"], val.empty)
    calibration["val_questions"] = n_val
    calibration["val_uncalibrated"] = val_before
    calibration["val_calibrated"], _ = start.figures(state, val, calibration["yes_bias"])
    print(
        f"rlvr_jax: calibration on {n_val} validation questions: yes_bias "
        f"{calibration['yes_bias']:+.2f}; validation before "
        + _line(calibration["val_uncalibrated"])
        + "; after "
        + _line(calibration["val_calibrated"]),
        file=sys.stderr,
    )
    return calibration


def write_tables(cfg: Any, workdir: Path, cols: dict[str, dict], onp: dict | None, n_onp: int):
    """The held-out figures of each judge in `cols` (zero-shot, distilled...) to the console and
    heldout_table.md, with the on-policy table `onp` of `n_onp` answers when there is one."""
    from rich.console import Console

    Console(stderr=True).print(evaluation.table(cols, f"judge {cfg.name}: held-out questions"))
    md = evaluation.markdown(cols)
    if onp is not None:
        from rlvr_jax.judge import onpolicy

        table = onpolicy.markdown(onp)
        print(f"rlvr_jax: held-out on-policy answers\n{table}", file=sys.stderr)
        md += f"\nHeld-out on-policy answers ({n_onp}):\n\n{table}"
    (workdir / "heldout_table.md").write_text(md)


def distill(cfg: Any, workdir: str | Path | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume) the distillation of `cfg` in `workdir`; returns results.json's content.

    stop_after: return after this many SFT steps of this call (tests use it to emulate a kill).
    """
    meter, phases = CpuMeter(), {}
    workdir = resolve_workdir(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    if (workdir / "results.json").is_file() and (workdir / "judge").is_dir():
        print(f"rlvr_jax: {workdir} holds a finished distillation", file=sys.stderr)
        return json.loads((workdir / "results.json").read_text())
    if cfg.judge.model == "distilled":
        raise ValueError("config judge.model: the starting model cannot be the distilled judge")
    start = load_start(cfg)
    data = prepare_splits(cfg, start, workdir)
    zero_shot, _ = start.figures(start.model.state, data.held)
    print("rlvr_jax: zero-shot " + _line(zero_shot), file=sys.stderr)
    phases["prepare_and_cache_s"] = meter.read()["wall_s"]

    writer = MetricsWriter(workdir, tensorboard=bool(cfg.train.tensorboard))
    state, steps = train_top(cfg, start, data, writer, workdir, stop_after)
    if state is None:
        writer.close()
        return {"stopped_at": steps}
    phases["sft_s"] = meter.read()["wall_s"] - phases["prepare_and_cache_s"]

    calibration = calibrate(cfg, start, state, data)
    bias = float(calibration["yes_bias"])
    jcfg = dataclasses.replace(start.jcfg, yes_bias=bias)
    uncalibrated, rewards = start.figures(state, data.held)
    distilled = uncalibrated
    if bias != 0.0:  # the offset changes the verdicts: a pass of its own
        distilled, rewards = start.figures(state, data.held, bias)
    writer.write(steps, _scalars(distilled, "heldout/"))
    onpolicy_heldout = start.onpolicy_figures(state, data.onp, bias)
    writer.close()
    results = {
        "steps": steps,
        "train_rows": len(data.train.rows),
        "train_counts": data.counts,
        "heldout_questions": data.questions["heldout"],
        "split_layer": start.split,
        "zero_shot": zero_shot,
        "distilled_uncalibrated": uncalibrated,
        "calibration": calibration,
        "distilled": distilled,
        "passes": evaluation.passes(distilled),
        "onpolicy_heldout": onpolicy_heldout,
    }
    results["scorer_check"] = scorer_check(start.model, state, jcfg, data.held, rewards)
    _save_judge(workdir, start.model, state, jcfg, bool(cfg.train.export_hf))
    # Its figures travel with the judge, so that whoever scores with it can print them.
    quality = {"heldout": distilled, "onpolicy_heldout": onpolicy_heldout}
    (workdir / "judge" / FIGURES_FILE).write_text(json.dumps(quality, indent=2, default=float))
    results["cpu"] = {**meter.read(), **phases}
    cols = {"zero-shot": zero_shot, "distilled, yes_bias 0": uncalibrated}
    cols[f"distilled, yes_bias {bias:+.2f}"] = distilled
    write_tables(cfg, workdir, cols, onpolicy_heldout, len(data.onp.rows) if data.onp else 0)
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

"""One whole RL step: rlvr_jax vs TRL's `GRPOTrainer` (torch CPU), SmolLM2-135M-Instruct fp32.

    python bench/rl_step.py --reward rule|judge [--judge DIR] [--runs 3] [--steps 2]
        [--prompts 4] [--samples 4] [--max-new-tokens 96] [--skip-trl] [--no-share-prompts]

Both sides run in this one process on the same weights (the default model; TRL loads rlvr_jax's
HF export of the same arrays), the same prompts (rlvr_jax's first economics training batches,
chat-rendered as configs/econ.py renders them; step i of either side uses batch i mod --warmup)
and the same B prompts x G samples, max new tokens, temperature 1, learning rate and KL beta.
A step is sampling, rewards, the reference pass and one optimizer update over all B x G rows.
rlvr_jax runs `rlvr_jax.train.build` / `rl_step` on configs/econ.py with the overrides below;
TRL runs `GRPOTrainer.train` (bench/trl_grpo.py).

Rewards. `--reward rule`: rlvr_jax's substring rule (`rule_binary`), on TRL as a reward function
calling the same Python function. `--reward judge`: the judge's soft reward (paper Eq. 4 from
P(YES) / P(NO) of its first token), rlvr_jax's jitted judge on one side, on TRL a reward function
running the judge as an `AutoModelForCausalLM` on rlvr_jax's judge prompt text (trl_grpo.py).
`--judge DIR` is any rlvr_jax model directory (default: the distilled default judge, which is
never distilled here).

Aligned (TRL names from trl/trainer/grpo_config.py `GRPOConfig` and grpo_trainer.py):
- advantages: rlvr_jax `rl.algo=grpo` = TRL `scale_rewards="group"` ((r - mean) / std per prompt,
  `_generate_and_score_completions`); loss aggregation: rlvr_jax's seq_mean = TRL
  `loss_type="grpo"` (`_compute_loss`); clipping `epsilon` = `rl.clip_eps` = 0.2;
- KL: TRL adds beta x k3 to the per-token loss against a reference model; rlvr_jax
  `rl.kl_mode=loss` does the same, with `rl.beta` = `beta`;
- one optimizer step per rollout: rlvr_jax `rl.train_batch=0`, `rl.ppo_epochs=1`, micro-batches of
  `optim.micro_batch`; TRL `per_device_train_batch_size` = that micro-batch,
  `gradient_accumulation_steps` = B x G / micro-batch, so `steps_per_generation` and
  `generation_batch_size` default to one generation of B x G per optimizer step (`GRPOConfig.
  __post_init__`), `num_iterations=1`; old log-probs are then not recomputed by TRL
  (`_generate_and_score_completions`) and rlvr_jax uses the sampler's;
- optimizer: AdamW b1 0.9, b2 0.95 (`adam_beta2`), no weight decay, global-norm clip 1.0
  (`max_grad_norm`), constant learning rate (rlvr_jax `optim.warmup_frac=0`, `min_lr_ratio=1`;
  TRL `lr_scheduler_type="constant"`);
- sampling: `max_completion_length` = `rollout.max_new_tokens`, temperature, top_p 1, top_k 0;
- fp32 on both (TRL `bf16=False`, its default is True), `gradient_checkpointing=False` (TRL's
  default is True; rlvr_jax's update does not rematerialise blocks), torch threads = `--threads`.
Not aligned: TRL divides by std + 1e-4 where rlvr_jax gives a zero-std group advantage 0; TRL
samples with transformers `generate` (a growing cache, stop per row), rlvr_jax with its jitted
sampler; rlvr_jax's update and reference pass run each prompt once for its G samples
(`optim.share_prompts`, off with --no-share-prompts), TRL runs it in every row, and rlvr_jax's
judge runs a question's shared prompt part once for its G answers (`scoring.Judge`); rlvr_jax
also computes the Jaccard rule and decodes every response each step; its per-step master-key
probe guard (`train.guards.probes`) is off here, as TRL has none.

Timing: each side's first `--warmup` steps are untimed (rlvr_jax also compiles the judge for the
warm-up batches' questions at every answer-length bucket first: a long run has met them all).
Then runs of `--steps` steps alternate sides (TRL's steps all run inside one `train()` call; a
callback runs rlvr_jax's run after each TRL run), so both see the same background load. Per
run: the CPU share other processes used (/proc/stat); medians prefer uncontended runs
(`contention.robust_median`). Phases, seconds per
step: rlvr_jax from `rl_step`'s metrics (time/rollout_s, time/judge_s = rules + judge,
time/reference_s, time/update_s); TRL from timers wrapped around its methods (trl_grpo.py:
generation, reward, reference; update = the optimizer step's remaining time: forward/backward
of the micro-batches, clipping, AdamW), the step from `on_step_begin` to `on_step_end`.
Last line: `speedup_vs_trl: X.XX` (median TRL step seconds / median rlvr_jax step seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

# A sibling module: the script's own folder is on sys.path when run as `python bench/rl_step.py`.
from contention import CONTENDED, CpuMeter, robust_median, wait_for_quiet

PHASES = ("rollout", "reward", "reference", "update", "other")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reward", choices=("rule", "judge"), required=True)
    p.add_argument("--judge", default="", help="judge model directory (default: distilled)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side")
    p.add_argument("--steps", type=int, default=2, help="RL steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side (>= 1)")
    p.add_argument("--prompts", type=int, default=4, help="B, prompts per step")
    p.add_argument("--samples", type=int, default=4, help="G, samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-6)
    p.add_argument("--beta", type=float, default=0.01, help="KL coefficient, both sides")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="s to wait for a quiet CPU")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument(
        "--no-share-prompts",
        action="store_true",
        help="rlvr_jax runs every row's prompt in the update and reference (optim.share_prompts)",
    )
    a = p.parse_args(argv)
    if a.warmup < 1 or a.runs < 1 or a.steps < 1 or a.samples < 2:
        p.error("--warmup, --runs, --steps must be >= 1 and --samples >= 2")
    return a


def judge_dir(args: argparse.Namespace) -> Path | None:
    """The judge directory for --reward judge: --judge, else the distilled default judge, which
    must already exist (this benchmark never starts a distillation)."""
    if args.reward != "judge":
        return None
    if args.judge:
        return Path(args.judge)
    from rlvr_jax.judge import distill

    path = distill.named_judge_dir("distilled")
    if not (path / "config.json").is_file():
        raise SystemExit(f"error: no distilled default judge in {path} yet; pass --judge DIR")
    return path


def jax_config(args: argparse.Namespace, judge: Path | None):
    """configs/econ.py with the shapes of the command line and TRL's algorithm (module doc)."""
    from rlvr_jax.shipped import load_config

    c = load_config("configs/econ.py")
    c.rollout.prompts_per_step, c.rollout.samples_per_prompt = args.prompts, args.samples
    c.rollout.max_new_tokens, c.rollout.temperature = args.max_new_tokens, 1.0
    c.rollout.top_p, c.rollout.top_k = 1.0, 0
    c.rl.algo, c.rl.kl_mode, c.rl.beta, c.rl.loss_agg = "grpo", "loss", args.beta, "auto"
    c.rl.train_batch, c.rl.ppo_epochs = 0, 1
    c.optim.lr, c.optim.warmup_frac, c.optim.min_lr_ratio = args.lr, 0.0, 1.0
    c.optim.share_prompts = not args.no_share_prompts
    c.judge.eval_model = ""  # the held-out evaluation never runs here: build no second judge
    c.train.guards.probes = ()
    c.train.eval_prompts = 1
    if judge is None:
        c.judge.model, c.judge.reward = "", "rule_binary"
    else:
        c.judge.model, c.judge.reward = str(judge), "soft"
    return c


def warm_judge(judge, batches, g: int) -> None:
    """Compile the judge's programs for the shapes the timed steps can meet: every batch's
    questions (the timed steps cycle through the same batches), each with g answers, at answer
    lengths that reach every bucket up to the longest a rollout can write."""
    for batch in batches:
        rows = [ex for ex in batch for _ in range(g)]
        for words in (2, 12, 28, 44, 60, 90, 120):
            # Distinct answers (a group's prefix ends where they differ) of about `words` tokens.
            answers = [f"Therefore, the answer is {k} " + "x " * words for k in range(len(rows))]
            judge.score([ex.question for ex in rows], answers, [ex.reference for ex in rows],
                        cut=[False] * len(rows))  # fmt: skip


class JaxSide:
    """rlvr_jax's run (train.build) stepped by train.rl_step over a fixed cycle of batches."""

    def __init__(self, cfg, workdir: Path, n_batches: int):
        import itertools

        from rlvr_jax import train

        self.train = train
        self.run, self.state = train.build(cfg, workdir)
        self.batches = [next(self.run.train_it) for _ in range(n_batches)]
        self.run.train_it = itertools.cycle(self.batches)
        self.step = 0

    def steps(self, k: int) -> list[dict[str, float]]:
        """k RL steps -> per step {step, rollout, reward, reference, update, other} seconds."""
        import jax

        out = []
        with jax.set_mesh(self.run.mesh):
            for _ in range(k):
                t0 = time.perf_counter()
                self.state, m = self.train.rl_step(self.run, self.state, self.step)
                wall = time.perf_counter() - t0
                self.step += 1
                ph = {
                    "rollout": m["time/rollout_s"],
                    "reward": m["time/judge_s"] + m["time/likelihood_s"],
                    "reference": m["time/reference_s"],
                    "update": m["time/update_s"],
                }
                out.append({"step": wall, **ph, "other": wall - sum(ph.values()),
                            "reward_mean": m["reward/raw_mean"]})  # fmt: skip
        return out


def trl_phases(wall: float, t: dict[str, float]) -> dict[str, float]:
    """TRL's timers for one optimizer step -> the same phase names as rlvr_jax's."""
    gen, rew, ref = t.get("generation", 0.0), t.get("reward", 0.0), t.get("reference", 0.0)
    scoring = t.get("scoring", 0.0)
    return {"step": wall, "rollout": gen, "reward": rew, "reference": ref,
            "update": wall - scoring, "other": scoring - gen - rew - ref}  # fmt: skip


class Runs:
    """Timed runs of one side: per run the mean phase seconds per step and other processes' CPU
    share."""

    def __init__(self, name: str):
        self.name, self.walls, self.shares, self.phases = name, [], [], []

    def add(self, steps: list[dict[str, float]], share: float, note: str = "") -> None:
        mean = {k: statistics.mean(s[k] for s in steps) for k in ("step", *PHASES)}
        self.walls.append(mean["step"])
        self.shares.append(share)
        self.phases.append(mean)
        flag = " CONTENDED" if share > CONTENDED else ""
        parts = ", ".join(f"{k} {mean[k]:.2f}" for k in PHASES)
        print(f"  {self.name:8s} run {len(self.walls) - 1}: {mean['step']:7.2f} s/step ({parts}); "
              f"others used {share:.0%} of the CPU{flag}{note}", flush=True)  # fmt: skip

    def summary(self) -> float:
        med, n = robust_median(self.walls, self.shares)
        parts = ", ".join(f"{k} {statistics.median(p[k] for p in self.phases):.2f}" for k in PHASES)
        print(f"{self.name}: {med:.2f} s/step (median of {n} runs); phase medians, s/step: {parts}")
        return med


def timed_jax_run(side: JaxSide, runs: Runs, steps: int, quiet_wait: float) -> None:
    from rlvr_jax.metrics import CompileMeter

    wait_for_quiet(quiet_wait)
    compiles = CompileMeter()
    with CpuMeter() as m:
        out = side.steps(steps)
    c = compiles.take()["time/compile_s"]
    compiles.close()
    runs.add(out, m.other_share, f"; COMPILED {c:.1f} s" if c else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from rlvr_jax import host_memory

    host_memory.keep_freed_memory()  # as the train command does, before the first JAX computation
    jdir = judge_dir(args)
    # Holds the run directory and the HF exports TRL loads (about 0.5 GB per model).
    with tempfile.TemporaryDirectory(prefix="rl_step_bench-") as tmp:
        bench(args, jdir, Path(tmp))


def bench(args: argparse.Namespace, jdir: Path | None, tmp: Path) -> None:
    import jax

    cfg = jax_config(args, jdir)
    (tmp / "jax").mkdir()
    side = JaxSide(cfg, tmp / "jax", args.warmup)
    n = args.prompts * args.samples
    print(f"B {args.prompts} x G {args.samples} = {n} rows, {args.max_new_tokens} new tokens, "
          f"lr {args.lr}, beta {args.beta}, reward {args.reward}"
          f"{f' (judge {jdir})' if jdir else ''}; jax {jax.__version__}", flush=True)  # fmt: skip
    if side.run.rewards.judge is not None:
        t0 = time.perf_counter()
        warm_judge(side.run.rewards.judge, side.batches, args.samples)
        secs = time.perf_counter() - t0
        print(f"rlvr_jax: judge compiled for the batches at every length bucket in {secs:.0f} s")
    t0 = time.perf_counter()
    first = side.steps(args.warmup)
    mean_reward = statistics.mean(s["reward_mean"] for s in first)
    print(f"rlvr_jax: {args.warmup} warm-up steps (compiling) {time.perf_counter() - t0:.0f} s; "
          f"mean reward {mean_reward:.3f}", flush=True)  # fmt: skip
    jruns = Runs("rlvr_jax")
    if args.skip_trl:
        for _ in range(args.runs):
            timed_jax_run(side, jruns, args.steps, args.quiet_wait)
        jruns.summary()
        return
    truns = run_trl(args, side, tmp, jdir, jruns)
    t_jax, t_trl = jruns.summary(), truns.summary()
    print(f"speedup_vs_trl: {t_trl / t_jax:.2f}")


def run_trl(args, side: JaxSide, tmp: Path, jdir: Path | None, jruns: Runs) -> Runs:
    """Build TRL's trainer on HF exports of rlvr_jax's weights and run it; its callback runs an
    rlvr_jax run after each timed TRL run."""
    import torch
    import trl
    import trl_grpo
    from transformers import TrainerCallback

    from rlvr_jax.models import hf_io
    from rlvr_jax.models.model_dir import load_config

    torch.set_num_threads(args.threads)
    run, cfg = side.run, side.run.cfg
    policy_hf = tmp / "policy_hf"
    # ref_params: the initial policy's own copy (the train state's arrays are donated by updates).
    hf_io.save_hf(policy_hf, run.policy.cfg, run.ref_params, run.policy.tokenizer)
    tok = run.policy.tokenizer
    if jdir is None:
        reward_fn = trl_grpo.rule_reward
    else:
        j = run.rewards.judge
        judge_hf = tmp / "judge_hf"
        hf_io.save_hf(judge_hf, load_config(jdir), j.state, j.tok)
        reward_fn = trl_grpo.TorchJudge(str(judge_hf), j.cfg, tok.stop_ids)
        check_judge_prompts(j, reward_fn, side.batches[0])
    rows = [{"prompt": [dict(m) for m in ex.messages], "question": ex.question,
             "reference": ex.reference} for batch in side.batches for ex in batch]  # fmt: skip
    settings = dict(B=args.prompts, G=args.samples, L=args.max_new_tokens, temperature=1.0,
                    lr=args.lr, beta=args.beta, clip_eps=float(cfg.rl.clip_eps),
                    micro_batch=int(cfg.optim.micro_batch), b1=float(cfg.optim.b1),
                    b2=float(cfg.optim.b2), grad_clip=float(cfg.optim.grad_clip),
                    seed=int(cfg.seed))  # fmt: skip
    truns, w, s = Runs("trl"), args.warmup, args.steps
    holder: dict = {}

    class Alternate(TrainerCallback):
        """Times TRL's optimizer steps; after each timed TRL run, one rlvr_jax run."""

        def on_step_begin(self, a, state, control, **kw):
            g = state.global_step
            if g >= w and (g - w) % s == 0:
                wait_for_quiet(args.quiet_wait)
                self.meter, self.steps = CpuMeter(), []
            holder["timer"].take()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            wall = time.perf_counter() - self.t0
            ph = trl_phases(wall, holder["timer"].take())
            g = state.global_step
            if g == w:
                rewards = holder["trainer"]._metrics["train"]["reward"]
                print(f"trl: {w} warm-up steps; mean reward {statistics.mean(rewards):.3f}")
            if g <= w:
                return
            self.steps.append(ph)
            if (g - w) % s == 0:
                truns.add(self.steps, self.meter.read()["others_cpu_share"])
                timed_jax_run(side, jruns, s, args.quiet_wait)

    trainer, timer = trl_grpo.make_trainer(
        str(policy_hf), rows, reward_fn, settings, str(tmp / "trl"), w + args.runs * s,
        tok.stop_ids, [Alternate()],
    )  # fmt: skip
    holder.update(trainer=trainer, timer=timer)
    check_prompts(tok, trainer.processing_class, side.batches[0])
    stops = f"rlvr_jax {sorted(tok.stop_ids)}, trl {sorted(trainer.eos_token_ids)}"
    print(f"trl {trl.__version__}, torch {torch.__version__} ({args.threads} threads); "
          f"stop ids {stops}", flush=True)  # fmt: skip
    trainer.train()
    return truns


def check_prompts(tok, hf_tok, batch) -> None:
    """Print whether TRL's chat rendering gives rlvr_jax's prompt token ids."""
    same = sum(
        tok.chat_ids(ex.messages)
        == hf_tok.apply_chat_template([dict(m) for m in ex.messages], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        for ex in batch
    )  # fmt: skip
    print(f"policy prompts with identical token ids on both sides: {same}/{len(batch)}")


def check_judge_prompts(judge, torch_judge, batch) -> None:
    """Print whether the TRL reward function's judge prompts tokenize to rlvr_jax's."""
    from rlvr_jax.judge.prompts import build_judge_prompt

    same = 0
    for ex in batch:
        resp = f"Let me think.\nTherefore, the answer is {ex.reference}."
        ours = build_judge_prompt(judge.tok, ex.question, resp, ex.reference, judge.cfg, False).ids
        text = torch_judge.prompt_text(ex.question, resp, ex.reference, False)
        same += ours == torch_judge.tok(text, add_special_tokens=False)["input_ids"]
    print(f"judge prompts with identical token ids on both sides: {same}/{len(batch)}")


if __name__ == "__main__":
    main()

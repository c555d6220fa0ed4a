"""RL on the shipped economics questions, with the embedded SmolLM2-135M-Instruct as the policy.

Variants: `configs/econ.py` (a CPU-sized run) and `configs/econ.py:smoke` (a few minutes
on 2 cores).
"""

from configs import base


def get_config(arg: str | None = None):
    c = base.get_config()
    c.name = "econ"
    c.policy.model = "default"
    # SmolLM2-135M used zero-shot as a judge does not separate right from wrong answers; the judge
    # distilled from labelled economics rows (python -m rlvr_jax.distill) does, and is the default.
    c.judge.model = "distilled"
    c.judge.template = "auto"  # the distilled judge's own: the short prompt it was trained on
    # The judge's soft reward where the response names a content word of the reference: on the
    # policy's own labelled answers it ranks them better (held-out AUC 0.89 against 0.82) and pays
    # right answers a larger share; the plain reward taught Table 1's long runs short confident
    # answers that the judge pays whatever they say (README, "What the judge reads").
    c.judge.reward = "soft_gated"
    c.data.train = ("data/economics/train.jsonl",)
    c.data.test = ("data/economics/test.jsonl",)
    c.rollout.prompts_per_step = 4
    c.rollout.samples_per_prompt = 4
    c.rollout.max_prompt_len = 192
    c.rollout.max_new_tokens = 96
    c.rl.algo = "rloo"
    c.optim.lr = 2e-6
    c.optim.micro_batch = 8
    c.train.steps = 12
    c.train.ckpt_every = 4
    c.train.log_rollouts = True  # a few kB a step: what the judge rewarded, to read
    if arg == "smoke":
        c.name = "econ_smoke"
        c.rollout.prompts_per_step = 2
        c.rollout.samples_per_prompt = 2
        c.rollout.max_new_tokens = 32
        c.train.steps = 2
        c.train.ckpt_every = 1
        c.train.eval_prompts = 4
        c.judge.eval_model = ""  # the reward judge evaluates: no second judge to build
    elif arg:
        raise ValueError(f"configs/econ.py: unknown variant {arg!r} (known: smoke)")
    return c

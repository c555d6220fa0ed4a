"""A tiny random policy on the synthetic echo task with a rule reward: seconds per step on a CPU.

`configs/tiny.py:ALGO` picks the algorithm (reinforce, rloo, reinforce_pp, grpo, dr_grpo).
"""

from configs import base


def get_config(arg: str | None = None):
    c = base.get_config()
    c.name = "tiny"
    c.policy.model = "synthetic"
    c.judge.model = ""  # no judge model: the rule reward checks the reference word
    c.judge.eval_model = ""  # held-out answers are checked by the same rule
    c.judge.reward = "rule_binary"
    c.data.synthetic = "echo"
    c.data.train = ()
    c.data.test = ()
    c.data.system_prompt = ""
    c.rollout.prompts_per_step = 16
    c.rollout.samples_per_prompt = 8
    c.rollout.max_prompt_len = 8
    c.rollout.max_new_tokens = 3
    c.rl.algo = arg or "rloo"
    c.rl.beta = 0.0
    c.optim.lr = 5e-3
    c.optim.warmup_frac = 0.0
    c.optim.min_lr_ratio = 1.0
    c.optim.micro_batch = 128
    c.train.steps = 120
    c.train.ckpt_every = 40
    c.train.eval_prompts = 16
    c.train.export_hf = False
    return c

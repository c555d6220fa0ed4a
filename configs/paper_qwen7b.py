"""The paper's Table 9 run: Qwen2.5-7B base as the policy, the released 7B RLVR judge, RLOO.

For accelerator users who converted the checkpoints first:
  python tools/convert_checkpoint.py hf-to-jax Qwen2.5-7B models/qwen2.5-7b --dtype bfloat16
  python tools/convert_checkpoint.py hf-to-jax Qwen2.5-7B-Instruct-RLVR models/judge-7b \
      --dtype bfloat16
and the released Multi-subject-RLVR files saved locally (JSONL/Parquet/save_to_disk).
"""

from configs import base


def get_config(arg: str | None = None):
    c = base.get_config()
    c.name = "paper_qwen7b"
    c.policy.model = "models/qwen2.5-7b"
    c.policy.dtype = "bfloat16"
    c.judge.model = "models/judge-7b"
    c.judge.template = "paper"
    c.judge.reward = "soft"
    c.judge.max_prompt_len = 2048
    c.judge.batch_size = 128
    c.data.train = ("data/multi_subject_rlvr/train.parquet",)
    c.data.test = ("data/multi_subject_rlvr/test.parquet",)
    c.data.bad_rows = "skip"
    c.rollout.prompts_per_step = 128  # rollout batch: 128 prompts x 4 samples
    c.rollout.samples_per_prompt = 4
    c.rollout.max_prompt_len = 1024
    c.rollout.max_new_tokens = 1024
    c.rollout.temperature = 1.0
    c.rl.algo = arg or "rloo"
    c.rl.beta = 0.01
    c.rl.clip_eps = 0.2
    c.rl.train_batch = 128  # OpenRLHF's schedule: 512 samples, 4 shuffled optimizer steps
    c.rl.ppo_epochs = 1
    c.optim.lr = 5e-7
    c.optim.warmup_frac = 0.03
    c.optim.min_lr_ratio = 0.1
    c.optim.micro_batch = 8
    c.mesh.shape = (1, -1, 1)
    c.train.steps = 30000 // 128  # 30k prompts, one epoch
    c.train.ckpt_every = 20
    c.train.eval_every = 50
    c.train.eval_prompts = 512
    return c

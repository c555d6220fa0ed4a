"""Defaults shared by every config. Other configs call `base.get_config()` and override fields.

Every field is documented here once; `--config.SECTION.FIELD=VALUE` overrides any of them.
"""

import ml_collections

from rlvr_jax.data import DEFAULT_SYSTEM_PROMPT as PAPER_SYSTEM_PROMPT  # the paper's


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.workdir = ""  # empty: runs/<name>

    # Policy: a model directory, "default" (the embedded SmolLM2-135M-Instruct) or "synthetic"
    # (a tiny random model over the synthetic word tokenizer, sized by policy.tiny).
    c.policy = ml_collections.ConfigDict()
    c.policy.model = "default"
    c.policy.dtype = "float32"
    c.policy.tiny = ml_collections.ConfigDict(
        dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
    )
    # Multiplies the tiny model's random (tied) embedding: at the init scale its head cannot make
    # a sharp distribution unless the embedding itself trains, which LoRA runs do not do.
    c.policy.tiny.embed_scale = 1.0

    # Reward. judge.reward picks the scalar fed to RL: soft (paper Eq. 4), soft_normalized,
    # binary (the judge's verdict), rule_binary, rule_jaccard, math (math-verify equivalence).
    c.judge = ml_collections.ConfigDict()
    c.judge.model = (
        "default"  # model directory, "default", "distilled" or "policy" (initial policy)
    )
    c.judge.reward = "soft"
    # "auto": the prompt settings stored with the judge (judge.json, written by rlvr_jax.distill),
    # else "paper" (the released judge's prompt); "short": for small judges; or a format string.
    c.judge.template = "auto"
    c.judge.max_prompt_len = 512
    c.judge.batch_size = 16

    c.data = ml_collections.ConfigDict()
    c.data.train = ("data/economics/train.jsonl",)
    c.data.test = ("data/economics/test.jsonl",)
    c.data.synthetic = ""  # "echo": the synthetic task of rlvr_jax.synthetic instead of files
    c.data.system_prompt = PAPER_SYSTEM_PROMPT
    c.data.chat_template = True
    # A chat template variable: Qwen3's renders an empty think block when False; others ignore it.
    c.data.enable_thinking = True
    c.data.bad_rows = "error"  # "error": stop before training; "skip": drop and count

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 4  # B
    c.rollout.samples_per_prompt = 4  # G
    c.rollout.max_prompt_len = 256
    c.rollout.max_new_tokens = 128
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0

    c.rl = ml_collections.ConfigDict()
    c.rl.algo = "rloo"  # reinforce | rloo | reinforce_pp | grpo | dr_grpo
    c.rl.beta = 0.01
    c.rl.kl_mode = "reward"  # "reward": per-token k1 added to the reward; "loss": k3 loss term
    c.rl.clip_eps = 0.2
    c.rl.ppo_epochs = 1  # updates per rollout
    c.rl.loss_agg = "token_mean"  # token_mean | seq_mean
    c.rl.norm = "group"  # reward z-score over a prompt's samples ("group") or the batch

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-6
    c.optim.warmup_frac = 0.03
    c.optim.min_lr_ratio = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.optim.micro_batch = 8
    c.optim.train_layers = -1  # -1: all; k: only the top k blocks (+ final norm / head)

    # LoRA policy: train low-rank adapters on these products, every weight frozen (rank 0: off).
    # The reference policy is then the base weights with the adapters off (no copy of them).
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0  # the adapter's term is scaled by alpha / rank
    c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
    # Also train the RMSNorm scales (a few numbers per layer): a random tiny model's frozen head
    # cannot sharpen its distribution without them; pretrained models do not need it.
    c.lora.train_norms = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.mesh.distributed = False  # call jax.distributed.initialize (multi-host)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 20
    c.train.ckpt_every = 5
    c.train.keep_ckpts = 2
    c.train.eval_every = 0  # 0: only at the end
    c.train.eval_prompts = 16
    c.train.max_nonfinite = 5  # stop after this many non-finite updates in a row
    c.train.export_hf = True
    c.train.tensorboard = True
    return c

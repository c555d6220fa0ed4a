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
    # binary (the judge's verdict), soft_gated (soft where the response names a content word of
    # the reference, else 0: rlvr_jax/judge/rules.py shares_content_word), rule_binary,
    # rule_jaccard, math (math-verify equivalence),
    # likelihood (mean log-prob of the reference after the response's reasoning) or rlpr (RLPR's
    # debiased mean probability); see rlvr_jax/judge/likelihood.py. The last two need no judge: with
    # them judge.model is ignored (never resolved, so "distilled" distils nothing).
    c.judge = ml_collections.ConfigDict()
    c.judge.model = (
        "default"  # model directory, "default", "distilled" or "policy" (initial policy)
    )
    c.judge.reward = "soft"
    # "auto": the prompt settings stored with the judge (judge.json, written by rlvr_jax.distill),
    # else "paper" (the released judge's prompt); "short": for small judges; or a format string.
    c.judge.template = "auto"
    # What of a response the judge reads: "committed" (its answer statements, else its first and
    # last complete sentences; nothing committed scores 0: rlvr_jax/judge/answers.py),
    # "last_line", or "auto" (the setting stored with the judge, else "committed").
    c.judge.view = "auto"
    # The held-out evaluation's judge, independent of the reward's: "evaluation" (distilled with
    # another seed and recipe, built on first use), "" (the reward judge) or a model directory.
    c.judge.eval_model = "evaluation"
    c.judge.max_prompt_len = 512
    c.judge.batch_size = 16  # rows per jitted judge (or likelihood) call
    # Which weights score likelihood/rlpr: "policy" (the current one, as RLPR and VeriFree do:
    # the reward follows what the policy learns) or "reference" (the frozen initial policy).
    c.judge.likelihood_model = "policy"
    # RLPR's prompt filter: drop (mask out of the update) every prompt whose G rewards have a
    # standard deviation below this; 0 = off. RLPR adapts it (0.5 x an EMA of the mean std).
    c.judge.rlpr_filter = 0.0

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

    # Algorithms and the convention each follows (README "Algorithms"):
    #   reinforce    the batch z-scored reward (paper Eq. 5) as the advantage
    #   rloo         batch z-scored reward minus the other G-1 samples' mean (OpenRLHF "rloo")
    #   reinforce_pp batch z-score, k1 KL in the reward, return-to-go, whitened over all valid
    #                tokens of the batch (OpenRLHF "reinforce", i.e. REINFORCE++)
    #   grpo         per-group (r - mean) / sample std (TRL GRPOTrainer, OpenRLHF "group_norm")
    #   dr_grpo      per-group r - mean (TRL / OpenRLHF "dr_grpo")
    c.rl = ml_collections.ConfigDict()
    c.rl.algo = "rloo"  # reinforce | rloo | reinforce_pp | grpo | dr_grpo
    c.rl.beta = 0.01  # KL coefficient (paper: 0.01, pi_ref = the initial policy)
    c.rl.kl_mode = "reward"  # "reward": per-token k1 added to the reward; "loss": k3 loss term
    c.rl.clip_eps = 0.2
    c.rl.clip_eps_high = 0.0  # > 0: the upper clip bound's own epsilon (DAPO); 0: clip_eps
    c.rl.train_batch = 0  # rollout samples per optimizer step; 0: the whole rollout, one step
    c.rl.ppo_epochs = 1  # passes over the rollout's shuffled mini-batches
    # "auto": losses.AGGREGATION (token_mean for reinforce/rloo/reinforce_pp as OpenRLHF, seq_mean
    # for grpo as TRL's "grpo", seq_sum for dr_grpo as TRL's "dr_grpo"); or one of those three.
    c.rl.loss_agg = "auto"
    c.rl.norm_len = 0  # seq_sum aggregation's length divisor (losses.aggregate); 0: L
    # Reward z-score for reinforce/rloo/reinforce_pp: "batch" (paper Eq. 5), "group" (per prompt:
    # GRPO's statistics) or "none". grpo and dr_grpo always use their own group statistics.
    c.rl.norm = "batch"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-6
    c.optim.warmup_frac = 0.03
    c.optim.min_lr_ratio = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.optim.micro_batch = 8
    # > 0: the train step projects to the vocabulary this many completion positions at a time,
    # recomputed in the backward pass ([N, L, V] logits never held at once); 0: all at once.
    c.optim.logit_chunk = 0
    # True: each block's activations are recomputed in the backward pass instead of kept (less
    # memory per micro-batch, about one more forward pass of time; the memory plan counts it).
    c.optim.remat = False
    # True: the update and the reference pass run each prompt once for its samples (their rows
    # attend to its KV cache, as in the sampler) instead of once per sample: the same log-probs
    # up to rounding, for less work. Applies when an optimizer step takes the whole rollout
    # (rl.train_batch 0) and optim.micro_batch is a multiple of rollout.samples_per_prompt.
    c.optim.share_prompts = True
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
    # Join a multi-process job (jax.distributed.initialize): "auto" when the environment names one
    # (JAX_COORDINATOR_ADDRESS, as rlvr_jax.launch sets, SLURM, Open MPI, a TPU pod), or True/False.
    c.mesh.distributed = "auto"
    # Seconds without a heartbeat after which the job's other processes stop (None: JAX's 100 s).
    c.mesh.heartbeat_timeout_s = None

    c.train = ml_collections.ConfigDict()
    c.train.steps = 20
    c.train.mode = "rl"  # "sft": the SFT baseline on the references (rlvr_jax/sft_baseline.py)
    c.train.sft_target = "Therefore, the answer is {}."  # SFT completion, in the prompt's format
    c.train.ckpt_every = 5
    c.train.keep_ckpts = 2
    c.train.eval_every = 0  # held-out evaluation at step 0, every k steps (0: none) and the end
    c.train.eval_prompts = 0  # held-out questions: the first K of the test split (0: all)
    c.train.eval_samples = 1  # n > 1: also n sampled answers per question (mean@n, pass@k)
    c.train.eval_batch = 16  # questions per generation batch (one compiled shape)
    # Reward-hacking guards (rlvr_jax/guards.py): bounds that print a warning when crossed.
    c.train.guards = ml_collections.ConfigDict()
    c.train.guards.probes = ("thought_process", "colon", "step_by_step", "cut_therefore")
    c.train.guards.max_probe_yes_rate = 0.2  # reward judge YES rate on content-free probes
    c.train.guards.min_length_ratio = 0.25  # mean response length / its step-1 value
    c.train.guards.max_neither_rate = 0.2  # verdicts neither YES nor NO
    c.train.guards.max_truncation_rate = 1.0  # responses cut at max_new_tokens (1.0: never)
    c.train.guards.stop = False  # stop the run (with a checkpoint) when a bound is crossed
    c.train.max_nonfinite = 5  # stop after this many non-finite updates in a row
    c.train.export_hf = True
    # Each step's rollouts with every reward's score in WORKDIR/rollouts/ (rlvr_jax/rollout_log.py).
    c.train.log_rollouts = False
    c.train.tensorboard = True
    return c

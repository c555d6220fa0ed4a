"""Distil the default judge: SmolLM2-135M-Instruct fine-tuned on YES/NO verdicts for economics.

`python -m rlvr_jax.distill --config configs/judge_econ.py [--workdir DIR]`. The student is
`judge.model`; the teachers are the labelled rows of every shipped domain's TRAIN split
(reference and rephrasings YES; distractors and other questions' answers NO), the policy's own
answers labelled by the paper's rule (data/onpolicy, "train" split), plus master-key negatives; it
is evaluated on the economics TEST questions, which never enter training, and on the held-out
on-policy answers (the figures that say how well it scores what RL feeds it).
Variants: `:smoke` (a minute or two on a CPU, for checking the pipeline), `:teacher` (the
paper's recipe: a judge model labels a policy's on-policy rollouts; for accelerators) and
`:rl_answers` (also trained on RL-trained policies' labelled rollouts).
"""

import ml_collections

from configs import base

DOMAINS = ("economics", "psychology", "education", "medicine", "chemistry")


def get_config(arg: str | None = None):
    c = base.get_config()
    c.name = "judge_econ"
    c.judge.model = "default"  # the student (the starting model)
    c.judge.template = "short"  # judge/prompts.py's short prompt: what configs/econ.py scores with
    c.judge.max_prompt_len = 512
    c.data.train = tuple(f"data/{d}/train.jsonl" for d in DOMAINS)
    c.data.test = ("data/economics/test.jsonl",)
    c.data.system_prompt = ""  # the policy's system prompt is not part of a judge prompt

    c.distill = ml_collections.ConfigDict()
    # Teachers: "data" (labelled rows), "math" (math-verify on generated math questions),
    # "judge" (a judge model on a policy's rollouts; see the teacher_* fields).
    # "onpolicy": the policy's own labelled answers (data/onpolicy, split "train"): the rambling,
    # cut-off, prose-answered responses RL feeds the judge, which clean candidates do not show it.
    c.distill.teachers = ("data", "onpolicy")
    c.distill.onpolicy_file = "data/onpolicy/answers.jsonl"
    c.distill.onpolicy_repeat = 2  # each on-policy answer this many times (about 800 answers)
    # Per question: this many YES answers and as many distractors stated in prose ("This is known
    # as X."), the form in which a small policy commits when it writes no answer line.
    c.distill.prose_pairs = 1
    # Per question: this many responses stating the reference and a distractor (NO).
    c.distill.conflicting = 1
    c.distill.questions_per_source = 0  # 0: every training question of each source
    # Per question: other questions' references labelled NO (easy negatives). 0: the minimal
    # pairs below are harder negatives at about the same row count.
    c.distill.other_answers = 0
    c.distill.yes_forms = 1  # each YES answer written in this many final-line forms
    # ... and each distractor (the hard negatives). 1, not 2: with 2 the judge leans to NO
    # (held-out accuracy 0.793 before calibration, 0.829 after, against 0.843 / 0.836 with 1).
    c.distill.distractor_forms = 1
    # Share of answers (YES and NO) rewritten in another surface form ("$25" -> "25 dollars"),
    # so that the judge compares values, not spellings: examples.surface_forms.
    c.distill.surface_rate = 0.5
    # Per question: up to this many rewrites of the reference that keep its value ("3/4" ->
    # "0.75"; YES) and minimal changes of it ("0.25" -> "-0.25", "increasing" -> "decreasing";
    # NO): distill/minimal_pairs.py. 6: every near miss of each shipped reference (they have at
    # most 6, and at most 2 rewrites); validation accuracy 0.912 against 0.907 with 2.
    c.distill.minimal_pairs = 6
    # Per question: up to this many rephrasings also used as the reference of their own prompt,
    # judging the original reference and other rephrasings (YES) and the distractors (NO).
    # 0: with 1 (62% more rows) validation accuracy is 0.892 against 0.907 without.
    c.distill.swapped_references = 0
    c.distill.probes_per_question = 1  # master-key negatives per question
    c.distill.probe_kinds = ()  # () = every kind in probes.PROBES
    c.distill.math_questions = 0  # for the "math" teacher
    c.distill.teacher_judge = ""  # a judge model directory for the "judge" teacher
    c.distill.teacher_policy = "default"  # whose rollouts the teacher judges
    c.distill.teacher_prompts = 64
    c.distill.teacher_samples = 4
    c.distill.teacher_max_new_tokens = 128
    c.distill.epochs = 4
    # > 0: the judge is the moving average of its trained weights over ~1 / (1 - d) steps.
    c.distill.ema_decay = 0.98
    c.distill.batch_tokens = 2048  # suffix tokens per SFT batch (prefixes come on top)
    c.distill.max_suffixes = 16  # candidates sharing one prefix copy
    c.distill.merge_tokens = 3000  # merge shape buckets when that adds fewer padded tokens
    # > 0: plus this weight times a ranking loss between the YES and NO candidates of one
    # question (split_model.pair_loss), next to the verdict cross-entropy.
    c.distill.pair_weight = 1.0
    c.distill.class_balance = True  # YES and NO rows weigh the same in the loss in total
    c.distill.eval_probes_per_question = 8  # 0: every probe on every held-out question
    c.distill.heldout_questions = 0  # 0: every held-out question
    # Validation questions, drawn from one training source and kept out of training: they choose
    # the judge's calibration (reward.JudgeConfig.yes_bias), so the test questions choose nothing.
    c.distill.val_source = "data/economics/train.jsonl"
    c.distill.val_questions = 40  # 0: no validation split (and no calibration)
    c.distill.calibrate = True
    c.distill.eval_each_epoch = False  # also evaluate on the held-out rows after each epoch
    c.distill.cache_layer = -1  # -1: cache at the lowest trained block; k: at block k (lower)

    c.optim.train_layers = 4  # top blocks trained; the rest is frozen and cached
    c.optim.lr = 1e-3  # 1e-4 under-fits in this budget (train accuracy ~0.65 after 3 epochs)
    c.optim.warmup_frac = 0.05
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0  # (optax masks decay by ndim; keep 0 for the trained norms)
    c.train.ckpt_every = 50
    c.train.keep_ckpts = 2
    c.train.export_hf = True
    if arg == "smoke":
        c.name = "judge_econ_smoke"
        c.distill.questions_per_source = 12
        c.distill.epochs = 1
        c.distill.eval_probes_per_question = 2
        c.distill.heldout_questions = 10
        c.distill.val_questions = 4
        c.optim.train_layers = 2
        c.train.ckpt_every = 5
    elif arg == "teacher":
        c.name = "judge_econ_teacher"
        c.distill.teachers = ("data", "judge")
        c.distill.teacher_judge = "default"  # replace by a strong judge's model directory
    elif arg == "rl_answers":
        # Also the answers of RL-trained policies (their rollouts during RL, the text the reward
        # judge scores), labelled by the same rule: data/onpolicy/rl_answers.jsonl, train split.
        c.name = "judge_econ_rl_answers"
        c.distill.onpolicy_more = ("data/onpolicy/rl_answers.jsonl",)
    elif arg:
        raise ValueError(
            f"configs/judge_econ.py: unknown variant {arg!r} (smoke, teacher, rl_answers)"
        )
    return c

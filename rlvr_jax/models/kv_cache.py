"""The explicit KV cache: a pytree passed into the model and returned updated, never hidden."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvr_jax.mesh import KV_NAMES, SAMPLE_RULES, Rules, logical_sharding
from rlvr_jax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, plus which slots hold real tokens.

    Rows share one write index: prompts are left-padded so that they all end at the same slot, and
    padding is excluded by `mask`, never by comparing token ids with a pad id.

    k, v: one array per layer, each [N, S, Hkv, K]
    mask: [N, S] bool, True where the slot holds a real (non-pad) token
    index: [] int32, the next slot to write
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, size: int, dtype: str | None = None) -> KVCache:
        """An empty cache of `size` slots for `batch` rows ([N, S, Hkv, K] per layer)."""
        dt = jnp.dtype(dtype or cfg.dtype)
        shape = (batch, size, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)),
            mask=jnp.zeros((batch, size), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def size(self) -> int:
        return self.mask.shape[1]

    def repeat(self, g: int) -> KVCache:
        """Each row repeated g times along the batch ([B,...] -> [B*G,...], a prompt's rows
        adjacent): a prompt is prefilled once and its cache shared by its G samples."""
        rep = lambda x: jnp.repeat(x, g, axis=0)
        return self.replace(
            k=tuple(map(rep, self.k)), v=tuple(map(rep, self.v)), mask=rep(self.mask)
        )

    def take(self, rows: jax.Array) -> KVCache:
        """The cache rows `rows` [M] (a row may be taken several times): [N,...] -> [M,...]."""
        take = lambda x: jnp.take(x, rows, axis=0)
        return self.replace(k=tuple(map(take, self.k)), v=tuple(map(take, self.v)),
                            mask=take(self.mask))  # fmt: skip

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in (*self.k, *self.v, self.mask))

    def shardings(self, mesh: Mesh, rules: Rules = SAMPLE_RULES) -> KVCache:
        """NamedShardings for this cache (concrete or from `jax.eval_shape`): rows over the batch
        axes, KV heads over tensor when they divide; usable as out_shardings or a constraint."""
        kv = logical_sharding(mesh, KV_NAMES, self.k[0].shape, rules)
        return self.replace(
            k=(kv,) * len(self.k),
            v=(kv,) * len(self.v),
            mask=logical_sharding(mesh, KV_NAMES[:2], self.mask.shape, rules),
            index=NamedSharding(mesh, PartitionSpec()),
        )

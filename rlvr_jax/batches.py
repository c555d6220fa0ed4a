"""Resumable prompt batches: endless batches over shuffled epochs, whose position is a small
state that a checkpoint stores, so that a resumed run draws exactly the batches it would have.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.data import DataError, Example


def fingerprint(examples: Sequence[Example]) -> int:
    """A 31-bit checksum of the examples' ids, questions and references, in order (fits int32)."""
    h = 0
    for ex in examples:
        h = zlib.crc32(f"{ex.id}\x1f{ex.question}\x1f{ex.reference}\x1e".encode(), h)
    return h & 0x7FFFFFFF


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order [n] of epoch `epoch`: a pure function of (seed, epoch, n)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchIterator:
    """Endless prompt batches over epochs, each epoch shuffled from (seed, epoch).

    `state()` is a small dict of ints {epoch, position, seed, num_examples, fingerprint}; saving it
    in a checkpoint and calling `restore` gives exactly the same future batches. `batch_size` is the
    global batch; with host_count > 1, each host gets its contiguous 1/host_count share of it, and
    all hosts step the same state. An epoch's tail shorter than a batch is dropped (static shapes).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int = 0,
        host_index: int = 0,
        host_count: int = 1,
    ):
        if batch_size <= 0 or batch_size % host_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of {host_count}")
        if not 0 <= host_index < host_count:
            raise ValueError(f"host_index {host_index} not in [0, {host_count})")
        if len(examples) < batch_size:
            raise DataError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
        self.examples = list(examples)
        self.batch_size, self.host_index, self.host_count = batch_size, host_index, host_count
        self._state = {
            "epoch": 0,
            "position": 0,
            "seed": int(seed),
            "num_examples": len(self.examples),
            "fingerprint": fingerprint(self.examples),
        }
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def state(self) -> dict[str, int]:
        """The position, as plain ints: checkpoint it and `restore` it to resume exactly."""
        return dict(self._state)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state; refuses one taken on other data (the run would change)."""
        s = {k: int(np.asarray(state[k])) for k in self._state}
        for k in ("num_examples", "fingerprint"):
            if s[k] != self._state[k]:
                raise DataError(
                    f"data position was saved for other data ({k} {s[k]}, now "
                    f"{self._state[k]}): resuming would change the run"
                )
        self._state = s
        self._order = None

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> list[Example]:
        st = self._state
        if st["position"] + self.batch_size > len(self.examples):
            st["epoch"], st["position"] = st["epoch"] + 1, 0
        if self._order is None or self._order[0] != st["epoch"]:
            self._order = (st["epoch"], epoch_order(st["seed"], st["epoch"], len(self.examples)))
        idx = self._order[1][st["position"] : st["position"] + self.batch_size]
        st["position"] += self.batch_size
        share = self.batch_size // self.host_count
        return [
            self.examples[i] for i in idx[self.host_index * share : (self.host_index + 1) * share]
        ]

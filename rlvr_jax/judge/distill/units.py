"""Judge rows -> fixed-shape batches of shared prompt prefixes and candidate suffixes, bucketed.

Rows that judge the same (question, reference) form a group. Their judge prompts, as token ids,
share a first part; the group's *prefix* is the longest common token prefix of its prompts (found
on the ids themselves, so it is exact whatever the template and tokenizer), and each candidate's
*suffix* is the rest. A *unit* is one prefix with the suffixes of one length bucket: a group whose
candidates differ much in length (a repeated question among short answers) becomes two units, so
short suffixes are not padded to the long one. Units go into (P, S) shape buckets, and small
buckets are merged into larger ones, since each shape costs a compile.

A batch holds up to U prefixes [U,P] (left-padded) and exactly N suffixes [N,S] (right-padded),
`owner[n]` naming the prefix of suffix n. Unused slots repeat real ones with weight 0.
Host-side numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlvr_jax.tokenizer import bucket_length, common_prefix_len

PREFIX_BUCKETS = (32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 2048)
SUFFIX_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 384, 512, 1024, 2048)


@dataclasses.dataclass
class Bucket:
    """The units of one shape, flattened: unit u owns suffixes start[u]:start[u+1]."""

    prefix_ids: np.ndarray  # [n_units,P] int32, left-padded
    prefix_mask: np.ndarray  # [n_units,P] bool
    start: np.ndarray  # [n_units+1] int64
    suffix_ids: np.ndarray  # [n_suffixes,S] int32, right-padded
    suffix_mask: np.ndarray  # [n_suffixes,S] bool
    rows: np.ndarray  # [n_suffixes] int64: the row each suffix comes from

    @property
    def shape(self) -> tuple[int, int]:
        """(P, S)."""
        return self.prefix_ids.shape[1], self.suffix_ids.shape[1]

    @property
    def num_units(self) -> int:
        return len(self.prefix_ids)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Which units and suffixes of bucket `bucket` form one batch (host indices).

    units [U] and suffixes [N] index the bucket; owner [N] indexes `units`; valid [N] is False
    for filler slots.
    """

    bucket: int
    units: np.ndarray
    suffixes: np.ndarray
    owner: np.ndarray
    valid: np.ndarray


def build_buckets(
    ids: Sequence[Sequence[int]],
    keys: Sequence[tuple],
    pad_id: int,
    max_suffixes: int,
    merge_tokens: int = 0,
) -> list[Bucket]:
    """Bucketed units of the prompts `ids` (one per row); rows with equal `keys` share a prefix.

    Every suffix keeps at least one token (the verdict is read at its last token); a unit has at
    most `max_suffixes` suffixes. Shape buckets are merged while a merge adds fewer than
    `merge_tokens` padded tokens.
    """
    groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    units: dict[tuple[int, int], list[tuple[list[int], list[int]]]] = {}
    for members in groups.values():
        seqs = [ids[i] for i in members]
        cut = common_prefix_len(seqs, own=1)
        p = bucket_length(max(cut, 1), PREFIX_BUCKETS)
        members = sorted(members, key=lambda i: len(ids[i]))
        for chunk in _split_by_length([len(ids[i]) - cut for i in members], p, max_suffixes):
            rows = [members[j] for j in chunk]
            s = bucket_length(len(ids[rows[-1]]) - cut, SUFFIX_BUCKETS)
            units.setdefault((p, s), []).append((list(ids[rows[0]][:cut]), rows))
    units = _merge_shapes(units, merge_tokens)
    out = []
    for (p, s), us in sorted(units.items()):
        rows = [r for _, rs in us for r in rs]
        b = Bucket(
            np.full((len(us), p), pad_id, np.int32),
            np.zeros((len(us), p), bool),
            np.cumsum([0] + [len(rs) for _, rs in us]).astype(np.int64),
            np.full((len(rows), s), pad_id, np.int32),
            np.zeros((len(rows), s), bool),
            np.asarray(rows, np.int64),
        )
        for u, (prefix, _) in enumerate(us):
            if prefix:
                b.prefix_ids[u, p - len(prefix) :] = prefix
                b.prefix_mask[u, p - len(prefix) :] = True
        cut_of = {}
        for prefix, rs in us:
            for r in rs:
                cut_of[r] = len(prefix)
        for j, r in enumerate(rows):
            suffix = ids[r][cut_of[r] :]
            b.suffix_ids[j, : len(suffix)] = suffix
            b.suffix_mask[j, : len(suffix)] = True
        out.append(b)
    return out


def _split_by_length(lengths: Sequence[int], p: int, max_suffixes: int) -> list[range]:
    """Cut ascending suffix lengths into contiguous chunks minimising the padded tokens
    sum(P + n_chunk * S_chunk): one long outlier gets its own unit (and a copy of the prefix)
    instead of padding every other suffix to its length. O(n^2) dynamic programme, n is small."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j suffixes
    cut_at = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_suffixes), j):
            c = best[i] + p + (j - i) * bucket_length(lengths[j - 1], SUFFIX_BUCKETS)
            if c < best[j]:
                best[j], cut_at[j] = c, i
    chunks, j = [], n
    while j > 0:
        chunks.append(range(cut_at[j], j))
        j = cut_at[j]
    return chunks[::-1]


def _merge_cost(units: dict, a: tuple[int, int], b: tuple[int, int]) -> tuple:
    """(merged shape, padded tokens added) of merging shape buckets a and b."""

    def cost(shape, us):
        return sum(shape[0] + shape[1] * len(rs) for _, rs in us)

    shape = (max(a[0], b[0]), max(a[1], b[1]))
    added = cost(shape, units[a] + units[b]) - cost(a, units[a]) - cost(b, units[b])
    return shape, added


def _merge_shapes(units: dict, merge_tokens: int) -> dict:
    """Merge shape buckets pairwise, cheapest first, while a merge adds fewer than
    `merge_tokens` padded tokens per pass over the data (a new shape costs a compile of each
    jitted function, worth about that much computation on a CPU)."""
    units = dict(units)
    while len(units) > 1:
        keys = sorted(units)
        pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
        a, b = min(pairs, key=lambda ab: _merge_cost(units, *ab)[1])
        shape, added = _merge_cost(units, a, b)
        if added >= merge_tokens:
            break
        units[shape] = units.pop(a) + units.pop(b) + units.get(shape, [])
    return units


def pack(
    bucket: Bucket, bi: int, order: np.ndarray, max_units: int, num_suffixes: int
) -> list[Batch]:
    """Units of `bucket` in `order`, packed greedily into batches of <= max_units prefixes and
    exactly num_suffixes suffix slots (fillers repeat the batch's first suffix, invalid)."""
    out, cur = [], []

    def flush():
        sufs = [np.arange(bucket.start[u], bucket.start[u + 1]) for u in cur]
        owner = np.concatenate([np.full(len(x), k) for k, x in enumerate(sufs)])
        sufs = np.concatenate(sufs)
        fill = num_suffixes - len(sufs)
        units = np.asarray(cur + [cur[0]] * (max_units - len(cur)), np.int64)
        out.append(
            Batch(
                bi,
                units,
                np.concatenate([sufs, np.full(fill, sufs[0])]),
                np.concatenate([owner, np.zeros(fill, owner.dtype)]),
                np.arange(num_suffixes) < len(sufs),
            )
        )

    count = 0
    for u in order.tolist():
        n = min(int(bucket.start[u + 1] - bucket.start[u]), num_suffixes)
        if cur and (len(cur) == max_units or count + n > num_suffixes):
            flush()
            cur, count = [], 0
        cur.append(u)
        count += n
    if cur:
        flush()
    return out


def batch_shape(bucket: Bucket, batch_tokens: int) -> tuple[int, int]:
    """(U, N) for a bucket: about `batch_tokens` suffix tokens per batch (N a multiple of 8, no
    more than the bucket holds), and the number of prefix slots U that computes the fewest tokens
    when the bucket's units are packed (unused slots are computed too: too many waste prefixes,
    too few leave suffix slots empty)."""
    p, s = bucket.shape
    total = len(bucket.rows)
    n = min(max(8, batch_tokens // s // 8 * 8), -(-total // 8) * 8)
    per_unit = total / bucket.num_units
    need = n / per_unit  # prefix slots for n suffixes of average-sized units
    hi = min(max(1, int(np.ceil(1.5 * need))), bucket.num_units)
    lo = min(max(1, int(0.75 * need)), hi)  # a bucket of few large units: lo could pass hi
    order = np.arange(bucket.num_units)
    cost = {u: len(pack(bucket, 0, order, u, n)) * (u * p + n * s) for u in range(lo, hi + 1)}
    return min(cost, key=lambda u: (cost[u], u)), n


def epoch_batches(
    buckets: Sequence[Bucket], batch_tokens: int, seed: int, epoch: int
) -> list[Batch]:
    """One epoch's batches: units shuffled within each bucket and batches across buckets, from
    (seed, epoch) only, so any epoch's order can be recomputed when resuming."""
    rng = np.random.default_rng([seed, epoch])
    out = []
    for bi, b in enumerate(buckets):
        out += pack(b, bi, rng.permutation(b.num_units), *batch_shape(b, batch_tokens))
    return [out[i] for i in rng.permutation(len(out))]


def sequential_batches(buckets: Sequence[Bucket], batch_tokens: int) -> list[Batch]:
    """Every unit once, in order (to fill the activation cache, and for evaluation)."""
    out = []
    for bi, b in enumerate(buckets):
        out += pack(b, bi, np.arange(b.num_units), *batch_shape(b, batch_tokens))
    return out


def token_count(buckets: Sequence[Bucket], batches: Sequence[Batch]) -> tuple[int, int]:
    """(real tokens, computed tokens incl. padding) of `batches`: the cost of one pass."""
    real = padded = 0
    for bt in batches:
        b = buckets[bt.bucket]
        p, s = b.shape
        real += int(b.prefix_mask[np.unique(bt.units)].sum())
        real += int(b.suffix_mask[bt.suffixes[bt.valid]].sum())
        padded += len(bt.units) * p + len(bt.suffixes) * s
    return real, padded

"""Variable-length batches as block masks: padding (``kv_lengths``) and packed sequences
(``segment_ids``), without a dense ``[B, 1, L, L]`` token mask.

Both masks carry per-batch-row ``[B]`` lengths or ``[B, L]`` segment ids and a lazy predicate; the
block map is computed per block from the lengths (or from each block's min/max segment id), so
blocks that hold only padding, or only pairs of different segments, are ``EMPTY`` and skipped by
the kernels. Combine them with any pattern by ``&`` (e.g. ``causal_mask(L) & padding_mask(...)``).
Their semantics follow ``jax.nn.dot_product_attention``'s ``query_seq_lengths`` /
``key_value_seq_lengths`` and splash attention's ``SegmentIds``; a query row with no kept key
(a padded query) returns zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Array, Int

from sparsejax._blocks import numpy_or_jit
from sparsejax._checks import check_int
from sparsejax.attention.mask import (
    EMPTY,
    FULL,
    PARTIAL,
    BlockMask,
    TokenPredicate,
    array_namespace,
    register_predicate,
)
from sparsejax.attention.static import DEFAULT_BLOCK

__all__ = ["Lengths", "SameSegment", "padding_mask", "segment_mask"]


@register_predicate(data_fields=("kv_lengths", "q_lengths"))
class Lengths(TokenPredicate):
    """Keeps ``kv < kv_lengths[b]`` (and ``q < q_lengths[b]`` when given)."""

    kv_lengths: Any
    q_lengths: Any

    def __call__(self, b, h, q, kv):
        xp = array_namespace(self.kv_lengths, self.q_lengths, b, q, kv)
        out = kv < xp.asarray(self.kv_lengths)[b]
        if self.q_lengths is not None:
            out = out & (q < xp.asarray(self.q_lengths)[b])
        return out


@register_predicate(data_fields=("q_ids", "kv_ids"))
class SameSegment(TokenPredicate):
    """Keeps ``q_ids[b, q] == kv_ids[b, kv]`` (indices clipped into range)."""

    q_ids: Any
    kv_ids: Any

    def __call__(self, b, h, q, kv):
        xp = array_namespace(self.q_ids, self.kv_ids, b, q, kv)
        qi, ki = xp.asarray(self.q_ids), xp.asarray(self.kv_ids)
        qc = xp.clip(q, 0, qi.shape[1] - 1)
        kc = xp.clip(kv, 0, ki.shape[1] - 1)
        return qi[b, qc] == ki[b, kc]


def _int_array(x: Any, name: str, ndim: int):
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not np.issubdtype(np.dtype(x.dtype), np.integer) or x.ndim != ndim:
        raise TypeError(
            f"`{name}` must be an integer array with {ndim} dim(s); got dtype {x.dtype} and "
            f"shape {x.shape}."
        )
    return x


def _ranges(seq: int, block: int, xp):
    start = xp.arange(-(-seq // block)) * block
    return start, xp.minimum(start + block, seq) - 1


def padding_mask(
    kv_lengths: Int[Array, " batch"],
    seq_q: int,
    seq_kv: int | None = None,
    *,
    q_lengths: Int[Array, " batch"] | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Right-padded batch rows: row ``b`` keeps keys ``j < kv_lengths[b]`` (and queries
    ``i < q_lengths[b]``).

    Blocks entirely past a row's length are ``EMPTY`` (never fetched), blocks entirely inside are
    ``FULL``, only the block holding the boundary is ``PARTIAL``. NumPy lengths give a static
    mask; ``jax`` lengths (also traced) a dynamic one.

    Args:
        kv_lengths: Int ``[B]`` valid keys per row (``key_value_seq_lengths`` of
            ``jax.nn.dot_product_attention``).
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        q_lengths: Optional int ``[B]`` valid queries per row; padded query rows attend to
            nothing and output zeros.
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A ``BlockMask`` ``[B, 1, seq_q, seq_kv]``.
    """
    seq_q = check_int(seq_q, "seq_q", minimum=1)
    seq_kv = seq_q if seq_kv is None else check_int(seq_kv, "seq_kv", minimum=1)
    block_q = check_int(block_q, "block_q", minimum=1)
    block_kv = check_int(block_kv, "block_kv", minimum=1)
    kv_lengths = _int_array(kv_lengths, "kv_lengths", 1)
    if q_lengths is not None:
        q_lengths = _int_array(q_lengths, "q_lengths", 1)
        if q_lengths.shape != kv_lengths.shape:
            raise ValueError(
                f"`q_lengths` must have the shape of kv_lengths {kv_lengths.shape}; got "
                f"{q_lengths.shape}."
            )
    return BlockMask.create(
        _padding_map(kv_lengths, q_lengths, seq_q, seq_kv, block_q, block_kv),
        Lengths(kv_lengths, q_lengths),
        seq_q=seq_q,
        seq_kv=seq_kv,
        block_q=block_q,
        block_kv=block_kv,
    )


@numpy_or_jit(static_argnums=(2, 3, 4, 5))
def _padding_map(kv_lengths, q_lengths, seq_q, seq_kv, block_q, block_kv, *, xp):
    """``int8[B, 1, nq, nk]`` block kinds of `padding_mask` (``xp``: NumPy or jax.numpy)."""
    ks, ke = _ranges(seq_kv, block_kv, xp)
    kvl = xp.asarray(kv_lengths)[:, None, None, None]
    full = ke[None, None, None, :] < kvl
    empty = ks[None, None, None, :] >= kvl
    if q_lengths is not None:
        qs, qe = _ranges(seq_q, block_q, xp)
        ql = xp.asarray(q_lengths)[:, None, None, None]
        full = full & (qe[None, None, :, None] < ql)
        empty = empty | (qs[None, None, :, None] >= ql)
    nq = -(-seq_q // block_q)
    shape = (kv_lengths.shape[0], 1, nq, ks.shape[0])
    block_map = xp.where(full, FULL, xp.where(empty, EMPTY, PARTIAL))
    block_map = xp.broadcast_to(block_map, shape).astype(xp.int8)
    if xp is np:
        block_map = np.ascontiguousarray(block_map)
    return block_map


def _block_min_max(ids, block: int, xp):
    seq = ids.shape[1]
    n = -(-seq // block)
    padded = xp.pad(ids, ((0, 0), (0, n * block - seq)), mode="edge").reshape(-1, n, block)
    return padded.min(-1), padded.max(-1)


def segment_mask(
    segment_ids: Int[Array, "batch seq_q"],
    kv_segment_ids: Int[Array, "batch seq_kv"] | None = None,
    *,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Packed sequences: query ``i`` attends to key ``j`` only within the same segment.

    A block is ``EMPTY`` when its query and key segment-id ranges do not overlap, ``FULL`` when
    both hold a single, equal id, else ``PARTIAL`` (splash attention's ``SegmentIds``). Give
    padding its own id (and, to make padded queries attend to nothing, combine with
    `padding_mask`).

    Args:
        segment_ids: Int ``[B, seq_q]`` segment id of every query token.
        kv_segment_ids: Int ``[B, seq_kv]`` segment id of every key (default ``segment_ids``).
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A ``BlockMask`` ``[B, 1, seq_q, seq_kv]`` (static for NumPy ids, dynamic for ``jax``).
    """
    block_q = check_int(block_q, "block_q", minimum=1)
    block_kv = check_int(block_kv, "block_kv", minimum=1)
    q_ids = _int_array(segment_ids, "segment_ids", 2)
    kv_ids = q_ids if kv_segment_ids is None else _int_array(kv_segment_ids, "kv_segment_ids", 2)
    if kv_ids.shape[0] != q_ids.shape[0]:
        raise ValueError(
            f"`kv_segment_ids` must have batch {q_ids.shape[0]}; got shape {kv_ids.shape}."
        )
    return BlockMask.create(
        _segment_map(q_ids, kv_ids, block_q, block_kv),
        SameSegment(q_ids, kv_ids),
        seq_q=q_ids.shape[1],
        seq_kv=kv_ids.shape[1],
        block_q=block_q,
        block_kv=block_kv,
    )


@numpy_or_jit(static_argnums=(2, 3))
def _segment_map(q_ids, kv_ids, block_q, block_kv, *, xp):
    """``int8[B, 1, nq, nk]`` block kinds of `segment_mask` (``xp``: NumPy or jax.numpy)."""
    qmin, qmax = _block_min_max(xp.asarray(q_ids), block_q, xp)
    kmin, kmax = _block_min_max(xp.asarray(kv_ids), block_kv, xp)
    qmin, qmax = qmin[:, None, :, None], qmax[:, None, :, None]
    kmin, kmax = kmin[:, None, None, :], kmax[:, None, None, :]
    empty = (qmax < kmin) | (kmax < qmin)
    full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
    return xp.where(full, FULL, xp.where(empty, EMPTY, PARTIAL)).astype(xp.int8)

"""Static attention patterns: causal, local windows, sink + window, chunked causal, global + band.

Every function returns a static `sparsejax.attention.mask.BlockMask` (NumPy block map, lazy
position predicate): built once, hashable, cheap to evaluate inside a kernel tile. Block maps are
computed analytically per block from index ranges, combined with three-valued logic, then the few
partial blocks are re-classified exactly by evaluating the predicate on them, so a block is marked
``PARTIAL`` only if it really is.

Positions: query ``i`` and key ``j`` are absolute token indices starting at 0 for both sequences
(``offset`` shifts causal alignment, e.g. ``offset = seq_kv - seq_q`` for a bottom-right aligned
causal mask when decoding a suffix).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsejax._checks import check_int, check_positive_int
from sparsejax.attention.mask import (
    EMPTY,
    FULL,
    PARTIAL,
    BlockMask,
    TokenPredicate,
    _cdiv,
    array_namespace,
    register_predicate,
)

DEFAULT_BLOCK = 128


# -------------------------------------------------------------------------------------------------
# Position predicates (static, hashable) with analytic block classification
# -------------------------------------------------------------------------------------------------


def _ranges(seq: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(_cdiv(seq, block)) * block
    end = np.minimum(start + block, seq) - 1
    return start, end


def _three(full: np.ndarray, empty: np.ndarray) -> np.ndarray:
    return np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(np.int8)


class _Positional(TokenPredicate):
    def block_map(self, seq_q: int, seq_kv: int, block_q: int, block_kv: int) -> np.ndarray:
        raise NotImplementedError


@register_predicate
class Band(_Positional):
    """Keeps ``lo <= i - j <= hi`` (causal: ``lo=-offset, hi=inf``; a window: a finite band)."""

    lo: float
    hi: float

    def __call__(self, b, h, q, kv):
        d = q - kv
        out = array_namespace(d).ones(d.shape, bool)
        if np.isfinite(self.lo):
            out = out & (d >= int(self.lo))
        if np.isfinite(self.hi):
            out = out & (d <= int(self.hi))
        return out

    def block_map(self, seq_q, seq_kv, block_q, block_kv) -> np.ndarray:
        qs, qe = _ranges(seq_q, block_q)
        ks, ke = _ranges(seq_kv, block_kv)
        dmin = qs[:, None] - ke[None, :]
        dmax = qe[:, None] - ks[None, :]
        full = (dmin >= self.lo) & (dmax <= self.hi)
        empty = (dmax < self.lo) | (dmin > self.hi)
        return _three(full, empty)


@register_predicate
class KeyPrefix(_Positional):
    """Keeps keys ``j < n`` (attention sinks / global keys)."""

    n: int

    def __call__(self, b, h, q, kv):
        xp = array_namespace(q, kv)
        return xp.broadcast_to(kv < self.n, np.broadcast_shapes(q.shape, kv.shape))

    def block_map(self, seq_q, seq_kv, block_q, block_kv) -> np.ndarray:
        nq = _cdiv(seq_q, block_q)
        ks, ke = _ranges(seq_kv, block_kv)
        row = _three(ke < self.n, ks >= self.n)
        return np.broadcast_to(row[None, :], (nq, row.size)).copy()


@register_predicate
class QueryPrefix(_Positional):
    """Keeps every key for queries ``i < n`` (global queries)."""

    n: int

    def __call__(self, b, h, q, kv):
        xp = array_namespace(q, kv)
        return xp.broadcast_to(q < self.n, np.broadcast_shapes(q.shape, kv.shape))

    def block_map(self, seq_q, seq_kv, block_q, block_kv) -> np.ndarray:
        nk = _cdiv(seq_kv, block_kv)
        qs, qe = _ranges(seq_q, block_q)
        col = _three(qe < self.n, qs >= self.n)
        return np.broadcast_to(col[:, None], (col.size, nk)).copy()


@register_predicate
class SameChunk(_Positional):
    """Keeps ``i // chunk == j // chunk``."""

    chunk: int

    def __call__(self, b, h, q, kv):
        return (q // self.chunk) == (kv // self.chunk)

    def block_map(self, seq_q, seq_kv, block_q, block_kv) -> np.ndarray:
        qs, qe = _ranges(seq_q, block_q)
        ks, ke = _ranges(seq_kv, block_kv)
        qa, qb = qs // self.chunk, qe // self.chunk
        ka, kb = ks // self.chunk, ke // self.chunk
        full = (qa == qb)[:, None] & (ka == kb)[None, :] & (qa[:, None] == ka[None, :])
        empty = (qb[:, None] < ka[None, :]) | (kb[None, :] < qa[:, None])
        return _three(full, empty)


@register_predicate
class HeadSwitch(TokenPredicate):
    """Head ``h`` uses ``predicates[h]`` (built by `stack_heads`)."""

    predicates: tuple

    def __call__(self, b, h, q, kv):
        outs = [p(b, h, q, kv) for p in self.predicates]
        xp = array_namespace(h, *outs)
        shape = np.broadcast_shapes(*(o.shape for o in outs), h.shape)
        out = xp.zeros(shape, bool)
        for i, o in enumerate(outs):
            out = xp.where(h == i, o, out)
        return out


def _primitive(pred: _Positional, seq_q, seq_kv, block_q, block_kv) -> BlockMask:
    bmap = pred.block_map(seq_q, seq_kv, block_q, block_kv)[None, None]
    return BlockMask.create(
        bmap, pred, seq_q=seq_q, seq_kv=seq_kv, block_q=block_q, block_kv=block_kv
    )


def refine(mask: BlockMask) -> BlockMask:
    """Re-classify every ``PARTIAL`` block of a static mask exactly by evaluating its predicate
    there.

    Args:
        mask: A static mask (NumPy block map).

    Returns:
        The same mask with partial blocks that are really full or empty marked so.
    """
    if not mask.is_static:
        raise ValueError("refine needs a static mask (NumPy block map)")
    bmap = mask.block_map
    bi, hi, qi, ki = np.nonzero(bmap == PARTIAL)
    if bi.size == 0:
        return mask
    bq, bk = mask.block_q, mask.block_kv
    q = qi[:, None, None] * bq + np.arange(bq)[None, :, None]
    kv = ki[:, None, None] * bk + np.arange(bk)[None, None, :]
    valid = (q < mask.seq_q) & (kv < mask.seq_kv)
    tiles = np.asarray(mask.predicate(bi[:, None, None], hi[:, None, None], q, kv))
    tiles = np.broadcast_to(tiles, valid.shape)
    full = np.all(tiles | ~valid, axis=(1, 2))
    empty = ~np.any(tiles & valid, axis=(1, 2))
    new = bmap.copy()
    new[bi, hi, qi, ki] = np.where(full, FULL, np.where(empty, EMPTY, PARTIAL))
    return BlockMask.create(
        new,
        mask.predicate,
        seq_q=mask.seq_q,
        seq_kv=mask.seq_kv,
        block_q=bq,
        block_kv=bk,
    )


def _geometry(seq_q, seq_kv, block_q, block_kv) -> tuple[int, int, int, int]:
    seq_q = check_positive_int(seq_q, "seq_q")
    seq_kv = seq_q if seq_kv is None else check_positive_int(seq_kv, "seq_kv")
    return seq_q, seq_kv, check_positive_int(block_q, "block_q"), check_positive_int(block_kv, "block_kv")


def _check_window(window) -> tuple[float, float]:
    """``(left, right)`` extents; each a non-negative int or ``None`` (unbounded)."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(
            "`window` must be a (left, right) tuple of ints >= 0 or None (e.g. (w - 1, 0) for a "
            f"causal window of w keys); got {window!r}."
        )
    left, right = (
        np.inf if x is None else check_int(x, f"window[{i}]", minimum=0)
        for i, x in enumerate(window)
    )
    return left, right


# -------------------------------------------------------------------------------------------------
# Public patterns
# -------------------------------------------------------------------------------------------------


def full_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Every query attends to every key (density 1).

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    return _primitive(Band(-np.inf, np.inf), seq_q, seq_kv, block_q, block_kv)


def causal_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    offset: int = 0,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Causal attention: query ``i`` attends to keys ``j <= i + offset``.

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        offset: Shift of the diagonal (``seq_kv - seq_q`` aligns the last query with the last key).
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    offset = check_int(offset, "offset")
    return _primitive(Band(-offset, np.inf), seq_q, seq_kv, block_q, block_kv)


def sliding_window_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    window: tuple[int | None, int | None],
    offset: int = 0,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Local attention with ``(left, right)`` extents, like splash attention's ``LocalMask``.

    Query ``i`` attends to keys ``i + offset - left <= j <= i + offset + right``; ``None`` leaves
    a side unbounded. A causal window of ``w`` keys (the query and the ``w - 1`` before it) is
    ``window=(w - 1, 0)``; a symmetric one ``window=(w - 1, w - 1)``; ``(None, 0)`` is causal.
    The block map is computed analytically from the extents (no token is evaluated).

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        window: ``(left, right)``: keys kept before and after the (shifted) diagonal, each an
            int ``>= 0`` or ``None``.
        offset: Diagonal shift, as in `causal_mask`.
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    left, right = _check_window(window)
    offset = check_int(offset, "offset")
    band = Band(-offset - right, left - offset)
    return _primitive(band, seq_q, seq_kv, block_q, block_kv)


def sink_window_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    sink: int,
    window: int,
    offset: int = 0,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """StreamingLLM: causal attention to the first ``sink`` keys plus a causal window of ``window``.

    Query ``i`` attends to ``j <= i + offset`` with ``j < sink`` or ``i + offset - j < window``.

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        sink: Number of attention-sink tokens at the start (>= 0).
        window: Local window size (>= 1).
        offset: Diagonal shift, as in `causal_mask`.
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    sink = check_int(sink, "sink", minimum=0)
    window = check_int(window, "window", minimum=1)
    offset = check_int(offset, "offset")
    causal = _primitive(Band(-offset, np.inf), seq_q, seq_kv, block_q, block_kv)
    local = _primitive(Band(-offset, window - 1 - offset), seq_q, seq_kv, block_q, block_kv)
    sinks = _primitive(KeyPrefix(sink), seq_q, seq_kv, block_q, block_kv)
    return refine(local | (sinks & causal))


def chunked_causal_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    chunk: int,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Chunked causal attention (Llama 4 style): causal within consecutive chunks of ``chunk``
    tokens.

    Query ``i`` attends to ``j <= i`` with ``i // chunk == j // chunk``.

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        chunk: Chunk size (>= 1).
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    chunk = check_int(chunk, "chunk", minimum=1)
    causal = _primitive(Band(0, np.inf), seq_q, seq_kv, block_q, block_kv)
    same = _primitive(SameChunk(chunk), seq_q, seq_kv, block_q, block_kv)
    return refine(causal & same)


def global_band_mask(
    seq_q: int,
    seq_kv: int | None = None,
    *,
    band: int,
    num_global: int,
    causal: bool = False,
    block_q: int = DEFAULT_BLOCK,
    block_kv: int = DEFAULT_BLOCK,
) -> BlockMask:
    """Longformer / BigBird-style global + band attention.

    Query ``i`` attends to ``j`` when ``|i - j| <= band`` (local band), or ``j < num_global``
    (global keys), or ``i < num_global`` (global queries see everything); with ``causal=True``
    everything is further restricted to ``j <= i``.

    Args:
        seq_q: Query length.
        seq_kv: Key length (default ``seq_q``).
        band: Half-width of the band (>= 0).
        num_global: Number of global tokens at the start of the sequence (>= 0).
        causal: Also apply a causal mask.
        block_q: Query block size.
        block_kv: Key block size.

    Returns:
        A static mask.
    """
    seq_q, seq_kv, block_q, block_kv = _geometry(seq_q, seq_kv, block_q, block_kv)
    band = check_int(band, "band", minimum=0)
    num_global = check_int(num_global, "num_global", minimum=0)
    geo = (seq_q, seq_kv, block_q, block_kv)
    m = (
        _primitive(Band(-band, band), *geo)
        | _primitive(KeyPrefix(num_global), *geo)
        | _primitive(QueryPrefix(num_global), *geo)
    )
    if causal:
        m = m & _primitive(Band(0, np.inf), *geo)
    return refine(m)


def stack_heads(masks: Sequence[BlockMask]) -> BlockMask:
    """Stack per-head static masks (each with head dim 1) into one mask with ``len(masks)`` heads.

    Args:
        masks: Static masks of identical geometry and head dim 1.

    Returns:
        A static mask with block map ``[Bm, len(masks), nq, nk]`` and a `HeadSwitch`
        predicate.
    """
    masks = list(masks)
    if not masks:
        raise ValueError("masks must be a non-empty sequence of BlockMask")
    first = masks[0]
    geom = ("seq_q", "seq_kv", "block_q", "block_kv")
    for i, m in enumerate(masks):
        if not isinstance(m, BlockMask):
            raise TypeError(f"masks[{i}] must be a BlockMask, got {type(m).__name__}")
        if not m.is_static:
            raise ValueError(f"masks[{i}] must be static (NumPy block map)")
        if m.block_map.shape[1] != 1:
            raise ValueError(f"masks[{i}] must have head dim 1, got {m.block_map.shape[1]}")
        if any(getattr(m, g) != getattr(first, g) for g in geom):
            raise ValueError(f"masks[{i}] has a different geometry from masks[0]")
    batch = max(m.block_map.shape[0] for m in masks)
    bmap = np.concatenate(
        [np.broadcast_to(m.block_map, (batch, 1) + m.block_map.shape[2:]) for m in masks], axis=1
    )
    return BlockMask.create(
        bmap,
        HeadSwitch(tuple(m.predicate for m in masks)),
        seq_q=first.seq_q,
        seq_kv=first.seq_kv,
        block_q=first.block_q,
        block_kv=first.block_kv,
    )

"""Pattern functions: a score array in, a bool mask of the same shape out.

Naming: a function named after a pattern (`unstructured`, `nm`, `block`, `channel`, `topk`)
returns a mask; one named after a *method* says what it returns with its suffix, as everywhere
in sparsejax: `magnitude_mask` and `random_mask` return masks (`sparsejax.scores.magnitude`
returns the score, `sparsejax.oneshot.magnitude_prune` a ``(pruned_weight, mask)`` pair).

Every function here is pure and works under ``jit`` (with ``sparsity`` a *traced* scalar, which
schedules need), under ``vmap`` and on any float dtype, bfloat16 included. ``True`` means *kept*.

Ranking convention, shared by all patterns:

* higher score = kept first;
* ties are broken by position: among equal scores the one with the lower (row-major, flattened)
  index is kept first, so kept counts are exact and masks are deterministic;
* ``NaN`` scores rank below ``-inf`` (kept last); ``-0.0`` and ``0.0`` are equal.

No full sort is used. The exact ``k``-th largest score is found by a radix select over an
order-preserving integer image of the floats (16-bit digits: two histogram passes for 16- and
32-bit floats, four for float64), then ties at the threshold are resolved by position. N:M masks
rank entries inside each group of ``m`` by pairwise comparison, with no sort at all.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from sparsejax import _transposable as _tr
from sparsejax._checks import (
    check_block_shape,
    check_choice,
    check_divisible,
    check_float_array,
    check_int,
    check_nm,
    check_nm_axis,
    check_sparsity,
    is_concrete,
    must_be,
    normalize_axis,
)

__all__ = [
    "block",
    "channel",
    "kept_count",
    "magnitude_mask",
    "nm",
    "nm_transposable",
    "random_mask",
    "satisfies_nm",
    "topk",
    "unstructured",
]

Reduce = Literal["mean", "sum", "max", "l2"]
REDUCES = ("mean", "sum", "max", "l2")


def _order_keys(scores: jax.Array) -> jax.Array:
    """Unsigned integers whose order is the float order of ``scores`` (NaN lowest, -0.0 == 0.0)."""
    x = scores
    if x.dtype == jnp.float64:
        int_dtype, nbits = jnp.uint64, 64
    else:
        x = x.astype(jnp.float32)
        int_dtype, nbits = jnp.uint32, 32
    nan = jnp.isnan(x)
    x = jnp.where(nan | (x == 0), jnp.zeros((), x.dtype), x)
    bits = lax.bitcast_convert_type(x, int_dtype)
    sign = bits >> (nbits - 1)
    top = jnp.asarray(1, int_dtype) << (nbits - 1)
    keys = jnp.where(sign == 1, ~bits, bits | top)
    # NaN gets key 0, below the key of -inf (0x007fffff or its 64-bit analogue)
    return jnp.where(nan, jnp.zeros((), int_dtype), keys)


_CHUNK = 1 << 16


def _chunk_scan(fn, flat: jax.Array, init):
    """Fold ``fn(carry, chunk, fresh)`` over the ``ceil(size / _CHUNK)`` slices of ``_CHUNK``
    consecutive entries of a 1-D array (one slice, the whole array, when it is no longer).

    XLA's CPU backend materializes the elementwise producer of a large reduction or scatter as one
    full-size buffer (a fresh 64 MB allocation for a 4096^2 float32 weight, page faults included);
    slicing inside a loop keeps every intermediate chunk-sized. The last slice ends at the array's
    end (`_slice_start`), overlapping the one before when ``size % _CHUNK != 0``: ``fresh`` then
    flags the entries of a slice that no earlier slice holds (``None`` when every entry is fresh),
    so ``fn`` is traced once, with no separate tail program. Returns ``(carry, stacked per-slice
    outputs)``.
    """
    size = flat.shape[0]
    if size <= _CHUNK:
        carry, y = fn(init, flat, None)
        return carry, jax.tree.map(lambda a: a[None], y)
    ragged = size % _CHUNK != 0

    def body(carry, i):
        start = _slice_start(i, size)
        fresh = (start + jnp.arange(_CHUNK, dtype=jnp.int32) >= i * _CHUNK) if ragged else None
        return fn(carry, lax.dynamic_slice_in_dim(flat, start, _CHUNK), fresh)

    return lax.scan(body, init, jnp.arange(-(-size // _CHUNK), dtype=jnp.int32))


def _slice_start(i: jax.Array, size: int) -> jax.Array:
    """Start of `_chunk_scan`'s slice ``i`` of an array of ``size > _CHUNK`` entries."""
    return jnp.minimum(i * _CHUNK, size - _CHUNK)


def _histogram(flat: jax.Array, digit_of, nbins: int) -> jax.Array:
    """int32 counts of ``digit_of(chunk)`` over ``[0, nbins)``; the digit ``nbins`` is dropped."""
    def add(hist, chunk, fresh):
        digits = digit_of(chunk)
        if fresh is not None:
            digits = jnp.where(fresh, digits, nbins)
        return hist.at[digits].add(1, mode="drop"), None

    return _chunk_scan(add, flat, jnp.zeros(nbins, jnp.int32))[0]


def _digit_select(hist: jax.Array, k: jax.Array):
    """The digit value holding the ``k``-th largest of the entries counted by ``hist``.

    Returns ``(d, k_left, n_at_d)``: the ``k``-th largest counted entry has digit ``d``; ``k_left``
    of the entries with digit ``d`` are needed to complete the top ``k``; ``n_at_d`` entries have it.
    """
    # two levels (rows of 256 bins, then the bins of one row): no cumsum over all the bins
    # (XLA's CPU cumsum costs about as much as a 16M-entry histogram pass on 65536 bins)
    width = 256 if hist.shape[0] % 256 == 0 else hist.shape[0]
    rows = hist.reshape(-1, width)
    row_total = jnp.sum(rows, axis=1)
    row_above = jnp.cumsum(row_total[::-1])[::-1]  # [r] = #{counted entries in rows >= r}
    r = jnp.maximum(jnp.sum(row_above >= k) - 1, 0).astype(jnp.int32)
    k_row = k - (row_above[r] - row_total[r])  # rank left inside row r
    row = lax.dynamic_index_in_dim(rows, r, keepdims=False)
    at_or_above = jnp.cumsum(row[::-1])[::-1]  # [j] = #{entries of row r with bin >= j}
    j = jnp.maximum(jnp.sum(at_or_above >= k_row) - 1, 0).astype(jnp.int32)
    n_at_d = row[j]
    return r * width + j, k_row - (at_or_above[j] - n_at_d), n_at_d


def _first_true_cut(flat: jax.Array, flag_of, count: jax.Array) -> jax.Array:
    """Flat position of the ``count``-th entry (``count >= 1``) with ``flag_of(entry)`` true.

    Per-slice counts in one `_chunk_scan` pass find the slice holding it; inside that slice its
    position is the largest ``p`` with fewer than the remaining count of flagged entries before
    ``p``, built bit by bit from the top (one compare-and-count pass over the slice per bit, as
    `_kth_largest_key`): no prefix sums over the entries, every intermediate slice-sized.
    """
    size = flat.shape[0]

    def per_slice(carry, chunk, fresh):
        flags = flag_of(chunk)
        return carry, jnp.sum(flags if fresh is None else flags & fresh, dtype=jnp.int32)

    counts = _chunk_scan(per_slice, flat, None)[1]
    cum = jnp.cumsum(counts)
    c = jnp.minimum(jnp.sum(cum < count), counts.shape[0] - 1).astype(jnp.int32)
    left = count - (cum[c] - counts[c])
    if size <= _CHUNK:
        start, chunk = jnp.int32(0), flat
    else:
        start = _slice_start(c, size)
        chunk = lax.dynamic_slice_in_dim(flat, start, _CHUNK)
    position = jnp.arange(chunk.shape[0], dtype=jnp.int32)
    # only entries from slice c's own range count (the last slice overlaps the one before)
    flags = flag_of(chunk) & (start + position >= c * _CHUNK)
    nbits = max(chunk.shape[0] - 1, 1).bit_length()

    def body(i, p):
        candidate = p | (1 << (nbits - 1 - i))
        before = jnp.sum(flags & (position < candidate), dtype=jnp.int32)
        return jnp.where(before < left, candidate, p)

    return start + lax.fori_loop(0, nbits, body, jnp.int32(0))


_SORT_BELOW = 1 << 14
_BISECT_ABOVE = 1 << 12


def _kth_largest_key(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The ``k``-th largest of unsigned ``keys`` (``1 <= k <= size``) by a bitwise binary search:
    the largest ``t`` with ``#{keys >= t} >= k``, built from the top bit down with one
    compare-and-count pass per bit (32 for 32-bit keys). On the 2-core CPU, 16,384 random keys take
    0.29 ms this way against 0.64 ms for XLA's sort, and a 10%-dense drop-and-grow of a 64 x 256
    leaf (two selections) 0.40 ms against 1.54 ms."""
    nbits = jnp.iinfo(keys.dtype).bits
    one = jnp.ones((), keys.dtype)

    def body(i, t):
        candidate = t | (one << (nbits - 1 - i).astype(keys.dtype))
        return jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, t)

    return lax.fori_loop(0, nbits, body, jnp.zeros((), keys.dtype))


def _topk_flat(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Mask of the ``k`` largest entries of a 1-D float array, ties by lower index.

    The exact ``k``-th largest order key (`_order_keys`) comes, up to ``_BISECT_ABOVE`` entries,
    from one sort of the keys alone (XLA's CPU sort of a single array is about 10x faster than an
    argsort, which sorts a second operand along), up to ``_SORT_BELOW`` entries from a bitwise
    binary search over the keys (`_kth_largest_key`), else from a radix select with 16-bit digits (two
    histogram passes for 32-bit keys, four for 64-bit) over keys recomputed chunk by chunk
    (`_chunk_scan`), never stored whole. All keys above it are kept, and the first ones equal to it
    by position.
    """
    size = scores.shape[0]
    k = jnp.clip(k, 0, size).astype(jnp.int32)
    if size <= _SORT_BELOW:
        # short arrays (every row of a row-wise top-k under vmap): a sort is far cheaper than two
        # 65536-bin histograms per row; the tied entries are ranked by a prefix count
        keys = _order_keys(scores)
        if size > _BISECT_ABOVE:  # counting passes beat the sort from a few thousand keys
            threshold = _kth_largest_key(keys, jnp.maximum(k, 1))
        else:
            threshold = jnp.sort(keys)[size - jnp.maximum(k, 1)]
        above = keys > threshold
        tied = keys == threshold
        need = k - jnp.sum(above, dtype=jnp.int32)
        # the prefix count only when some tied entries are left out (a third of the time of a
        # 16384-entry selection when the threshold is unique)
        first_tied = lax.cond(need >= jnp.sum(tied, dtype=jnp.int32), lambda: tied,
                              lambda: tied & (jnp.cumsum(tied, dtype=jnp.int32) <= need))
        return (above | first_tied) & (k > 0)
    threshold, need, n_tied = _radix_select(scores, jnp.maximum(k, 1))
    # keep all keys above the threshold and the first `need` of those equal to it
    cut = lax.cond(need >= n_tied, lambda: jnp.int32(size),
                   lambda: _first_true_cut(scores, lambda c: _order_keys(c) == threshold,
                                           jnp.maximum(need, 1)))
    keys = _order_keys(scores)
    positions = jnp.arange(size, dtype=jnp.int32)
    return ((keys > threshold) | ((keys == threshold) & (positions <= cut))) & (k > 0)


def _radix_select(scores: jax.Array, k: jax.Array):
    """``(threshold, need, n_tied)``: the ``k``-th largest order key of a 1-D float array, how many
    entries equal to it complete the top ``k`` and how many there are (``1 <= k <= size``)."""
    key_dtype = jnp.uint64 if scores.dtype == jnp.float64 else jnp.uint32
    nbits = jnp.iinfo(key_dtype).bits
    digit_bits, nbins = 16, 1 << 16
    threshold = jnp.zeros((), key_dtype)
    need, n_tied = k, jnp.int32(scores.shape[0])
    for shift in range(nbits - digit_bits, -1, -digit_bits):
        high = shift + digit_bits  # the digits above this one are fixed to `threshold`'s

        def digit_of(chunk, shift=shift, high=high, threshold=threshold):
            keys = _order_keys(chunk)
            digits = ((keys >> shift) & (nbins - 1)).astype(jnp.int32)
            if high == nbits:
                return digits
            return jnp.where((keys >> high) == (threshold >> high), digits, nbins)

        d, need, n_tied = _digit_select(_histogram(scores, digit_of, nbins), need)
        threshold = threshold | (d.astype(key_dtype) << shift)
    return threshold, need, n_tied


def kept_count(size: int, sparsity: Float[Array, ""] | float) -> Int[Array, ""]:
    """Number of entries an unstructured mask keeps: ``max(1, round(size * (1 - sparsity)))``.

    The product is evaluated in float32 (the same arithmetic eagerly and under ``jit``, so traced and
    concrete sparsities give the same masks) and rounded half to even, as ``numpy.round``.
    A traced ``sparsity`` is clamped into ``[0, 1]`` and ``NaN`` counts as ``0`` (all kept); a
    concrete value outside ``[0, 1]`` raises. Every pattern function registers a
    ``jax.experimental.checkify`` check on a traced sparsity, so wrapping the caller with
    ``checkify.checkify(f, errors=checkify.user_checks)`` turns such a value into an error.

    Args:
        size: number of entries ranked.
        sparsity: fraction of entries to drop, scalar in ``[0, 1]``.

    Returns:
        int32 scalar in ``[1, size]`` (``0`` only when ``size == 0``).
    """
    s = jnp.asarray(sparsity, jnp.float32)
    s = jnp.where(jnp.isnan(s), 0.0, jnp.clip(s, 0.0, 1.0))
    k = jnp.round(jnp.float32(size) * (jnp.float32(1.0) - s)).astype(jnp.int32)
    return jnp.clip(k, min(1, size), size)


def topk(scores: Float[Array, "*shape"], k: int | Int[Array, ""]) -> Bool[Array, "*shape"]:
    """Keep exactly the ``k`` highest scores of the whole array (ties by lower flattened index).

    Args:
        scores: float array of any shape.
        k: number kept, a Python int or a traced int scalar; clipped to ``[0, size]`` when traced.

    Returns:
        bool mask of ``scores.shape`` with exactly ``k`` ``True`` entries.
    """
    scores = check_float_array(scores, "scores")
    if is_concrete(k):
        if hasattr(k, "dtype") and jnp.ndim(k) == 0 and jnp.issubdtype(k.dtype, jnp.integer):
            k = int(k)
        k = check_int(k, "k", minimum=0)
        if not 0 <= k <= scores.size:
            raise ValueError(must_be("k", f"in [0, {scores.size}] for scores of shape "
                                     f"{scores.shape}", k))
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    return _topk(scores, jnp.asarray(k, jnp.int32))


@jax.jit
def _topk(scores: jax.Array, k: jax.Array) -> jax.Array:
    return _topk_flat(scores.reshape(-1), k).reshape(scores.shape)


def unstructured(
    scores: Float[Array, "*shape"],
    sparsity: float | Float[Array, ""],
    *,
    axis: int | None = None,
) -> Bool[Array, "*shape"]:
    """Keep the highest scores: exactly ``max(1, round(size * (1 - sparsity)))`` of them.

    Args:
        scores: float array (any float dtype, bf16 included).
        sparsity: fraction dropped, scalar in ``[0, 1]``; may be traced under ``jit``.
        axis: ``None`` ranks the whole array. An int ranks each 1-D fibre along ``axis``
            independently, keeping ``max(1, round(scores.shape[axis] * (1 - sparsity)))`` per fibre
            (Wanda's per-output comparison group: ``axis=0`` for a Flax ``[in, out]`` kernel).

    Returns:
        bool mask of ``scores.shape``, ``True`` = kept. The count rule is `kept_count`.

    Raises:
        TypeError: ``scores`` is not floating point.
        ValueError: ``sparsity`` outside ``[0, 1]`` or ``axis`` out of range.
    """
    scores = check_float_array(scores, "scores")
    check_sparsity(sparsity)
    if axis is not None:
        axis = normalize_axis(axis, scores.ndim)
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    return _unstructured(scores, jnp.asarray(sparsity, jnp.float32), axis)


@partial(jax.jit, static_argnums=2)
def _unstructured(scores: jax.Array, sparsity: jax.Array, axis: int | None) -> jax.Array:
    if axis is None:
        flat = scores.reshape(-1)
        return _topk_flat(flat, kept_count(scores.size, sparsity)).reshape(scores.shape)
    moved = jnp.moveaxis(scores, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    mask = jax.vmap(_topk_flat, in_axes=(0, None))(rows, kept_count(moved.shape[-1], sparsity))
    return jnp.moveaxis(mask.reshape(moved.shape), -1, axis)


def magnitude_mask(x: Float[Array, "*shape"], sparsity: float | Float[Array, ""]
                   ) -> Bool[Array, "*shape"]:
    """Unstructured magnitude mask: `unstructured` on ``|x|`` (score: `sparsejax.scores.magnitude`)."""
    x = check_float_array(x, "x")
    return unstructured(jnp.abs(x), sparsity)


def random_mask(
    key: jax.Array, shape: tuple[int, ...], sparsity: float | Float[Array, ""]
) -> Bool[Array, "*shape"]:
    """Uniformly random unstructured mask of ``shape`` with the exact kept count of
    `unstructured`."""
    shape = tuple(check_int(d, "shape", minimum=0) for d in shape)
    return unstructured(jax.random.uniform(key, shape), sparsity)


def nm(scores: Float[Array, "*shape"], n: int, m: int, axis: int | None = None
       ) -> Bool[Array, "*shape"]:
    """N:M mask: keep the ``n`` highest of every ``m`` consecutive entries along ``axis``.

    The N:M convention, shared with `sparsejax.formats.NMSparse` and `sparsejax.compute_masks`:

    * ``n`` counts *kept* entries, as in jaxpruner and SR-STE (Wanda/SparseGPT's ``prune_n``
      counts zeroed ones: their ``prune_n=2, prune_m=4`` is ``n=2, m=4`` here only because
      2 = 4 - 2);
    * a group is ``m`` consecutive entries along ``axis``, starting at index 0;
    * ``axis`` has **no default**: it must be the *reduction* axis of the sparse operand, the
      dimension NVIDIA's 2:4 sparse tensor cores group along. A Flax ``nnx.Linear``/
      ``linen.Dense`` kernel ``[in, out]`` reduces over ``in``: ``axis=0``; a conv kernel
      ``[kh, kw, in, out]``: ``axis=-2``; a torch ``[out, in]`` weight: ``axis=1``. (jaxpruner's
      default ``axis=-1`` is the *output* axis of a Flax kernel; requiring the axis makes that
      mistake impossible.);
    * ranking as everywhere in `sparsejax.masks`: higher score kept, ties by lower index, ``NaN``
      lowest.

    Args:
        scores: float array; ``scores.shape[axis]`` must be divisible by ``m``.
        n: kept per group, ``0 <= n <= m``.
        m: group size, ``m >= 1``.
        axis: the grouping (reduction) axis; required.

    Returns:
        bool mask of ``scores.shape`` with exactly ``n`` ``True`` in every group.

    Raises:
        ValueError: ``axis`` missing or out of range, ``n``/``m`` out of range, or
            ``scores.shape[axis]`` not divisible by ``m``.
    """
    scores = check_float_array(scores, "scores", min_ndim=1)
    check_nm_axis(axis)
    n, m = check_nm(n, m)
    axis = normalize_axis(axis, scores.ndim)
    check_divisible(scores.shape[axis], m, f"scores.shape[{axis}]", "m")
    return _nm(scores, n, m, axis)


_NETWORK_MAX_M = 8


@partial(jax.jit, static_argnums=(1, 2, 3))
def _nm(scores: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    if m <= _NETWORK_MAX_M:
        return _nm_network(scores, n, m, axis)
    moved = jnp.moveaxis(scores, axis, -1)
    groups = _order_keys(moved).reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    if m <= 32:
        idx = jnp.arange(m)
        mine, other = groups[..., :, None], groups[..., None, :]
        beats = (other > mine) | ((other == mine) & (idx[None, :] < idx[:, None]))
        rank = jnp.sum(beats, axis=-1, dtype=jnp.int32)
    else:
        order = jnp.argsort(~groups, axis=-1, stable=True)
        rank = jnp.argsort(order, axis=-1, stable=True)
    keep = (rank < n).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, axis)


def _nm_network(scores: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    """Small ``m``: rank each group member by ``m (m - 1) / 2`` elementwise comparisons between the
    ``m`` strided slices ``[pre, K/m, post]`` of the array, in its own layout (no transpose, no
    sort, no minor axis of length ``m``): one fused pass over the scores."""
    shape = scores.shape
    pre = int(np.prod(shape[:axis], dtype=np.int64))
    post = int(np.prod(shape[axis + 1:], dtype=np.int64))
    keys = _order_keys(scores).reshape(pre, shape[axis] // m, m, post)
    parts = [keys[:, :, i, :] for i in range(m)]
    rank = [jnp.zeros(parts[0].shape, jnp.int32) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            j_first = parts[j] > parts[i]  # ties: the lower index i ranks first
            rank[i] = rank[i] + j_first
            rank[j] = rank[j] + ~j_first
    keep = jnp.stack([r < n for r in rank], axis=2)
    return keep.reshape(shape)


TRANSPOSABLE_METHODS = ("auto", "enumerate", "exact", "sinkhorn")


def nm_transposable(scores: Float[Array, "*batch R C"], n: int, m: int, axis: int | None = None,
                    *, method: str = "auto") -> Bool[Array, "*batch R C"]:
    """Transposable N:M mask: ``n`` kept in every row *and* every column of each ``m x m`` block.

    The mask is N:M along both of the last two axes, so a weight masked with it is N:M along its
    reduction axis in the forward product ``W x`` *and* in the backward product ``W^T g``
    (`sparsejax.formats.NMSparse.transpose`). Among all such masks it maximises the kept score
    (a bipartite b-matching per block; its LP is totally unimodular, so the optimum is exact):

    * ``"enumerate"`` (``m <= 4``, traceable): the best of every feasible pattern (90 for 2:4)
      per block, exact, by meeting in the middle (the best top-half and bottom-half row choices
      per column-count vector, 19 at 2:4) in one cache-blocked elementwise pass; ties go to the
      first pattern in lexicographic order of the rows' kept positions. A 4096 x 4096 float32
      2:4 mask takes 1-1.5x the time of the plain `nm` mask on CPU (``benchmarks/masks.py``).
    * ``"exact"`` (any ``n:m``, host only): one sparse ``scipy.optimize.milp`` over all blocks;
      needs concrete scores (not under ``jit``).
    * ``"sinkhorn"`` (any ``n:m``, traceable, approximate): Sinkhorn to a doubly stochastic
      plan, greedy rounding and augmenting-path repair (always feasible), then 2-swap
      improvements; reaches 0.997 of the exact kept |W| at 4:8 on Gaussian weights.
    * ``"auto"``: ``"enumerate"`` for ``m <= 4``, else ``"sinkhorn"``.

    Non-finite scores are clamped to ``+-1e30`` and ``NaN`` ranks as ``-1e30``.

    Args:
        scores: float array ``[..., R, C]``; ``R`` and ``C`` divisible by ``m``; leading axes are
            batch axes.
        n: kept per row and per column of every block, ``0 <= n <= m``.
        m: block size.
        axis: accepted so the pattern can stand in for `nm` (``pattern="nm_transposable"``):
            if given it must name one of the last two axes (the mask is N:M along both).
        method: ``"auto"``, ``"enumerate"``, ``"exact"`` or ``"sinkhorn"``.

    Returns:
        bool mask of ``scores.shape`` with exactly ``n`` ``True`` in every row and every column of
        every ``m x m`` block.

    Raises:
        TypeError: non-float ``scores``; ``"exact"`` with traced scores.
        ValueError: fewer than 2 dimensions, ``n``/``m`` out of range, ``R`` or ``C`` not
            divisible by ``m``, ``axis`` not one of the last two, ``method`` unknown or
            ``"enumerate"`` with ``m > 4``.
    """
    scores = check_float_array(scores, "scores", min_ndim=2)
    n, m = check_nm(n, m)
    check_choice(method, "method", TRANSPOSABLE_METHODS)
    if axis is not None:
        ax = normalize_axis(axis, scores.ndim)
        if ax < scores.ndim - 2:
            raise ValueError(must_be("axis", f"one of the last two axes ({scores.ndim - 2}, "
                                     f"{scores.ndim - 1}, -2, -1) for scores of shape "
                                     f"{scores.shape}", axis))
    for ax in (-2, -1):
        check_divisible(scores.shape[ax], m, f"scores.shape[{scores.ndim + ax}]", "m")
    if method == "auto":
        method = "enumerate" if m <= _tr.ENUMERATE_MAX_M else "sinkhorn"
    if method == "enumerate" and m > _tr.ENUMERATE_MAX_M:
        raise ValueError(must_be("m", f"<= {_tr.ENUMERATE_MAX_M} for method='enumerate' (use "
                                 "'exact' or 'sinkhorn')", m))
    if scores.size == 0 or n in (0, m):
        return jnp.full(scores.shape, n == m)
    if method == "exact":
        if not is_concrete(scores):
            raise TypeError(must_be("scores", "concrete for method='exact' (a host MILP); use "
                                    "method='sinkhorn' or 'enumerate' under jit", "a tracer",
                                    raw=True))
        return jnp.asarray(_tr.exact_mask(np.asarray(scores), n, m))
    if method == "enumerate":
        return _tr.enumerate_mask(scores, n, m)
    return _tr.sinkhorn_mask(scores, n, m)


def _pool(x: jax.Array, axes: tuple[int, ...], reduce: str,
          valid: jax.Array | None = None) -> jax.Array:
    """Pool ``x`` over ``axes``; with ``valid``, only over the valid entries (partial tiles)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if valid is None:
        if reduce == "mean":
            return jnp.mean(x, axis=axes)
        if reduce == "sum":
            return jnp.sum(x, axis=axes)
        if reduce == "max":
            return jnp.max(x, axis=axes)
        if reduce == "l2":
            return jnp.sqrt(jnp.sum(x * x, axis=axes))
        raise ValueError(must_be("reduce", f"one of {REDUCES}", reduce))
    zero = jnp.zeros((), x.dtype)
    if reduce == "mean":
        count = jnp.sum(valid, axis=axes, dtype=x.dtype)
        return jnp.sum(jnp.where(valid, x, zero), axis=axes) / count
    if reduce == "sum":
        return jnp.sum(jnp.where(valid, x, zero), axis=axes)
    if reduce == "max":
        return jnp.max(jnp.where(valid, x, jnp.asarray(-jnp.inf, x.dtype)), axis=axes)
    if reduce == "l2":
        return jnp.sqrt(jnp.sum(jnp.where(valid, x * x, zero), axis=axes))
    raise ValueError(must_be("reduce", f"one of {REDUCES}", reduce))


_SLICE_POOL_MAX = 64


def _fold_tile_slices(x: jax.Array, full: tuple[int, ...], fold) -> jax.Array:
    """``fold`` over the strided slices ``x[i0::b0, i1::b1, ...]`` of every tile offset: leading
    offsets first (row-major), then the last offset, each a left fold in index order."""
    split = x.reshape([v for d, b in zip(x.shape, full) for v in (d // b, b)])

    def at(offsets):
        return split[tuple(v for o in offsets for v in (slice(None), o))]

    leads = list(np.ndindex(*full[:-1]))
    per_last = []
    for j in range(full[-1]):
        acc = at((*leads[0], j))
        for offsets in leads[1:]:
            acc = fold(acc, at((*offsets, j)))
        per_last.append(acc)
    out = per_last[0]
    for part in per_last[1:]:
        out = fold(out, part)
    return out


def _tile_pool(scores: jax.Array, full: tuple[int, ...], reduce: str) -> jax.Array:
    """Pool every ``full``-shaped tile of ``scores`` (whole tiles only), as `_pool` over the tile axes.

    The tile axes are reduced in two steps, the leading ones first, then the last, each a left
    fold in index order. Small tiles (at most ``_SLICE_POOL_MAX`` entries) are pooled as one
    elementwise fold over the tile's strided slices ``x[i0::b0, i1::b1, ...]``: one fused pass
    writing only the pooled array (a reduction writes a full-width intermediate first, a fresh
    allocation that page-faults on every call once it passes 32 MB). Larger tiles use reductions,
    over the leading tile axes (vectorized row arithmetic), then over the last on an array
    ``prod(full[:-1])`` times smaller.
    """
    dtype = jnp.promote_types(scores.dtype, jnp.float32)

    def prepare(x):
        x = x.astype(dtype)
        return x * x if reduce == "l2" else x

    if math.prod(full) <= _SLICE_POOL_MAX:
        fold = jnp.maximum if reduce == "max" else jnp.add
        # in up to 16 groups of tile rows, through a loop: its stacked output is a materialized
        # array, which the mask write cannot fuse (and recompute) the pooling into
        n0 = scores.shape[0] // full[0]
        groups = max(g for g in range(1, 17) if n0 % g == 0)
        parts = scores.reshape(groups, scores.shape[0] // groups, *scores.shape[1:])
        x = lax.map(lambda part: _fold_tile_slices(prepare(part), full, fold), parts)
        x = x.reshape(n0, *x.shape[2:])
    else:
        x = prepare(scores)
        op = jnp.max if reduce == "max" else jnp.sum
        lead = [v for d, b in zip(x.shape[:-1], full[:-1]) for v in (d // b, b)]
        x = op(x.reshape(*lead, x.shape[-1]), axis=tuple(range(1, len(lead), 2)))
        x = op(x.reshape(*x.shape[:-1], -1, full[-1]), axis=-1)
    if reduce == "mean":
        return x / math.prod(full)
    return jnp.sqrt(x) if reduce == "l2" else x


def block(
    scores: Float[Array, "*shape"],
    block_shape: tuple[int, ...],
    sparsity: float | Float[Array, ""],
    reduce: Reduce = "mean",
) -> Bool[Array, "*shape"]:
    """Block mask: whole tiles kept or dropped, tiles ranked by a pooled score.

    Which axes are tiled: the *trailing* ``len(block_shape)`` dimensions of ``scores`` (a 2-D
    ``block_shape=(bm, bn)`` on a ``[kh, kw, in, out]`` conv kernel tiles ``in`` and ``out``);
    leading dimensions are tiled with size 1. Tiles start at index 0 on every axis. A dimension
    not divisible by its block size ends in a *partial edge tile*, which is pooled over the
    entries it has (as jaxpruner does) and counts as one tile like the others.

    Args:
        scores: float array.
        block_shape: tile shape, ``1 <= len(block_shape) <= scores.ndim``, entries ``>= 1``.
        sparsity: fraction of *tiles* dropped; exactly ``max(1, round(n_tiles * (1 - sparsity)))``
            tiles are kept (ties by lower tile index), ``n_tiles`` counting partial ones.
        reduce: how a tile's scores are pooled: ``"mean"``, ``"sum"``, ``"max"`` or ``"l2"``.

    Returns:
        bool mask of ``scores.shape``, constant on every tile.
    """
    scores = check_float_array(scores, "scores")
    check_sparsity(sparsity)
    block_shape = check_block_shape(block_shape)
    if not 1 <= len(block_shape) <= scores.ndim:
        raise ValueError(must_be("block_shape", f"a tuple of 1 to {scores.ndim} ints for scores "
                                 f"of shape {scores.shape}", block_shape))
    full = (1,) * (scores.ndim - len(block_shape)) + block_shape
    check_choice(reduce, "reduce", REDUCES)
    if scores.size == 0:
        return jnp.zeros(scores.shape, bool)
    return _block(scores, jnp.asarray(sparsity, jnp.float32), full, reduce)


@partial(jax.jit, static_argnums=(2, 3))
def _block(scores: jax.Array, sparsity: jax.Array, full: tuple[int, ...], reduce: str) -> jax.Array:
    n_tiles = [-(-d // b) for d, b in zip(scores.shape, full)]
    pad = [(0, n * b - d) for d, b, n in zip(scores.shape, full, n_tiles)]
    partial_tiles = any(hi for _, hi in pad)
    split = [v for n, b in zip(n_tiles, full) for v in (n, b)]
    padded = jnp.pad(scores, pad) if partial_tiles else scores
    valid = None
    if partial_tiles:
        valid = jnp.pad(jnp.ones(scores.shape, bool), pad).reshape(split)
    if partial_tiles:
        tiles = _pool(padded.reshape(split), tuple(range(1, 2 * scores.ndim, 2)), reduce, valid)
    else:
        tiles = _tile_pool(scores, full, reduce)
    keep = _unstructured(tiles, sparsity, None)
    # broadcast each tile's decision over its block (one write of the full mask, no repeats)
    expanded = keep.reshape([v for n in n_tiles for v in (n, 1)])
    mask = jnp.broadcast_to(expanded, split).reshape([n * b for n, b in zip(n_tiles, full)])
    return mask[tuple(slice(0, d) for d in scores.shape)]


def channel(
    scores: Float[Array, "*shape"],
    sparsity: float | Float[Array, ""],
    axis: int = -1,
    reduce: Reduce = "mean",
) -> Bool[Array, "*shape"]:
    """Channel mask: whole slices along ``axis`` kept or dropped (structured pruning).

    Each channel (index along ``axis``) is scored by pooling over all other axes; exactly
    ``max(1, round(n_channels * (1 - sparsity)))`` channels are kept. For a Flax ``[in, out]``
    kernel, ``axis=-1`` prunes output units and ``axis=0`` input features.

    Args:
        scores: float array.
        sparsity: fraction of channels dropped.
        axis: the channel axis.
        reduce: pooling over the other axes: ``"mean"``, ``"sum"``, ``"max"`` or ``"l2"``.

    Returns:
        bool mask of ``scores.shape``, constant along every axis but ``axis``.
    """
    scores = check_float_array(scores, "scores")
    check_sparsity(sparsity)
    axis = normalize_axis(axis, scores.ndim)
    check_choice(reduce, "reduce", REDUCES)
    return _channel(scores, jnp.asarray(sparsity, jnp.float32), axis, reduce)


@partial(jax.jit, static_argnums=(2, 3))
def _channel(scores: jax.Array, sparsity: jax.Array, axis: int, reduce: str) -> jax.Array:
    others = tuple(i for i in range(scores.ndim) if i != axis)
    keep = _unstructured(_pool(scores, others, reduce), sparsity, None)
    shape = [1] * scores.ndim
    shape[axis] = scores.shape[axis]
    return jnp.broadcast_to(keep.reshape(shape), scores.shape)


def satisfies_nm(x: Array, n: int, m: int, axis: int | None = None) -> Bool[Array, ""]:
    """Whether every group of ``m`` consecutive entries along ``axis`` has at most ``n`` nonzeros.

    Works on masks (``True`` counts as nonzero) and on weights (the hardware 2:4 check). ``axis``
    is required, with the convention of `nm`.

    Returns:
        bool scalar; ``False`` too when ``x.shape[axis]`` is not divisible by ``m``.
    """
    m = check_int(m, "m", minimum=1)
    n = check_int(n, "n", minimum=0)
    axis = check_nm_axis(axis, jnp.ndim(x))
    if x.shape[axis] % m:
        return jnp.asarray(False)
    moved = jnp.moveaxis(x != 0, axis, -1)
    counts = jnp.sum(moved.reshape(*moved.shape[:-1], -1, m), axis=-1)
    return jnp.all(counts <= n)

"""Allocation: how a global sparsity budget is split across the leaves of any pytree.

Each function returns a tree mirroring ``params`` with a per-leaf sparsity (a Python float, or a
float32 scalar when the target is traced) for selected leaves and ``None`` elsewhere. Leaves are
selected by ``where`` (see `sparsejax.tree`; default: float arrays with ``ndim >= 2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import tree_map_with_path
from jaxtyping import Array, Bool, Float

from sparsejax import masks as _masks
from sparsejax._checks import check_choice, check_sparsity, is_concrete, must_be
from sparsejax.select import select

__all__ = ["er", "erk", "global_keep", "global_topk", "uniform"]


def _chosen_leaves(params, where):
    chosen = select(where, tree=params)
    flat, treedef = jax.tree.flatten_with_path(params, is_leaf=lambda x: x is None)
    picked = [chosen(p, x) if x is not None else False for p, x in flat]
    return flat, treedef, picked


def uniform(params: Any, sparsity: float, *, where: Any = None) -> Any:
    """The same ``sparsity`` for every selected leaf."""
    check_sparsity(sparsity)
    chosen = select(where, tree=params)
    return tree_map_with_path(lambda p, x: sparsity if x is not None and chosen(p, x) else None,
                              params, is_leaf=lambda x: x is None)


ROUNDINGS = ("exact", "rigl")


def _erdos_renyi(params, sparsity, raw_fn, where, rounding):
    check_sparsity(sparsity)
    check_choice(rounding, "rounding", ROUNDINGS)
    if not is_concrete(sparsity):
        raise TypeError(must_be("sparsity", "concrete for erk/er (the dense-layer resolution is a "
                                "host loop): compute the allocation outside jit and pass the "
                                "tree", "a traced value", raw=True))
    sparsity = float(sparsity)
    flat, treedef, picked = _chosen_leaves(params, where)
    sizes = {i: int(np.prod(x.shape)) for i, ((_, x), c) in enumerate(zip(flat, picked)) if c}
    empty = {i for i, n in sizes.items() if n == 0}  # nothing to prune: dense, out of the solve
    sizes = {i: n for i, n in sizes.items() if n}
    raw = {i: raw_fn(flat[i][1].shape) for i in sizes}
    if rounding == "rigl":  # RigL / jaxpruner: each layer's zero count rounded down first
        zeros = {i: float(math.floor(sparsity * n)) for i, n in sizes.items()}
    else:
        zeros = {i: sparsity * n for i, n in sizes.items()}
    dense: set[int] = set()
    while True:
        # kept budget: the non-dense layers keep n_l - z_l minus what dense layers add (their z_l)
        rhs = (sum(sizes[i] - zeros[i] for i in sizes if i not in dense)
               - sum(zeros[i] for i in dense))
        divisor = sum(raw[i] * sizes[i] for i in sizes if i not in dense)
        eps = rhs / divisor if divisor > 0 else 0.0
        over = [i for i in sizes if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        top = max(raw[i] for i in over)
        dense |= {i for i in sizes if i not in dense and raw[i] == top}
    out = []
    for i in range(len(flat)):
        if i in empty or i in dense:
            out.append(0.0)
        elif i not in sizes:
            out.append(None)
        else:
            out.append(float(min(max(1.0 - eps * raw[i], 0.0), 1.0)))
    return jax.tree.unflatten(treedef, out)


def erk(params: Any, sparsity: float, *, power: float = 1.0, where: Any = None,
        rounding: str = "exact") -> Any:
    """Erdos-Renyi-Kernel allocation (RigL's ``get_sparsities_erdos_renyi``).

    Each selected leaf gets density ``eps * raw_l`` with ``raw_l = (sum(shape) / prod(shape))**power``
    and ``eps`` chosen so the total kept count equals the budget. A leaf whose ``eps * raw_l`` would
    exceed 1 is made dense (the leaves with the largest ``raw_l`` first) and ``eps`` is solved
    again, until every leaf fits. Empty (zero-size) leaves get sparsity ``0.0`` and take no part.

    Rounding (the budget the solve distributes):

    * ``"exact"`` (default): the fractional budget ``(1 - sparsity) * sum_l n_l``, so the realised
      global sparsity is ``sparsity`` up to each leaf's own rounding of its kept count;
    * ``"rigl"``: as RigL and jaxpruner, each layer's zero count is first rounded down,
      ``z_l = floor(sparsity * n_l)``, and the solve keeps ``sum_l (n_l - z_l)``; use it to
      reproduce published RigL/jaxpruner runs exactly (on small layers at 0.8 the per-layer
      sparsities differ from ``"exact"`` by up to a few hundredths).

    Args:
        params: any pytree.
        sparsity: global target in ``[0, 1]`` (concrete).
        power: exponent on the raw ratio (RigL's ``erk_power_scale``).
        where: leaf selector.
        rounding: ``"exact"`` or ``"rigl"``.

    Returns:
        tree of per-leaf sparsities (``None`` for unselected leaves).
    """
    return _erdos_renyi(params, sparsity,
                        lambda shape: (sum(shape) / float(np.prod(shape))) ** power, where,
                        rounding)


def er(params: Any, sparsity: float, *, where: Any = None, rounding: str = "exact") -> Any:
    """Erdos-Renyi allocation: like `erk` with ``raw_l = (n_in + n_out) / (n_in * n_out)``
    from the last two dimensions only (RigL's ER for kernels), resolved and rounded the same
    way (``rounding="exact"`` default, ``"rigl"`` as RigL)."""

    def raw(shape):
        n_in, n_out = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, shape[-1])
        return (n_in + n_out) / float(n_in * n_out)

    return _erdos_renyi(params, sparsity, raw, where, rounding)


def global_topk(params: Any, sparsity: float, *, scores: Any = None, where: Any = None) -> Any:
    """Per-leaf sparsities realised by one top-k over all selected leaves' scores together.

    Exactly ``max(1, round(N * (1 - sparsity)))`` entries are kept over the ``N`` selected entries;
    each leaf's sparsity is then ``1 - kept_l / n_l``. To get the masks themselves use
    ``compute_masks(..., allocation="global")``, which applies the same top-k directly.

    Args:
        params: any pytree.
        sparsity: global target in ``[0, 1]`` (may be traced).
        scores: a tree of scores mirroring ``params``; default ``|params|``.
        where: leaf selector.

    Returns:
        tree of per-leaf float32 sparsities (``None`` for unselected leaves).
    """
    check_sparsity(sparsity)
    flat, treedef, picked = _chosen_leaves(params, where)
    if scores is None:
        score_leaves = [jnp.abs(x) if c else None for (_, x), c in zip(flat, picked)]
    else:
        score_leaves = jax.tree.leaves(scores, is_leaf=lambda x: x is None)
        if len(score_leaves) != len(flat):
            raise ValueError(must_be("scores", f"a tree mirroring params ({len(flat)} leaves)",
                                     f"{len(score_leaves)} leaves", raw=True))
    arrays = [s for s, c in zip(score_leaves, picked) if c]
    if not arrays:
        return jax.tree.unflatten(treedef, [None] * len(flat))
    keeps = iter(global_keep(arrays, sparsity))
    out = []
    for (_, x), c in zip(flat, picked):
        if not c:
            out.append(None)
            continue
        kept = jnp.sum(next(keeps), dtype=jnp.int32)
        out.append(1.0 - kept.astype(jnp.float32) / max(x.size, 1))
    return jax.tree.unflatten(treedef, out)


# 8-bit digits: four passes over a score's 32 bits, but each histogram is 256 int32 (1 KiB), so
# the all-reduce a pass costs on sharded leaves is negligible (16-bit digits: 256 KiB per leaf).
_DIGIT_BITS = 8
_NBINS = 1 << _DIGIT_BITS


def _histogram(digits: jax.Array, valid: jax.Array) -> jax.Array:
    """Counts of each digit value among the ``valid`` entries (any shape, no reshape:
    a scatter-add that SPMD partitions into one local histogram per shard plus an all-reduce)."""
    index = jnp.where(valid, digits, _NBINS)
    return jnp.zeros(_NBINS + 1, jnp.int32).at[index].add(1, mode="drop")[:_NBINS]


def _select_digit(hist: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The digit value holding the ``need``-th largest counted entry, and how many entries with
    that digit are still needed."""
    at_or_above = jnp.cumsum(hist[::-1])[::-1]  # [d] = #{entries with digit >= d}
    d = jnp.maximum(jnp.sum(at_or_above >= need) - 1, 0).astype(jnp.int32)
    return d, need - (at_or_above[d] - hist[d])


def _flat_position(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every entry, uint32, built elementwise (shards like the leaf)."""
    pos = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        pos = pos + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return pos


def _radix_passes(keys: list[jax.Array], valid: list[jax.Array], need: jax.Array,
                  nbits: int, shared: bool):
    """Radix select over uint keys, 8-bit digits from the top: the ``need``-th largest key.

    ``shared``: one histogram summed over all leaves (a global selection); otherwise each leaf
    selects on its own (``need`` and the results are then per-leaf lists). Returns the threshold
    key(s), the count still needed at the threshold and the ``valid`` masks narrowed to the
    entries equal to the threshold.
    """
    n = len(keys)
    threshold = [jnp.zeros((), keys[i].dtype) for i in range(n)]
    for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
        digits = [((k >> shift) & (_NBINS - 1)).astype(jnp.int32) for k in keys]
        hists = [_histogram(d, v) for d, v in zip(digits, valid)]
        if shared:
            d, need = _select_digit(sum(hists[1:], hists[0]), need)
            picks = [d] * n
        else:
            picks, need = map(list, zip(*(_select_digit(h, k) for h, k in zip(hists, need))))
        threshold = [t | (p.astype(t.dtype) << shift) for t, p in zip(threshold, picks)]
        valid = [v & (dg == p) for v, dg, p in zip(valid, digits, picks)]
    return threshold, need, valid


def global_keep(arrays: Sequence[Float[Array, "..."]], sparsity: float | Float[Array, ""]
                ) -> list[Bool[Array, "..."]]:
    """Masks of one top-k over several score arrays together, never concatenating them.

    Keeps exactly ``kept_count(N, sparsity)`` of the ``N`` entries: the same masks as
    `sparsejax.masks.unstructured` on the float32 concatenation of the flattened arrays (ties by
    lower concatenated index, NaN lowest). The selection is a radix select whose histograms
    (256 int32 bins, 8-bit digits) are summed over the arrays: four passes find the threshold
    score, four more per array rank the tied entries by position (only when some tied entries
    must be dropped). Every step is elementwise on an array or a
    histogram, so on arrays sharded across devices or processes each device works on its own
    shard and only the histograms are all-reduced; no device ever holds a whole array.

    Args:
        arrays: float score arrays of any shapes (each under ``2**32`` entries).
        sparsity: fraction of all entries dropped (may be traced).

    Returns:
        one bool mask per array, shaped (and, under ``jit``, sharded) like it.
    """
    sizes = [int(np.prod(a.shape)) for a in arrays]
    for i, n in enumerate(sizes):
        if n >= 1 << 32:
            raise ValueError(must_be(f"arrays[{i}]", "under 2**32 entries for a global top-k",
                                     f"{n} entries", raw=True))
    # one compiled program per set of shapes (eager calls would otherwise compile each of the
    # ~120 small ops of the passes on their own); the sparsity is an argument, not a constant
    return list(_global_keep(tuple(arrays), jnp.asarray(sparsity, jnp.float32)))


@jax.jit
def _global_keep(arrays: tuple, sparsity: jax.Array) -> tuple:
    sizes = [int(np.prod(a.shape)) for a in arrays]
    live = [i for i, n in enumerate(sizes) if n]
    out = [jnp.zeros(a.shape, bool) for a in arrays]
    if not live:
        return tuple(out)
    k = _masks.kept_count(sum(sizes), sparsity)
    keys = [_masks._order_keys(arrays[i].astype(jnp.float32)) for i in live]
    valid = [jnp.ones(key.shape, bool) for key in keys]
    threshold, need, tied = _radix_passes(keys, valid, jnp.maximum(k, 1), 32, shared=True)
    # the `need` tied entries kept are the first by concatenated position: leaf by leaf ...
    counts = jnp.stack([jnp.sum(t, dtype=jnp.int32) for t in tied])
    before = jnp.cumsum(counts) - counts
    need_leaf = jnp.clip(need - before, 0, counts)
    # ... and inside a leaf by flat position (the largest ~position is the lowest position)
    rev = [~_flat_position(key.shape) for key in keys]

    def rank_ties():
        cuts, _, _ = _radix_passes(rev, tied, [need_leaf[j] for j in range(len(live))], 32,
                                   shared=False)
        return cuts

    # usually every tied entry is kept (continuous scores tie rarely): skip the position passes
    no_cut = [jnp.zeros((), jnp.uint32) for _ in live]
    cuts = lax.cond(need >= jnp.sum(counts), lambda: no_cut, rank_ties)
    for j, i in enumerate(live):
        kept_ties = tied[j] & (rev[j] >= cuts[j]) & (need_leaf[j] > 0)
        out[i] = ((keys[j] > threshold[j]) | kept_ties) & (k > 0)
    return tuple(out)

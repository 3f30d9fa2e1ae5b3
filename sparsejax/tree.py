"""Mask trees: masks that mirror a params pytree.

A mask tree has the structure of the params tree: a bool array where the leaf is sparsified and
``None`` where it is left dense. Any pytree works: nested dicts, lists, NamedTuples, dataclasses,
Flax NNX ``State``, Equinox modules. Leaves are chosen by a ``where`` selector:

* ``None`` (default): float arrays with ``ndim >= 2`` (kernels, not biases or norms);
* a callable ``where(path, leaf) -> bool`` with ``path`` a ``jax.tree_util`` key path;
* a glob string (or a sequence of globs, any of which may match) tested with ``fnmatch`` against
  the leaf's slash path (``"dense_0/kernel"``, see `path_str`) and against
  ``jax.tree_util.keystr(path)`` (``"['dense_0']['kernel']"``). Only float arrays are ever selected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_map_with_path

from sparsejax import allocation as _allocation
from sparsejax import masks as _masks
from sparsejax._checks import check_sparsity
from sparsejax.select import Where, _is_none, path_str, select

__all__ = [
    "Sparsity",
    "apply_masks",
    "compute_masks",
    "nbytes",
    "path_str",
    "select",
    "sparsity",
    "summary",
]

PyTree = Any


def _check_same_structure(params: PyTree, other: PyTree, name: str) -> None:
    a = jax.tree.structure(params, is_leaf=_is_none)
    b = jax.tree.structure(other, is_leaf=_is_none)
    if a != b:
        raise ValueError(f"{name} must mirror the structure of params (a bool array or None per "
                         f"leaf); params has structure {a}, {name} has {b}")


PATTERNS = ("unstructured", "nm", "block", "channel")


def _pattern_fn(pattern: str | Callable, kwargs: dict) -> Callable:
    if callable(pattern):
        return lambda scores, s: pattern(scores, s, **kwargs)
    if pattern == "unstructured":
        return lambda scores, s: _masks.unstructured(scores, s, **kwargs)
    if pattern == "nm":
        missing = {"n", "m"} - set(kwargs)
        if missing:
            raise TypeError(f"pattern 'nm' needs keyword arguments n= and m=; missing {missing}")
        return lambda scores, s: _masks.nm(scores, **kwargs)
    if pattern == "block":
        if "block_shape" not in kwargs:
            raise TypeError("pattern 'block' needs the keyword argument block_shape=")
        return lambda scores, s: _masks.block(scores, sparsity=s, **kwargs)
    if pattern == "channel":
        return lambda scores, s: _masks.channel(scores, s, **kwargs)
    raise ValueError(f"pattern must be one of {PATTERNS} or a callable (scores, sparsity) -> mask, "
                     f"got {pattern!r}")


def _score_tree(params, scores, chosen, key):
    if isinstance(scores, str):
        if scores == "magnitude":
            return tree_map_with_path(
                lambda p, x: jnp.abs(x) if chosen(p, x) else None, params, is_leaf=_is_none)
        if scores == "random":
            if key is None:
                raise ValueError("scores='random' needs key= (a jax.random key)")
            leaves, treedef = jax.tree.flatten_with_path(params, is_leaf=_is_none)
            keys = jax.random.split(key, max(len(leaves), 1))
            out = [jax.random.uniform(k, x.shape) if chosen(p, x) else None
                   for k, (p, x) in zip(keys, leaves)]
            return jax.tree.unflatten(treedef, out)
        raise ValueError(f"scores must be 'magnitude', 'random', a score tree mirroring params or a "
                         f"callable (path, leaf) -> scores, got {scores!r}")
    if callable(scores):
        return tree_map_with_path(lambda p, x: scores(p, x) if chosen(p, x) else None, params,
                                  is_leaf=_is_none)
    _check_same_structure(params, scores, "scores")
    return scores


def compute_masks(
    params: PyTree,
    pattern: str | Callable = "unstructured",
    *,
    sparsity: float | PyTree | None = None,
    scores: str | PyTree | Callable = "magnitude",
    where: Where = None,
    allocation: str = "uniform",
    key: jax.Array | None = None,
    **pattern_kwargs: Any,
) -> PyTree:
    """Compute a mask tree for ``params``: pattern x score x allocation.

    Args:
        params: any pytree of arrays.
        pattern: ``"unstructured"`` (kwargs: ``axis``), ``"nm"`` (``n``, ``m``, ``axis``),
            ``"block"`` (``block_shape``, ``reduce``), ``"channel"`` (``axis``, ``reduce``), or a
            callable ``(scores, sparsity, **pattern_kwargs) -> bool mask``.
        sparsity: a scalar target (may be traced) split across the selected leaves by
            ``allocation``, or a tree of per-leaf sparsities mirroring ``params`` (``None`` where
            unselected), e.g. from `sparsejax.allocation.erk`. Ignored by ``"nm"``.
        scores: ``"magnitude"``, ``"random"`` (needs ``key``), a tree of score arrays mirroring
            ``params``, or a callable ``(path, leaf) -> scores``.
        where: leaf selector (see the module docstring).
        allocation: how a scalar ``sparsity`` is split: ``"uniform"``, ``"erk"``, ``"er"`` or
            ``"global"`` (one top-k over all selected leaves' scores together; unstructured only).
        key: PRNG key for ``scores="random"``.
        **pattern_kwargs: passed to the pattern function.

    Returns:
        Mask tree: a bool array (``True`` = kept) for each selected leaf, ``None`` elsewhere.

    Raises:
        ValueError: bad ``pattern``/``allocation``/``scores``, sparsity outside ``[0, 1]``,
            a ``sparsity`` or ``scores`` tree that does not mirror ``params``.
    """
    chosen = select(where)
    fn = _pattern_fn(pattern, pattern_kwargs)
    score_tree = _score_tree(params, scores, chosen, key)
    if sparsity is None:
        if pattern != "nm":
            raise ValueError(f"sparsity= is required for pattern {pattern!r}")
        sparsity = 0.0
    scalar = isinstance(sparsity, int | float | np.number | np.ndarray | jax.Array)
    if scalar:
        check_sparsity(sparsity)
        if allocation == "global":
            if pattern != "unstructured":
                raise ValueError(f"allocation='global' works with pattern='unstructured', got "
                                 f"{pattern!r}")
            return _global_masks(params, score_tree, sparsity)
        allocators = {"uniform": _allocation.uniform, "erk": _allocation.erk,
                      "er": _allocation.er}
        if allocation not in allocators:
            raise ValueError(f"allocation must be one of {[*allocators, 'global']}, got "
                             f"{allocation!r}")
        sparsity_tree = allocators[allocation](params, sparsity, where=chosen)
    else:
        sparsity_tree = sparsity
        _check_same_structure(params, sparsity_tree, "sparsity")

    def leaf_mask(path, x, s, sc):
        if s is None or sc is None or not chosen(path, x):
            return None
        if sc.shape != x.shape:
            raise ValueError(f"scores for {path_str(path)} must have shape {x.shape}, got "
                             f"{sc.shape}")
        try:
            return fn(sc, s)
        except (ValueError, TypeError) as err:
            raise type(err)(f"leaf {path_str(path)} (shape {x.shape}): {err}") from err

    return tree_map_with_path(leaf_mask, params, sparsity_tree, score_tree, is_leaf=_is_none)


def _global_masks(params, score_tree, sparsity):
    leaves, treedef = jax.tree.flatten(score_tree, is_leaf=_is_none)
    arrays = [x for x in leaves if x is not None]
    if not arrays:
        return jax.tree.unflatten(treedef, leaves)
    flat = jnp.concatenate([x.reshape(-1).astype(jnp.float32) for x in arrays])
    keep = _masks.unstructured(flat, sparsity)
    out, offset = [], 0
    for x in leaves:
        if x is None:
            out.append(None)
        else:
            out.append(keep[offset:offset + x.size].reshape(x.shape))
            offset += x.size
    return jax.tree.unflatten(treedef, out)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zero the masked-out entries: ``where(mask, leaf, 0)`` per leaf, leaves with ``None`` untouched.

    Args:
        params: any pytree of arrays (params, gradients, optimizer moments...).
        masks: a mask tree mirroring ``params``.

    Returns:
        A tree like ``params`` (same dtypes).

    Raises:
        ValueError: ``masks`` does not mirror ``params`` or a mask's shape differs from its leaf.
    """
    _check_same_structure(params, masks, "masks")

    def one(path, x, m):
        if m is None:
            return x
        if m.shape != x.shape:
            raise ValueError(f"mask for {path_str(path)} has shape {m.shape}, the leaf has "
                             f"{x.shape}")
        return jnp.where(m, x, jnp.zeros((), x.dtype))

    return tree_map_with_path(one, params, masks, is_leaf=_is_none)


class _Record:
    """An opaque pytree leaf carrying a value through ``jax.tree`` maps."""

    def __init__(self, value):
        self.value = value


class Sparsity(NamedTuple):
    """Result of `sparsity`: the overall fraction of zeros and a per-leaf tree."""

    overall: jax.Array
    per_leaf: PyTree


def sparsity(tree: PyTree) -> Sparsity:
    """Fraction of zero entries overall and per leaf.

    For a params tree this counts exact zeros; for a mask tree it counts ``False`` (dropped).
    ``None`` and non-array leaves are skipped (``None`` in ``per_leaf``).

    Returns:
        `Sparsity` with ``overall`` (float32 scalar) and ``per_leaf`` (a tree mirroring
        ``tree`` with float32 scalars or ``None``).
    """
    def zeros(x):
        if not isinstance(x, jax.Array | np.ndarray) or x.size == 0:
            return None
        return _Record((jnp.sum(x == 0, dtype=jnp.int32), x.size))

    counts = jax.tree.map(zeros, tree, is_leaf=_is_none)
    per_leaf = jax.tree.map(lambda c: None if c is None else c.value[0] / c.value[1], counts,
                            is_leaf=_is_none)
    pairs = [c.value for c in jax.tree.leaves(counts)]
    total = sum(c[1] for c in pairs)
    zero = sum((c[0].astype(jnp.float32) for c in pairs), jnp.float32(0))
    overall = zero / total if total else jnp.float32(0)
    return Sparsity(jnp.asarray(overall, jnp.float32), per_leaf)


def _detect_pattern(mask: np.ndarray) -> tuple[str, int | None]:
    """('n:m (axis a)', m) for the smallest group size with a constant kept count, else
    ('unstructured', None)."""
    if mask.all():
        return "dense", None
    for m in (2, 4, 8, 16):
        for axis in range(mask.ndim):
            if mask.shape[axis] % m:
                continue
            moved = np.moveaxis(mask, axis, -1)
            counts = moved.reshape(*moved.shape[:-1], -1, m).sum(-1)
            n = counts.flat[0]
            if n < m and (counts == n).all():
                return f"{n}:{m} (axis {axis})", m
    return "unstructured", None


def _leaf_nbytes(x, m) -> tuple[int, int]:
    item = np.dtype(x.dtype).itemsize
    dense = x.size * item
    if m is None:
        return dense, dense
    mk = np.asarray(m)
    kept = int(mk.sum())
    pattern, group = _detect_pattern(mk)
    if pattern == "dense":
        return dense, dense
    if group is not None:
        return dense, kept * (item + 1)
    return dense, kept * item + math.ceil(x.size / 8)


def nbytes(params: PyTree, masks: PyTree | None = None) -> tuple[int, int]:
    """``(dense_bytes, compressed_bytes)`` of the array leaves of ``params`` under ``masks``.

    The compressed size follows `summary`: N:M-masked leaves in the
    `sparsejax.formats.NMSparse` layout (kept values + one uint8 index each), other masked
    leaves as kept values + a one-bit-per-entry bitmap, unmasked leaves dense.
    """
    if masks is None:
        leaves = [(x, None) for x in jax.tree.leaves(params)]
    else:
        _check_same_structure(params, masks, "masks")
        leaves = [r.value for r in jax.tree.leaves(
            jax.tree.map(lambda x, m: _Record((x, m)), params, masks, is_leaf=_is_none))]
    dense = sparse = 0
    for x, m in leaves:
        if isinstance(x, jax.Array | np.ndarray):
            d, s = _leaf_nbytes(x, m)
            dense, sparse = dense + d, sparse + s
    return dense, sparse


def summary(params: PyTree, masks: PyTree | None = None, *, print_fn: Callable | None = print
            ) -> str:
    """Print (and return) a table of every array leaf: path, shape, dtype, pattern, density, bytes.

    ``dense B`` is the leaf's dense size. ``sparse B`` is its compressed size: for an N:M leaf the
    `sparsejax.formats.NMSparse` layout (kept values + one uint8 index each); for other
    masked leaves a bitmap layout (kept values + one bit per entry); unmasked leaves stay dense.

    Args:
        params: any pytree of arrays.
        masks: optional mask tree; without it, density counts nonzeros of ``params``.
        print_fn: where to print (``None`` to only return the string).

    Returns:
        the table as a string.
    """
    if masks is not None:
        _check_same_structure(params, masks, "masks")
        pairs = [r.value for r in jax.tree.leaves(
            tree_map_with_path(lambda p, x, m: _Record((p, x, m)), params, masks, is_leaf=_is_none))]
    else:
        pairs = [(p, x, None) for p, x in jax.tree.flatten_with_path(params)[0]]
    rows = []
    totals = [0, 0, 0, 0]
    for path, x, m in pairs:
        if not isinstance(x, jax.Array | np.ndarray):
            continue
        size = x.size
        if m is None:
            kept = int(np.count_nonzero(np.asarray(x))) if masks is None else size
            pattern = "dense" if masks is not None else "-"
        else:
            kept = int(np.asarray(m).sum())
            pattern = _detect_pattern(np.asarray(m))[0]
        dense_b, sparse_b = _leaf_nbytes(x, m)
        rows.append((path_str(path), str(tuple(x.shape)), str(x.dtype), pattern,
                     f"{kept / max(size, 1):.3f}", str(dense_b), str(sparse_b)))
        totals = [totals[0] + kept, totals[1] + size, totals[2] + dense_b, totals[3] + sparse_b]
    header = ("path", "shape", "dtype", "pattern", "density", "dense B", "sparse B")
    rows.append(("total", "", "", "", f"{totals[0] / max(totals[1], 1):.3f}", str(totals[2]),
                 str(totals[3])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows[:-1]]
    lines += ["  ".join("-" * w for w in widths), fmt.format(*rows[-1])]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text

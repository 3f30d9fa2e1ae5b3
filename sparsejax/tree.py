"""Mask trees: masks that mirror a params pytree.

A mask tree has the structure of the params tree: a bool array where the leaf is sparsified and
``None`` where it is left dense. Any pytree works: nested dicts, lists, NamedTuples, dataclasses,
Flax NNX ``State``, Equinox modules. Leaves are chosen by a ``where`` selector (see
`sparsejax.select`): by default float kernels (``ndim >= 2``) except embedding tables.

`compute_masks` composes the four orthogonal pieces, each given by name or as a function:

* **pattern** ``(scores, sparsity, **kwargs) -> bool mask`` shaped like ``scores``: the names
  ``"unstructured"``, ``"nm"``, ``"block"``, ``"channel"`` or the functions `sparsejax.masks.unstructured`,
  `~sparsejax.masks.nm`, `~sparsejax.masks.block`, `~sparsejax.masks.channel` (each called with its
  own signature), or any callable with that signature;
* **score** ``(path, leaf) -> float array`` shaped like the leaf (higher = kept first): the names
  ``"magnitude"``, ``"random"``, the functions of `sparsejax.scores` (called as ``fn(leaf,
  **score_kwargs)``; ``scores.random`` as ``fn(key, leaf)``), any such callable, or a precomputed
  tree of scores mirroring ``params``;
* **allocation** ``(params, sparsity, *, where) -> tree of per-leaf sparsities`` mirroring
  ``params`` (``None`` where unselected): the names ``"uniform"``, ``"erk"``, ``"er"``,
  ``"global"`` or the functions of `sparsejax.allocation` (``functools.partial`` them for options
  such as ``rounding="rigl"``);
* **schedule**: the caller's, see `sparsejax.schedules`; pass its value as ``sparsity``.

Per-leaf control: ``sparsity`` and every pattern keyword argument may be a *per-leaf rule*: a
callable ``(path, leaf) -> value`` or a mapping ``{glob: value}`` (the first glob matching the
leaf's path wins; a selected leaf no glob matches is an error, add ``"*"`` for a default). A
sparsity rule returning ``None`` leaves that leaf dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from sparsejax import allocation as _allocation
from sparsejax import masks as _masks
from sparsejax import scores as _scores
from sparsejax._checks import (
    _is_none,
    check_mask_tree,
    check_same_structure,
    check_sparsity,
    must_be,
)
from sparsejax.select import Where, matches, path_str, select

__all__ = [
    "PATTERNS",
    "Sparsity",
    "apply_masks",
    "compute_masks",
    "nbytes",
    "path_str",
    "pattern_mask",
    "select",
    "sparsity",
    "summary",
]

PyTree = Any

#: Pattern names accepted by `compute_masks` and `pattern_mask`.
PATTERNS = ("unstructured", "nm", "block", "channel")
_PATTERN_FUNCTIONS = {_masks.unstructured: "unstructured", _masks.nm: "nm",
                      _masks.block: "block", _masks.channel: "channel"}
_ALLOCATIONS = {"uniform": _allocation.uniform, "erk": _allocation.erk, "er": _allocation.er}
_SCORE_FUNCTIONS = (_scores.magnitude, _scores.saliency, _scores.wanda)


def _pattern_name(pattern: Any) -> str | None:
    """The built-in pattern's name, ``None`` for a user callable; raises for anything else."""
    if isinstance(pattern, str):
        if pattern not in PATTERNS:
            raise ValueError(must_be("pattern", f"one of {PATTERNS} or a callable (scores, "
                                     "sparsity, **kwargs) -> bool mask", pattern))
        return pattern
    if callable(pattern):
        try:
            return _PATTERN_FUNCTIONS.get(pattern)
        except TypeError:  # unhashable callable
            return None
    raise TypeError(must_be("pattern", f"one of {PATTERNS} or a callable (scores, sparsity, "
                            "**kwargs) -> bool mask", pattern))


def pattern_mask(
    scores: Float[Array, "*shape"],
    pattern: str | Callable = "unstructured",
    sparsity: float | Float[Array, ""] | None = None,
    **pattern_kwargs: Any,
) -> Bool[Array, "*shape"]:
    """One leaf's mask: the pure per-leaf step of `compute_masks` (usable inside ``jit``).

    Dispatches a pattern name or function to its `sparsejax.masks` function:
    ``"unstructured"`` -> ``unstructured(scores, sparsity, axis=None)``,
    ``"nm"`` -> ``nm(scores, n, m, axis)`` (``sparsity`` must be ``None``),
    ``"block"`` -> ``block(scores, block_shape, sparsity, reduce="mean")``,
    ``"channel"`` -> ``channel(scores, sparsity, axis=-1, reduce="mean")``; any other callable is
    called as ``pattern(scores, sparsity, **pattern_kwargs)`` and must return a bool array shaped
    like ``scores``.

    Args:
        scores: float array ranking the entries (higher = kept first).
        pattern: a name in `PATTERNS`, a `sparsejax.masks` pattern function, or a callable.
        sparsity: the fraction dropped (may be traced); ``None`` only for ``"nm"`` and for
            user callables that take none.
        **pattern_kwargs: the pattern's own arguments (``n``, ``m``, ``axis``, ``block_shape``,
            ``reduce``).

    Returns:
        bool mask shaped like ``scores`` (``True`` = kept).
    """
    name = _pattern_name(pattern)
    if name == "nm":
        if sparsity is not None:
            raise ValueError(must_be("sparsity", "None for pattern 'nm' (it keeps n of every m "
                                     "entries: density n/m)", sparsity))
        missing = sorted({"n", "m"} - set(pattern_kwargs))
        if missing:
            raise TypeError(must_be("pattern_kwargs", "n= and m= for pattern 'nm' (n kept of "
                                    "every m)", f"no {' or '.join(missing)}", raw=True))
        if pattern_kwargs.get("axis") is None:
            raise ValueError(_NM_AXIS_MESSAGE)
        return _masks.nm(scores, **pattern_kwargs)
    if name is not None and sparsity is None:
        raise ValueError(must_be("sparsity", f"given for pattern {name!r} (a float in [0, 1], "
                                 "a per-leaf rule or a tree)", None))
    if name == "unstructured":
        return _masks.unstructured(scores, sparsity, **pattern_kwargs)
    if name == "block":
        if "block_shape" not in pattern_kwargs:
            raise TypeError(must_be("pattern_kwargs", "block_shape= for pattern 'block'",
                                    "no block_shape", raw=True))
        return _masks.block(scores, sparsity=sparsity, **pattern_kwargs)
    if name == "channel":
        return _masks.channel(scores, sparsity, **pattern_kwargs)
    out = pattern(scores, sparsity, **pattern_kwargs)
    dtype = getattr(out, "dtype", None)
    if dtype != jnp.bool_ or tuple(jnp.shape(out)) != tuple(scores.shape):
        raise TypeError(must_be("pattern", f"a callable returning a bool mask of shape "
                                f"{tuple(scores.shape)}", f"{getattr(pattern, '__name__', pattern)}"
                                f" returning {type(out).__name__} of dtype {dtype} and shape "
                                f"{tuple(jnp.shape(out))}", raw=True))
    return out


_NM_AXIS_MESSAGE = must_be(
    "axis", "given for pattern 'nm': the axis along which groups of m consecutive entries are "
    "formed, the reduction axis of the sparse operand (axis=0 for a Flax [in, out] kernel, -2 for "
    "a conv [kh, kw, in, out] kernel, 1 for a torch [out, in] weight), or a per-leaf rule "
    "{glob: axis} / (path, leaf) -> axis", None)


def _is_glob_map(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) for k in value)
            and not any(isinstance(v, Mapping) for v in value.values()))


def _is_rule(value: Any) -> bool:
    return callable(value) or _is_glob_map(value)


def _resolve(rule: Any, path: tuple, leaf: Any, name: str) -> Any:
    """A per-leaf rule's value for one leaf (a plain value is returned unchanged)."""
    if callable(rule):
        return rule(path, leaf)
    if _is_glob_map(rule):
        for glob, value in rule.items():
            if matches(path, glob):
                return value
        raise ValueError(must_be(name, "a per-leaf rule matching every selected leaf (add a "
                                 "'*' entry for a default)", f"no glob of {list(rule)} matching "
                                 f"{path_str(path)!r}", raw=True))
    return rule


def _score_leaves(flat, picked, scores, key, score_kwargs, params):
    """Scores for every picked leaf (``None`` elsewhere), aligned with ``flat``."""
    if scores is not _scores.random and scores != "random" and key is not None:
        raise ValueError(must_be("key", "None unless scores='random' (it is used for nothing "
                                 "else)", "a key", raw=True))
    is_score_fn = callable(scores) and any(scores is f for f in _SCORE_FUNCTIONS)
    if score_kwargs and not is_score_fn:
        raise ValueError(must_be("score_kwargs", "None unless scores is a sparsejax.scores "
                                 "function (magnitude, saliency, wanda)", score_kwargs))
    if isinstance(scores, str) or scores is _scores.random:
        if scores == "magnitude":
            return [_scores.magnitude(x) if c else None for (_, x), c in zip(flat, picked)]
        if scores == "random" or scores is _scores.random:
            if key is None:
                raise ValueError(must_be("key", "a jax.random key when scores='random'", None))
            keys = jax.random.split(key, max(len(flat), 1))
            return [_scores.random(k, x) if c else None
                    for k, (_, x), c in zip(keys, flat, picked)]
        raise ValueError(must_be("scores", "'magnitude', 'random', a sparsejax.scores function, "
                                 "a callable (path, leaf) -> scores or a tree of scores mirroring "
                                 "params", scores))
    if is_score_fn:
        kw = score_kwargs or {}
        return [scores(x, **{k: _resolve(v, p, x, k) for k, v in kw.items()}) if c else None
                for (p, x), c in zip(flat, picked)]
    if callable(scores):
        return [scores(p, x) if c else None for (p, x), c in zip(flat, picked)]
    check_same_structure(params, scores, "scores")
    return jax.tree.leaves(scores, is_leaf=_is_none)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | np.number | np.ndarray | jax.Array) and not isinstance(
        value, bool) and np.ndim(value) == 0


def _sparsity_leaves(params, flat, picked, sparsity, allocation, chosen):
    """Per-leaf sparsities aligned with ``flat`` (``None`` where unselected or left dense)."""
    if _is_scalar(sparsity) or isinstance(sparsity, bool):
        check_sparsity(sparsity)
        alloc = _ALLOCATIONS["uniform"] if allocation is None else allocation
        if isinstance(alloc, str):
            if alloc not in _ALLOCATIONS:
                raise ValueError(must_be("allocation", f"one of {(*_ALLOCATIONS, 'global')} or "
                                         "a callable (params, sparsity, *, where) -> tree",
                                         alloc))
            alloc = _ALLOCATIONS[alloc]
        if not callable(alloc):
            raise TypeError(must_be("allocation", f"one of {(*_ALLOCATIONS, 'global')} or a "
                                    "callable (params, sparsity, *, where) -> tree", alloc))
        tree = alloc(params, sparsity, where=chosen)
        check_same_structure(params, tree, "allocation's result")
        leaves = jax.tree.leaves(tree, is_leaf=_is_none)
    else:
        if allocation is not None:
            raise ValueError(must_be("allocation", "None when sparsity is per-leaf (a tree or "
                                     "a rule already says how much each leaf keeps)",
                                     allocation))
        if jax.tree.structure(sparsity, is_leaf=_is_none) == jax.tree.structure(
                params, is_leaf=_is_none):
            leaves = jax.tree.leaves(sparsity, is_leaf=_is_none)
        elif _is_rule(sparsity):
            leaves = [_resolve(sparsity, p, x, "sparsity") if c else None
                      for (p, x), c in zip(flat, picked)]
        else:
            check_same_structure(params, sparsity, "sparsity")
            raise AssertionError  # pragma: no cover
    for (p, _), s, c in zip(flat, leaves, picked):
        if c and s is not None:
            check_sparsity(s, f"sparsity for {path_str(p)!r}")
    return leaves


def compute_masks(
    params: PyTree,
    pattern: str | Callable = "unstructured",
    sparsity: float | Float[Array, ""] | PyTree | Callable | Mapping | None = None,
    *,
    scores: str | Callable | PyTree = "magnitude",
    allocation: str | Callable | None = None,
    where: Where = None,
    exclude: str | Sequence[str] | None = None,
    key: jax.Array | None = None,
    score_kwargs: Mapping[str, Any] | None = None,
    **pattern_kwargs: Any,
) -> PyTree:
    """Compute a mask tree for ``params``: pattern x score x allocation (see the module docstring).

    Pure and ``jit``-compatible: under ``jit`` ``sparsity`` (scalar, tree or rule values) may be
    traced; leaf selection depends only on paths, shapes and dtypes. A traced sparsity outside
    ``[0, 1]`` is clamped into it and a ``NaN`` one counts as ``0`` (nothing pruned); wrap the call
    with ``jax.experimental.checkify.checkify(..., errors=checkify.user_checks)`` to turn either
    into an error instead (a concrete out-of-range value always raises eagerly).

    Sparse-training code that computes its own scores (for example ``|w|`` to drop and ``|grad|``
    to grow, as RigL) passes them as a tree: ``compute_masks(params, sparsity=s_tree,
    scores=score_tree)``, or calls `pattern_mask` on one leaf.

    Args:
        params: any pytree of arrays (dicts, NNX ``State``, Equinox modules...).
        pattern: ``"unstructured"`` (kwargs: ``axis``), ``"nm"`` (``n``, ``m`` and a required
            ``axis``), ``"block"`` (``block_shape``, ``reduce``), ``"channel"`` (``axis``,
            ``reduce``), the `sparsejax.masks` function of the same name, or a callable
            ``(scores, sparsity, **pattern_kwargs) -> bool mask``.
        sparsity: fraction dropped. A scalar (may be traced) is split across the selected leaves
            by ``allocation``; a tree mirroring ``params`` (``None`` where dense, e.g. from
            `sparsejax.allocation.erk`) or a per-leaf rule (``(path, leaf) -> value`` or
            ``{glob: value}``) gives each leaf its own. Must be ``None`` for ``"nm"``.
        scores: ``"magnitude"`` (default), ``"random"`` (needs ``key``), a `sparsejax.scores`
            function (``magnitude``, ``saliency``, ``wanda``: called as ``fn(leaf,
            **score_kwargs)``; ``scores.random`` needs ``key``), a callable ``(path, leaf) ->
            scores``, or a precomputed tree of score arrays mirroring ``params``.
        allocation: how a scalar ``sparsity`` is split: ``"uniform"`` (default), ``"erk"``,
            ``"er"``, ``"global"`` (one top-k over all selected leaves together; unstructured
            only), a `sparsejax.allocation` function, or a callable ``(params, sparsity, *,
            where) -> tree of per-leaf sparsities``. Must be ``None`` for ``"nm"`` and for a
            per-leaf ``sparsity``.
        where: leaf selector (`sparsejax.select`); the default skips embedding tables.
        exclude: glob(s) of leaves never masked; each must match at least one leaf.
        key: PRNG key, for random scores only.
        score_kwargs: extra arguments of a `sparsejax.scores` function, each a value or a per-leaf
            rule (e.g. ``{"norms": {"l1/kernel": n1, "l2/kernel": n2}}`` for Wanda).
        **pattern_kwargs: the pattern's arguments, each a value or a per-leaf rule (e.g.
            ``axis={"*conv*": -2, "*": 0}``). A rule value of ``None`` uses the pattern's default.

    Returns:
        Mask tree: a bool array (``True`` = kept) for each selected leaf, ``None`` elsewhere.

    Raises:
        ValueError: a bad ``pattern``/``allocation``/``scores``; a sparsity outside ``[0, 1]``;
            a ``sparsity``/``scores`` tree that does not mirror ``params`` (the first differing
            path is named); ``where`` selecting no leaf or an ``exclude`` glob matching none;
            an argument the call would ignore (``sparsity``/``allocation`` with ``"nm"``,
            ``allocation`` with a per-leaf sparsity, ``key`` without random scores); ``"nm"``
            without ``axis``.
        TypeError: a missing pattern argument (``n``/``m``, ``block_shape``).
    """
    name = _pattern_name(pattern)
    if name == "nm":
        if sparsity is not None:
            raise ValueError(must_be("sparsity", "None for pattern 'nm' (it keeps n of every m "
                                     "entries: density n/m)", sparsity))
        if allocation is not None:
            raise ValueError(must_be("allocation", "None for pattern 'nm' (every leaf keeps n of "
                                     "every m)", allocation))
        if pattern_kwargs.get("axis") is None:
            raise ValueError(_NM_AXIS_MESSAGE)
    elif name is not None and sparsity is None:
        raise ValueError(must_be("sparsity", f"given for pattern {name!r} (a float in [0, 1], a "
                                 "per-leaf rule or a tree)", None))
    chosen = select(where, exclude=exclude, tree=params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    picked = [x is not None and chosen(p, x) for p, x in flat]
    _check_selection(flat, picked, where, exclude)
    score_leaves = _score_leaves(flat, picked, scores, key, score_kwargs, params)
    if allocation == "global" or allocation is _allocation.global_topk:
        if name != "unstructured" or pattern_kwargs:
            raise ValueError(must_be("allocation", "'global' only with pattern='unstructured' "
                                     "and no pattern arguments", f"allocation={allocation!r} with "
                                     f"pattern={pattern!r}, {pattern_kwargs}", raw=True))
        if not _is_scalar(sparsity):
            raise ValueError(must_be("sparsity", "a scalar with allocation='global'", sparsity))
        check_sparsity(sparsity)
        return jax.tree.unflatten(treedef, _global_masks(score_leaves, picked, sparsity))
    if name == "nm":
        sparsity_leaves = [None] * len(flat)
    else:
        sparsity_leaves = _sparsity_leaves(params, flat, picked, sparsity, allocation, chosen)

    out = []
    for (path, x), c, s, sc in zip(flat, picked, sparsity_leaves, score_leaves):
        if not c or sc is None or (s is None and name != "nm"):
            out.append(None)
            continue
        if tuple(sc.shape) != tuple(x.shape):
            raise ValueError(must_be(f"scores for {path_str(path)!r}", f"of shape "
                                     f"{tuple(x.shape)}", f"shape {tuple(sc.shape)}", raw=True))
        kwargs = {}
        for k, rule in pattern_kwargs.items():
            value = _resolve(rule, path, x, k)
            if value is not None:
                kwargs[k] = value
        if name == "nm" and kwargs.get("axis") is None:
            raise ValueError(f"leaf {path_str(path)} (shape {x.shape}): {_NM_AXIS_MESSAGE}")
        try:
            out.append(pattern_mask(sc, pattern, s, **kwargs))
        except (ValueError, TypeError) as err:
            raise type(err)(f"leaf {path_str(path)} (shape {x.shape}): {err}") from err
    return jax.tree.unflatten(treedef, out)


def _check_selection(flat, picked, where, exclude):
    if not any(picked):
        floats = [path_str(p) for p, x in flat
                  if x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype,
                                                                              jnp.floating)]
        shown = ", ".join(repr(f) for f in floats[:8]) + (", ..." if len(floats) > 8 else "")
        raise ValueError(must_be("where", "a selector matching at least one float leaf of params "
                                 f"(float leaves: {shown or 'none'})",
                                 f"{where!r} with exclude={exclude!r}", raw=True))
    if exclude is not None:
        globs = [exclude] if isinstance(exclude, str) else list(exclude)
        for glob in globs:
            if not any(matches(p, glob) for p, x in flat if x is not None):
                raise ValueError(must_be("exclude", "globs each matching at least one leaf",
                                         glob))


def _global_masks(score_leaves, picked, sparsity):
    arrays = [x for x, c in zip(score_leaves, picked) if c and x is not None]
    flat = jnp.concatenate([x.reshape(-1).astype(jnp.float32) for x in arrays])
    keep = _masks.unstructured(flat, sparsity)
    out, offset = [], 0
    for x, c in zip(score_leaves, picked):
        if not c or x is None:
            out.append(None)
        else:
            out.append(keep[offset:offset + x.size].reshape(x.shape))
            offset += x.size
    return out


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zero the masked-out entries: ``where(mask, leaf, 0)`` per leaf, leaves with ``None`` untouched.

    Args:
        params: any pytree of arrays (params, gradients, optimizer moments...).
        masks: a mask tree mirroring ``params``: a bool array or ``None`` per leaf.

    Returns:
        A tree like ``params`` (same dtypes).

    Raises:
        ValueError: ``masks`` does not mirror ``params`` (the first differing path is named) or a
            mask's shape differs from its leaf's.
        TypeError: a mask leaf is not a bool array (a float mask would be silently wrong).
    """
    check_same_structure(params, masks, "masks")
    check_mask_tree(masks)

    def one(path, x, m):
        if m is None:
            return x
        if m.shape != x.shape:
            raise ValueError(must_be(f"masks[{path_str(path)!r}]", f"of the leaf's shape "
                                     f"{tuple(x.shape)}", f"shape {tuple(m.shape)}", raw=True))
        return jnp.where(m, x, jnp.zeros((), x.dtype))

    return jax.tree_util.tree_map_with_path(one, params, masks, is_leaf=_is_none)


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
        check_same_structure(params, masks, "masks")
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
        check_same_structure(params, masks, "masks")
        pairs = [r.value for r in jax.tree.leaves(
            jax.tree_util.tree_map_with_path(lambda p, x, m: _Record((p, x, m)), params, masks,
                                             is_leaf=_is_none))]
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

"""Mask trees: masks that mirror a params pytree.

A mask tree has the structure of the params tree: a bool array where the leaf is sparsified and
``None`` where it is left dense. Any pytree works: nested dicts, lists, NamedTuples, dataclasses,
Flax NNX ``State``, Equinox modules. Leaves are chosen by a ``where`` selector (see
`sparsejax.select`): by default float kernels (``ndim >= 2``) except embedding tables.

`compute_masks` composes the four orthogonal pieces, each given by name or as a function:

* **pattern** ``(scores, sparsity, **kwargs) -> bool mask`` shaped like ``scores``: the names
  ``"unstructured"``, ``"nm"``, ``"block"``, ``"channel"`` or the functions `sparsejax.masks.unstructured`,
  `sparsejax.masks.nm`, `sparsejax.masks.block`, `sparsejax.masks.channel` (each called with its
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

PATTERNS = ("unstructured", "nm", "block", "channel")
"""Pattern names accepted by `compute_masks` and `pattern_mask`."""
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
    is_random = scores is _scores.random or (isinstance(scores, str) and scores == "random")
    if not is_random and key is not None:
        raise ValueError(must_be("key", "None unless scores='random' (it is used for nothing "
                                 "else)", "a key", raw=True))
    is_score_fn = callable(scores) and any(scores is f for f in _SCORE_FUNCTIONS)
    if score_kwargs and not is_score_fn:
        raise ValueError(must_be("score_kwargs", "None unless scores is a sparsejax.scores "
                                 "function (magnitude, saliency, wanda)", score_kwargs))
    if isinstance(scores, str) or scores is _scores.random:
        if scores == "magnitude":
            return [_scores.magnitude(x) if c else None for (_, x), c in zip(flat, picked)]
        if is_random:
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


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _is_float(x: Any) -> bool:
    return _is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)


def _is_bool(x: Any) -> bool:
    return _is_array(x) and x.dtype == jnp.bool_


def _is_key(x: Any) -> bool:
    return _is_array(x) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class Sparsity(NamedTuple):
    """Result of `sparsity`.

    Attributes:
        overall: fraction of zero (dropped) entries over the *selected* leaves: the masked leaves
            of a mask tree, or the leaves ``where`` selects in a params tree (by default the float
            kernels, not biases, norms, embeddings, counters or RNG keys). float32 scalar.
        per_leaf: flat ``{path: sparsity}`` for the selected leaves (paths as `path_str`).
        whole_model: fraction of zero (dropped) entries over *all* float leaves of the params,
            biases and embeddings included; ``None`` for a mask tree given alone (it does not know
            the sizes of the leaves it leaves dense: pass ``sparsity(params, masks)``).
    """

    overall: jax.Array
    per_leaf: dict[str, jax.Array]
    whole_model: jax.Array | None


def _ratio(zeros: list, sizes: list) -> jax.Array:
    total = sum(sizes)
    if not total:
        return jnp.float32(0)
    return sum((z.astype(jnp.float32) for z in zeros), jnp.float32(0)) / jnp.float32(total)


def sparsity(tree: PyTree, masks: PyTree | None = None, *, where: Where = None) -> Sparsity:
    """Fraction of zero entries: over the selected leaves, per leaf, and over the whole model.

    Three ways to call it, one meaning of ``overall`` (the selected float leaves):

    * ``sparsity(masks)`` with a mask tree: counts ``False`` (dropped) over the masked leaves;
    * ``sparsity(params, where=...)``: counts exact zeros over the leaves ``where`` selects
      (default: float kernels, as `compute_masks`);
    * ``sparsity(params, masks)``: counts dropped entries over the masked leaves, and fills
      ``whole_model`` with the dropped fraction of all float parameters.

    Non-float leaves (integer counters, Flax NNX RNG keys) are never counted. Works under ``jit``.

    Returns:
        `Sparsity` ``(overall, per_leaf, whole_model)``.

    Raises:
        ValueError: ``masks`` does not mirror ``tree``; ``where`` given with ``masks`` (it would
            be ignored) or selecting no leaf.
        TypeError: a mask leaf is not a bool array.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    floats = [(p, x) for p, x in flat if _is_float(x) and x.size]
    if masks is not None:
        if where is not None:
            raise ValueError(must_be("where", "None when masks are given (the masks say which "
                                     "leaves are selected)", where))
        check_same_structure(tree, masks, "masks")
        check_mask_tree(masks)
        pairs = zip(flat, jax.tree.leaves(masks, is_leaf=_is_none))
        picked = [(p, jnp.sum(~m, dtype=jnp.int32), m.size)
                  for (p, _), m in pairs if m is not None and m.size]
        whole = _ratio([z for _, z, _ in picked], [x.size for _, x in floats])
    elif flat and all(x is None or _is_bool(x) for _, x in flat) and any(
            _is_bool(x) for _, x in flat):
        if where is not None:
            raise ValueError(must_be("where", "None for a mask tree", where))
        picked = [(p, jnp.sum(~m, dtype=jnp.int32), m.size) for p, m in flat
                  if m is not None and m.size]
        whole = None
    else:
        chosen = select(where, tree=tree)
        picked = [(p, jnp.sum(x == 0, dtype=jnp.int32), x.size) for p, x in floats
                  if chosen(p, x)]
        if where is not None and not picked:
            raise ValueError(must_be("where", "a selector matching at least one float leaf",
                                     where))
        whole = _ratio([jnp.sum(x == 0, dtype=jnp.int32) for _, x in floats],
                       [x.size for _, x in floats])
    per_leaf = {path_str(p): z.astype(jnp.float32) / jnp.float32(n) for p, z, n in picked}
    overall = _ratio([z for _, z, _ in picked], [n for _, _, n in picked])
    return Sparsity(overall, per_leaf, whole)


def _runs(mask: np.ndarray) -> tuple[int, ...]:
    """Per axis, the largest run length ``b`` such that ``mask`` is constant on runs of ``b``
    starting at 0 (the gcd of the positions where it changes; the whole axis if it never does)."""
    out = []
    for ax in range(mask.ndim):
        d = mask.shape[ax]
        moved = np.moveaxis(mask, ax, 0).reshape(d, -1)
        pos = np.nonzero((moved[1:] != moved[:-1]).any(axis=1))[0] + 1
        out.append(int(np.gcd.reduce(pos)) if pos.size else d)
    return tuple(out)


def _nm_of(mask: np.ndarray) -> tuple[int, int, int] | None:
    for m in (2, 4, 8, 16):
        for axis in range(mask.ndim):
            if mask.shape[axis] % m:
                continue
            moved = np.moveaxis(mask, axis, -1)
            counts = moved.reshape(*moved.shape[:-1], -1, m).sum(-1)
            n = counts.flat[0]
            if n < m and (counts == n).all():
                return int(n), m, axis
    return None


def _detect_pattern(mask: np.ndarray) -> tuple[str, Any]:
    """``(kind, detail)``: ``("dense", None)``, ``("empty", None)``, ``("channel", axis)``,
    ``("nm", (n, m, axis))``, ``("block", tile_shape)`` or ``("unstructured", None)``."""
    if mask.size == 0 or mask.all():
        return "dense", None
    if not mask.any():
        return "empty", None
    runs = _runs(mask)
    changing = [ax for ax, (b, d) in enumerate(zip(runs, mask.shape)) if b < d]
    if mask.ndim >= 2 and len(changing) == 1:
        return "channel", changing[0]
    nm = _nm_of(mask)
    if nm is not None:
        return "nm", nm
    if math.prod(runs) > 1:
        return "block", runs
    return "unstructured", None


def _label(kind: str, detail: Any) -> str:
    if kind == "channel":
        return f"channel (axis {detail})"
    if kind == "nm":
        return f"{detail[0]}:{detail[1]} (axis {detail[2]})"
    if kind == "block":
        return f"block {tuple(detail)}"
    return kind


def _leaf_nbytes(x, m) -> tuple[int, int, str]:
    """``(dense_bytes, compressed_bytes, pattern label)`` of one leaf under its mask."""
    item = np.dtype(x.dtype).itemsize
    dense = x.size * item
    if m is None:
        return dense, dense, "dense"
    mk = np.asarray(m)
    kept = int(mk.sum())
    kind, detail = _detect_pattern(mk)
    if kind == "dense":
        return dense, dense, "dense"
    if kind == "empty":
        return dense, 0, "empty"
    if kind == "nm":  # NMSparse: kept values + one uint8 index each
        return dense, kept * (item + 1), _label(kind, detail)
    if kind == "channel":  # kept slices + one int32 index per kept channel
        others = tuple(i for i in range(mk.ndim) if i != detail)
        return dense, kept * item + 4 * int(mk.any(axis=others).sum()), _label(kind, detail)
    if kind == "block":  # BSR: kept values + int32 index per kept tile + int32 count per tile row
        origins = mk[tuple(slice(None, None, b) for b in detail)]
        rows = math.prod(origins.shape[:-1])
        return dense, kept * item + 4 * int(origins.sum()) + 4 * rows, _label(kind, detail)
    return dense, kept * item + math.ceil(x.size / 8), "unstructured"  # values + bitmap


def _pairs(params: PyTree, masks: PyTree | None) -> list[tuple[tuple, Any, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]
    if masks is None:
        return [(p, x, None) for p, x in flat]
    check_same_structure(params, masks, "masks")
    check_mask_tree(masks)
    return [(p, x, m) for (p, x), m in zip(flat, jax.tree.leaves(masks, is_leaf=_is_none))]


def nbytes(params: PyTree, masks: PyTree | None = None) -> tuple[int, int]:
    """``(dense_bytes, compressed_bytes)`` of the array leaves of ``params`` under ``masks``.

    The compressed size follows `summary`'s per-pattern layouts; unmasked leaves (and integer
    leaves) count dense; PRNG key leaves are skipped.
    """
    dense = sparse = 0
    for _, x, m in _pairs(params, masks):
        if _is_array(x) and not _is_key(x):
            d, s, _ = _leaf_nbytes(x, m)
            dense, sparse = dense + d, sparse + s
    return dense, sparse


def summary(params: PyTree, masks: PyTree | None = None, *, where: Where = None,
            print_fn: Callable | None = print) -> str:
    """Print (and return) a table of every float leaf: path, shape, dtype, pattern, density, bytes.

    Patterns are detected from each mask: ``dense``, ``channel (axis a)``, ``n:m (axis a)``,
    ``block (bm, bn)`` (the largest tile the mask is constant on), ``unstructured`` or ``empty``.
    ``dense B`` is the leaf's dense size; ``sparse B`` the size of its compressed form:

    * N:M: kept values + one uint8 index each (the `sparsejax.formats.NMSparse` layout);
    * channel: kept slices + one int32 index per kept channel;
    * block: kept values + one int32 index per kept tile + one int32 count per row of tiles (BSR);
    * unstructured: kept values + a one-bit-per-entry bitmap;
    * unmasked leaves stay dense.

    Two totals: ``selected`` (the masked leaves; without masks, the leaves ``where`` selects)
    is `sparsity`'s ``overall``; ``all float leaves`` is its ``whole_model``. Non-float leaves
    (integer counters, NNX RNG keys) are left out and counted in a footnote.

    Args:
        params: any pytree of arrays.
        masks: optional mask tree; without it, density counts nonzeros of ``params``.
        where: leaf selector for the ``selected`` total when ``masks`` is ``None``.
        print_fn: where to print (``None`` to only return the string).

    Returns:
        the table as a string.
    """
    if masks is not None and where is not None:
        raise ValueError(must_be("where", "None when masks are given", where))
    chosen = select(where, tree=params)
    rows, skipped = [], 0
    sel, tot = [0, 0, 0, 0], [0, 0, 0, 0]
    for path, x, m in _pairs(params, masks):
        if not _is_float(x):
            skipped += _is_array(x)
            continue
        size = x.size
        if m is None:
            kept = int(np.count_nonzero(np.asarray(x))) if masks is None else size
            pattern = "dense" if masks is not None else "-"
            dense_b = sparse_b = size * np.dtype(x.dtype).itemsize
        else:
            kept = int(np.asarray(m).sum())
            dense_b, sparse_b, pattern = _leaf_nbytes(x, m)
        rows.append((path_str(path), str(tuple(x.shape)), str(x.dtype), pattern,
                     f"{kept / max(size, 1):.3f}", str(dense_b), str(sparse_b)))
        counts = (kept, size, dense_b, sparse_b)
        tot = [a + b for a, b in zip(tot, counts)]
        if (m is not None) if masks is not None else chosen(path, x):
            sel = [a + b for a, b in zip(sel, counts)]
    header = ("path", "shape", "dtype", "pattern", "density", "dense B", "sparse B")
    totals = [("selected", "", "", "masked" if masks is not None else "where",
               f"{sel[0] / max(sel[1], 1):.3f}", str(sel[2]), str(sel[3])),
              ("all float leaves", "", "", "", f"{tot[0] / max(tot[1], 1):.3f}", str(tot[2]),
               str(tot[3]))]
    widths = [max(len(r[i]) for r in [header, *rows, *totals]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
    rule = "  ".join("-" * w for w in widths)
    lines = [fmt.format(*header), rule, *(fmt.format(*r) for r in rows), rule,
             *(fmt.format(*r) for r in totals)]
    if skipped:
        lines.append(f"({skipped} non-float leaves, e.g. integer counters or RNG keys, not shown)")
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text

"""Mask construction: `compute_masks` builds a mask tree that mirrors a params pytree.

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

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from sparsejax import allocation as _allocation
from sparsejax import masks as _masks
from sparsejax import scores as _scores
from sparsejax._checks import (
    _is_none,
    check_nm_axis,
    check_same_structure,
    check_sparsity,
    is_function,
    mirrors,
    must_be,
)
from sparsejax._registry import ALLOCATIONS, NM_PATTERNS, PATTERNS, SCORES
from sparsejax.select import Where, matches, path_str, select

__all__ = ["compute_masks", "pattern_mask"]

PyTree = Any

_PATTERN_NAMES = {fn: name for name, fn in PATTERNS.items()}
_SCORE_FUNCTIONS = tuple(fn for name, fn in SCORES.items() if name != "random")
_RULE_FORMS = (", or a per-leaf rule {glob: axis} / (path, leaf) -> axis")


def _pattern_name(pattern: Any) -> str | None:
    """The built-in pattern's name, ``None`` for a user callable; raises for anything else."""
    if isinstance(pattern, str):
        if pattern not in PATTERNS:
            raise ValueError(must_be("pattern", f"one of {tuple(PATTERNS)} or a callable (scores, "
                                     "sparsity, **kwargs) -> bool mask", pattern))
        return pattern
    if callable(pattern):
        try:
            return _PATTERN_NAMES.get(pattern)
        except TypeError:  # unhashable callable
            return None
    raise TypeError(must_be("pattern", f"one of {tuple(PATTERNS)} or a callable (scores, "
                            "sparsity, **kwargs) -> bool mask", pattern))


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
    ``"nm_transposable"`` -> ``nm_transposable(scores, n, m)`` (N:M along both of the last two
    axes; ``axis`` optional, ``sparsity`` must be ``None``),
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
    if name in NM_PATTERNS:
        if sparsity is not None:
            raise ValueError(must_be("sparsity", f"None for pattern {name!r} (it keeps n of every "
                                     "m entries: density n/m)", sparsity))
        missing = sorted({"n", "m"} - set(pattern_kwargs))
        if missing:
            raise TypeError(must_be("pattern_kwargs", f"n= and m= for pattern {name!r} (n kept "
                                    "of every m)", f"no {' or '.join(missing)}", raw=True))
        if name == "nm_transposable":
            return _masks.nm_transposable(scores, **pattern_kwargs)
        check_nm_axis(pattern_kwargs.get("axis"))
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


def _is_glob_map(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) for k in value)
            and not any(isinstance(v, Mapping) for v in value.values()))


def _is_rule_fn(value: Any) -> bool:
    """A ``(path, leaf) -> value`` rule: a callable that is not a pytree of arrays (an Equinox
    module is callable too, but it is a tree, never a rule)."""
    return is_function(value, None)


def _is_rule(value: Any) -> bool:
    return _is_rule_fn(value) or _is_glob_map(value)


def _resolve(rule: Any, path: tuple, leaf: Any, name: str) -> Any:
    """A per-leaf rule's value for one leaf (a plain value is returned unchanged)."""
    if _is_rule_fn(rule):
        return rule(path, leaf)
    if _is_glob_map(rule):
        for glob, value in rule.items():
            if matches(path, glob):
                return value
        raise ValueError(must_be(name, "a per-leaf rule matching every selected leaf (add a "
                                 "'*' entry for a default)", f"no glob of {list(rule)} matching "
                                 f"{path_str(path)!r}", raw=True))
    return rule


def _keywords(fn: Callable) -> set[str]:
    """The names of ``fn``'s arguments after the first (the weight)."""
    return set(list(inspect.signature(fn).parameters)[1:])


def _score_leaves(flat, picked, scores, key, score_kwargs, params):
    """Scores for every picked leaf (``None`` elsewhere), aligned with ``flat``.

    A tree of scores and a score function are told apart by structure (`mirrors`), never by
    ``callable()``: a tree of scores for an Equinox model is itself a callable module.
    """
    if isinstance(scores, str):
        if scores not in SCORES:
            raise ValueError(must_be("scores", f"one of {tuple(SCORES)}, a sparsejax.scores "
                                     "function, a callable (path, leaf) -> scores or a tree of "
                                     "scores mirroring params", scores))
        scores = SCORES[scores]
    is_random = scores is _scores.random
    if not is_random and key is not None:
        raise ValueError(must_be("key", "None unless scores='random' (it is used for nothing "
                                 "else)", "a key", raw=True))
    is_score_fn = any(scores is f for f in _SCORE_FUNCTIONS)
    if score_kwargs and not (is_score_fn and set(score_kwargs) <= _keywords(scores)):
        raise ValueError(must_be("score_kwargs", "None unless scores is a sparsejax.scores "
                                 "function taking them (saliency: grad; wanda: inputs, norms, "
                                 "axis)", score_kwargs))
    if is_random:
        if key is None:
            raise ValueError(must_be("key", "a jax.random key when scores='random'", None))
        keys = jax.random.split(key, max(len(flat), 1))
        return [_scores.random(k, x) if c else None for k, (_, x), c in zip(keys, flat, picked)]
    if is_score_fn:
        kw = score_kwargs or {}
        return [scores(x, **{k: _resolve(v, p, x, k) for k, v in kw.items()}) if c else None
                for (p, x), c in zip(flat, picked)]
    if is_function(scores, params):
        return [scores(p, x) if c else None for (p, x), c in zip(flat, picked)]
    check_same_structure(params, scores, "scores")
    return jax.tree.leaves(scores, is_leaf=_is_none)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | np.number | np.ndarray | jax.Array) and not isinstance(
        value, bool) and np.ndim(value) == 0


def _sparsity_leaves(params, flat, picked, sparsity, allocation, chosen):
    """Per-leaf sparsities aligned with ``flat`` (``None`` where unselected or left dense)."""
    if isinstance(sparsity, str | bytes):
        raise TypeError(must_be("sparsity", "a float in [0, 1] (may be traced), a tree mirroring "
                                "params or a per-leaf rule", sparsity))
    if _is_scalar(sparsity) or isinstance(sparsity, bool):
        check_sparsity(sparsity)
        alloc = ALLOCATIONS["uniform"] if allocation is None else allocation
        if isinstance(alloc, str):
            if alloc not in ALLOCATIONS:
                raise ValueError(must_be("allocation", f"one of {tuple(ALLOCATIONS)} or a "
                                         "callable (params, sparsity, *, where) -> tree", alloc))
            alloc = ALLOCATIONS[alloc]
        if not is_function(alloc, params):
            raise TypeError(must_be("allocation", f"one of {tuple(ALLOCATIONS)} or a "
                                    "callable (params, sparsity, *, where) -> tree", alloc))
        tree = alloc(params, sparsity, where=chosen)
        check_same_structure(params, tree, "allocation's result")
        leaves = jax.tree.leaves(tree, is_leaf=_is_none)
    else:
        if allocation is not None:
            raise ValueError(must_be("allocation", "None when sparsity is per-leaf (a tree or "
                                     "a rule already says how much each leaf keeps)",
                                     allocation))
        if mirrors(sparsity, params):
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
    if name in NM_PATTERNS:
        if sparsity is not None:
            raise ValueError(must_be("sparsity", f"None for pattern {name!r} (it keeps n of every "
                                     "m entries: density n/m)", sparsity))
        if allocation is not None:
            raise ValueError(must_be("allocation", f"None for pattern {name!r} (every leaf keeps "
                                     "n of every m)", allocation))
        if name == "nm":
            check_nm_axis(pattern_kwargs.get("axis"), extra=_RULE_FORMS)
    elif name is not None and sparsity is None:
        raise ValueError(must_be("sparsity", f"given for pattern {name!r} (a float in [0, 1], a "
                                 "per-leaf rule or a tree)", None))
    chosen = select(where, exclude=exclude, tree=params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    picked = [x is not None and chosen(p, x) for p, x in flat]
    _check_selection(flat, picked, where, exclude)
    score_leaves = _score_leaves(flat, picked, scores, key, score_kwargs, params)
    if (isinstance(allocation, str) and allocation == "global") or (
            allocation is ALLOCATIONS["global"]):
        if name != "unstructured" or pattern_kwargs:
            raise ValueError(must_be("allocation", "'global' only with pattern='unstructured' "
                                     "and no pattern arguments", f"allocation={allocation!r} with "
                                     f"pattern={pattern!r}, {pattern_kwargs}", raw=True))
        if not _is_scalar(sparsity):
            raise ValueError(must_be("sparsity", "a scalar with allocation='global'", sparsity))
        check_sparsity(sparsity)
        return jax.tree.unflatten(treedef, _global_masks(score_leaves, picked, sparsity))
    if name in NM_PATTERNS:
        sparsity_leaves = [None] * len(flat)
    else:
        sparsity_leaves = _sparsity_leaves(params, flat, picked, sparsity, allocation, chosen)

    out = []
    for (path, x), c, s, sc in zip(flat, picked, sparsity_leaves, score_leaves):
        if not c or sc is None or (s is None and name not in NM_PATTERNS):
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
        try:
            if name == "nm":
                check_nm_axis(kwargs.get("axis"), extra=_RULE_FORMS)
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
    live = [c and x is not None for x, c in zip(score_leaves, picked)]
    keeps = iter(_allocation.global_keep([x for x, c in zip(score_leaves, live) if c], sparsity))
    return [next(keeps) if c else None for c in live]

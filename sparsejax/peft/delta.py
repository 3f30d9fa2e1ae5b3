"""Sparse deltas over a frozen params tree: ``(indices, values)`` leaves, apply / merge / unmerge,
and the optax transform that trains only the delta's values.

A *delta tree* mirrors the params: a `SparseDelta` where a leaf is fine-tuned, ``None`` where it
is frozen. ``indices`` are flat (row-major) positions in the leaf, ``values`` the delta there, so
the fine-tuned leaf is ``w.ravel().at[indices].add(values)`` (AlanAnsell/peft ``tuners/sft``
``SparseDelta``, the ``peft`` library's SHiRA).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from sparsejax import masks as _masks
from sparsejax._checks import _is_none, check_float, check_same_structure, must_be
from sparsejax.select import path_str, select

PyTree = Any
__all__ = ["SparseDelta", "apply", "delta_from_masks", "delta_size", "dense", "is_delta",
           "merge", "sparse_delta", "train_delta", "unmerge"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseDelta:
    """The sparse delta of one leaf: ``values`` at the flat positions ``indices``.

    Attributes:
        indices: int32 ``(k,)`` distinct flat indices into the leaf (row-major).
        values: float ``(k,)`` delta at those positions (the trainable part).
        base: ``None``, or after `merge` the ``(k,)`` entries of the base that merging
            overwrote (what makes `unmerge` exact).
        shape: the leaf's shape (static).
    """

    indices: Int[Array, " k"]
    values: Float[Array, " k"]
    base: Float[Array, " k"] | None = None
    shape: tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))


def is_delta(x: Any) -> bool:
    """Whether ``x`` is a `SparseDelta` (the ``is_leaf`` of delta-tree maps)."""
    return isinstance(x, SparseDelta)


def _is_node(x: Any) -> bool:
    return x is None or isinstance(x, SparseDelta)


def delta_size(delta: PyTree) -> int:
    """Number of trainable entries of a delta tree (sum of every `SparseDelta`'s ``k``)."""
    return sum(int(d.values.size) for d in jax.tree.leaves(delta, is_leaf=is_delta)
               if is_delta(d))


def _from_mask(mask: jax.Array, dtype: Any) -> SparseDelta:
    k = int(jnp.sum(mask))
    idx = jnp.nonzero(jnp.ravel(mask), size=k)[0].astype(jnp.int32)
    return SparseDelta(idx, jnp.zeros((k,), dtype), None, tuple(mask.shape))


def delta_from_masks(params: PyTree, masks: PyTree) -> PyTree:
    """A zero delta tree whose support is the ``True`` entries of ``masks``.

    Args:
        params: the params tree (only the leaves' dtypes are read).
        masks: a tree mirroring ``params``: a bool array of the leaf's shape (the support) or
            ``None`` (leaf frozen).

    Returns:
        a delta tree: a `SparseDelta` (sorted indices, zero values in the leaf's dtype) where the
        mask is an array, ``None`` elsewhere.

    Raises:
        ValueError / TypeError: ``masks`` does not mirror ``params``, a mask is not a bool array
            of its leaf's shape.
    """
    check_same_structure(params, masks, "masks", "params")

    def one(path, m, p):
        if m is None:
            return None
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_ or m.shape != jnp.shape(p):
            raise ValueError(must_be(f"masks{jax.tree_util.keystr(path)}",
                                     f"a bool array of shape {tuple(jnp.shape(p))}",
                                     f"{m.dtype} array of shape {tuple(m.shape)}", raw=True))
        return _from_mask(m, jnp.result_type(p))

    return jax.tree_util.tree_map_with_path(one, masks, params, is_leaf=_is_none)


def sparse_delta(
    params: PyTree,
    density: float,
    *,
    where: Any = None,
    key: Any = None,
    scores: PyTree | None = None,
) -> PyTree:
    """A zero sparse delta over ``params`` with ``round(size * density)`` entries per selected leaf.

    The support is the top-``k`` of ``scores`` (a tree mirroring ``params``) or, without scores,
    ``k`` entries drawn uniformly at random with ``key`` (AlanAnsell/peft ``random_subset``).

    Args:
        params: the frozen params tree.
        density: fraction of each selected leaf that is trainable, in ``(0, 1]``.
        where: leaf selector (`sparsejax.select`; default: float kernels of ``ndim >= 2``).
        key: PRNG key for the random support (required without ``scores``).
        scores: optional tree of float scores mirroring ``params`` (higher = chosen).

    Returns:
        a delta tree: `SparseDelta` on the selected leaves, ``None`` elsewhere.

    Raises:
        ValueError: ``density`` outside ``(0, 1]``, neither ``key`` nor ``scores`` given.
    """
    density = check_float(density, "density", minimum=0.0, maximum=1.0)
    if density == 0.0:
        raise ValueError(must_be("density", "in (0, 1]", density))
    if scores is None and key is None:
        raise ValueError("`key` must be a jax.random key when `scores` is not given; got None.")
    chosen = select(where, tree=params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    if scores is not None:
        check_same_structure(params, scores, "scores", "params")
        score_leaves = treedef.flatten_up_to(scores)
    keys = (list(jax.random.split(key, len(flat))) if key is not None else [None] * len(flat))
    out = []
    for i, (path, p) in enumerate(flat):
        if p is None or not chosen(path, p):
            out.append(None)
            continue
        size = int(np.prod(jnp.shape(p)))
        with jax.ensure_compile_time_eval():  # a Python int under an outer jit too
            k = int(_masks.kept_count(size, 1.0 - density))
        if scores is None:  # uniform without replacement (random_subset), sorted
            idx = jnp.sort(jax.random.permutation(keys[i], size)[:k]).astype(jnp.int32)
            out.append(SparseDelta(idx, jnp.zeros((k,), jnp.result_type(p)), None,
                                   tuple(jnp.shape(p))))
            continue
        s = jnp.asarray(score_leaves[i], jnp.float32)
        out.append(_from_mask(_masks.topk(s, k), jnp.result_type(p)))
    return jax.tree.unflatten(treedef, out)


def map_nodes(fn: Any, params: PyTree, tree: PyTree, cls: type, shape_of: Any,
              name: str = "delta") -> PyTree:
    """``fn(param, node)`` where ``tree`` (mirroring ``params``) holds a ``cls`` node, the param
    elsewhere; ``ValueError`` / ``TypeError`` naming the path for a tree that does not mirror
    ``params``, a node of another type, or one whose ``shape_of(node)`` is not the param's."""
    def is_node(x):
        return x is None or isinstance(x, cls)

    marks = jax.tree.map(lambda d: None if d is None else 0, tree, is_leaf=is_node)
    check_same_structure(params, marks, name, "params")

    def one(path, d, p):
        if d is None:
            return p
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not isinstance(d, cls):
            raise TypeError(must_be(where, f"a {cls.__name__} or None", type(d).__name__,
                                    raw=True))
        if tuple(shape_of(d)) != tuple(jnp.shape(p)):
            raise ValueError(must_be(where, f"a {name} for the param's shape "
                                     f"{tuple(jnp.shape(p))}", f"one of shape {shape_of(d)}",
                                     raw=True))
        return fn(p, d)

    return jax.tree_util.tree_map_with_path(one, tree, params, is_leaf=is_node)


def check_delta_tree(params: PyTree, delta: PyTree, name: str = "delta") -> None:
    """``ValueError`` naming the path unless ``delta`` mirrors ``params`` (one `SparseDelta` or
    ``None`` per leaf)."""
    marks = jax.tree.map(lambda d: None if d is None else 0, delta, is_leaf=_is_node)
    check_same_structure(params, marks, name, "params")


def _map(fn: Any, params: PyTree, delta: PyTree) -> PyTree:
    """``fn(param, SparseDelta)`` on fine-tuned leaves; the other leaves pass through."""
    return map_nodes(fn, params, delta, SparseDelta, lambda d: d.shape)


def _scatter_add(p: jax.Array, d: SparseDelta) -> jax.Array:
    flat = jnp.ravel(p).at[d.indices].add(d.values.astype(p.dtype), unique_indices=True)
    return flat.reshape(jnp.shape(p))


def apply(params: PyTree, delta: PyTree) -> PyTree:
    """The fine-tuned params ``w + delta`` (differentiable in the delta's ``values``).

    Args:
        params: the frozen params tree.
        delta: a delta tree mirroring ``params`` (`SparseDelta` or ``None`` per leaf).

    Returns:
        params with every fine-tuned leaf ``w.ravel().at[indices].add(values)``.
    """
    return _map(_scatter_add, params, delta)


def dense(delta: PyTree, params: PyTree) -> PyTree:
    """The delta as dense arrays of the params' shapes (zeros outside the support; ``None`` on
    frozen leaves)."""
    return jax.tree.map(lambda d, p: None if d is None else _scatter_add(jnp.zeros_like(p), d),
                        delta, params, is_leaf=_is_node)


def merge(params: PyTree, delta: PyTree) -> tuple[PyTree, PyTree]:
    """Fold the delta into the params, recording what it overwrote so `unmerge` is exact.

    Args:
        params: the base params tree.
        delta: a delta tree over it, not merged (``base`` is ``None``).

    Returns:
        ``(merged, merged_delta)``: ``merged`` equals `apply` ``(params, delta)``;
        ``merged_delta`` is ``delta`` with ``base`` set to the base entries at its indices.

    Raises:
        ValueError: a leaf of ``delta`` is already merged.
    """
    def check(path, d):
        if is_delta(d) and d.base is not None:
            raise ValueError(must_be(f"delta{jax.tree_util.keystr(path)}",
                                     "an unmerged SparseDelta (base None)", "a merged one",
                                     raw=True))
    jax.tree_util.tree_map_with_path(check, delta, is_leaf=_is_node)
    merged = apply(params, delta)
    recorded = _map(lambda p, d: dataclasses.replace(d, base=jnp.ravel(p)[d.indices]),
                    params, delta)
    recorded = jax.tree.map(lambda r, d: r if is_delta(d) else None, recorded, delta,
                            is_leaf=_is_node)
    return merged, recorded


def unmerge(merged: PyTree, delta: PyTree) -> tuple[PyTree, PyTree]:
    """Undo `merge` exactly: write the recorded base entries back.

    Args:
        merged: params returned by `merge` (possibly further changed off the support).
        delta: the merged delta tree returned by `merge`.

    Returns:
        ``(params, delta)``: the base params bit for bit and the delta with ``base = None``.

    Raises:
        ValueError: a leaf of ``delta`` was not merged (``base`` is ``None``).
    """
    def restore(p, d):
        if d.base is None:
            raise ValueError(must_be("delta", "a merged delta (from merge, with base set)",
                                     "a SparseDelta with base None", raw=True))
        return jnp.ravel(p).at[d.indices].set(d.base).reshape(jnp.shape(p))

    base = _map(restore, merged, delta)
    return base, jax.tree.map(lambda d: dataclasses.replace(d, base=None) if is_delta(d) else d,
                              delta, is_leaf=_is_node)


def values_of(tree: PyTree) -> list[jax.Array]:
    """The ``values`` of every `SparseDelta` in ``tree``, in tree order."""
    return [d.values for d in jax.tree.leaves(tree, is_leaf=is_delta) if is_delta(d)]


def node_grads(grads: PyTree, params: PyTree, cls: type, shape_of: Any, own: Any,
               dense: Any) -> list:
    """Per ``cls`` node of ``params`` (tree order): ``own(g)`` where ``grads`` holds a ``cls`` of
    gradients there, else ``dense(g, node)`` of the dense gradient of the leaf (checked to have
    ``shape_of(node)``); ``ValueError`` when ``grads`` does not mirror ``params``."""
    def is_node(x):
        return x is None or isinstance(x, cls)

    flat, treedef = jax.tree.flatten(params, is_leaf=is_node)
    name = cls.__name__
    try:
        g_flat = treedef.flatten_up_to(grads)
    except (ValueError, TypeError) as e:
        raise ValueError(f"`updates` must mirror the delta tree (a {name} or the dense "
                         f"gradient of the leaf where the delta has a {name}); {e}") from None
    out = []
    for d, g in zip(flat, g_flat):
        if not isinstance(d, cls):
            continue
        if isinstance(g, cls):
            out.append(own(g))
            continue
        if tuple(jnp.shape(g)) != tuple(shape_of(d)):
            raise ValueError(must_be("updates", f"the dense gradient of shape {shape_of(d)} or "
                                     f"a {name}", f"shape {tuple(jnp.shape(g))}", raw=True))
        out.append(dense(g, d))
    return out


def slot_grads(grads: PyTree, params: PyTree) -> list[jax.Array]:
    """Per `SparseDelta` of ``params``: the gradient of its values, read from ``grads`` (a
    `SparseDelta` of values' gradients, or the dense gradient of the fine-tuned leaf, gathered
    at the indices)."""
    return node_grads(grads, params, SparseDelta, lambda d: d.shape, lambda g: g.values,
                      lambda g, d: jnp.ravel(g)[d.indices])


def delta_updates(params: PyTree, value_updates: list, new_indices: list | None = None) -> PyTree:
    """Updates for ``params`` (any tree holding deltas): ``value_updates`` added to each
    `SparseDelta`'s values (and its indices moved to ``new_indices``); zero on every other leaf."""
    flat, treedef = jax.tree.flatten(params, is_leaf=_is_node)
    out, j = [], 0
    for d in flat:
        if d is None:
            out.append(None)
        elif is_delta(d):
            di = (jnp.zeros_like(d.indices) if new_indices is None
                  else new_indices[j] - d.indices)
            db = None if d.base is None else jnp.zeros_like(d.base)
            out.append(SparseDelta(di, value_updates[j], db, d.shape))
            j += 1
        else:
            out.append(jnp.zeros_like(d))
    return jax.tree.unflatten(treedef, out)


def train_delta(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """An optax transform that trains only the ``values`` of the sparse deltas in a tree.

    The params it is given may be a delta tree or any tree holding deltas next to frozen arrays
    (e.g. ``(base, delta)``): ``inner``'s state is allocated for the deltas' ``values`` only (its
    size is the trainable count), every other leaf (the frozen base, the indices) gets a zero
    update and no state.

    Args:
        inner: the optimizer of the values (e.g. ``optax.adamw(1e-3)``).

    Returns:
        a transform whose ``update(grads, state, params)`` takes ``grads`` mirroring the delta
        tree up to each `SparseDelta`: there either a `SparseDelta` of the values' gradients
        (``jax.grad(..., allow_int=True)`` over the delta) or the dense gradient of the
        fine-tuned leaf (then gathered at the indices; the gradient of ``apply``'s output).
    """
    return trainables_optimizer(inner, values_of, slot_grads, delta_updates, "train_delta")


def trainables_optimizer(
    inner: optax.GradientTransformation,
    trainables: Any,
    grads_of: Any,
    updates_tree: Any,
    owner: str,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform whose ``inner`` optimizer sees only the trainable arrays of a tree.

    The one wrapper of `train_delta` and `dsee.train`: ``trainables(params)`` reads the
    trainable arrays (a list), ``grads_of(grads, params)`` their gradients in the same layout
    (cast here to the arrays' dtypes), and ``updates_tree(params, updates)`` scatters ``inner``'s
    updates back into a tree mirroring ``params`` (zero elsewhere). ``owner`` names the caller in
    the error raised when ``params`` is missing.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        return inner.init(trainables(params))

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError(f"`params` must be passed to update(grads, state, params) by {owner} "
                             "(it reads the trainable arrays from them); got None.")
        vals = trainables(params)
        grads = jax.tree.map(lambda g, v: g.astype(v.dtype), grads_of(updates, params), vals)
        upd, state = inner.update(grads, state, vals, **extra)
        return updates_tree(params, upd), state

    return optax.GradientTransformationExtraArgs(init, update)


def delta_table(delta: Any) -> dict[str, SparseDelta]:
    """``{slash path: SparseDelta}`` of a delta tree (or a flat dict)."""
    leaves = jax.tree_util.tree_flatten_with_path(
        delta, is_leaf=_is_node)[0]
    table = {}
    for p, d in leaves:
        if d is None:
            continue
        if not is_delta(d):
            raise TypeError(f"`delta['{path_str(p)}']` must be a SparseDelta or None; got "
                            f"{type(d).__name__}.")
        table[path_str(p)] = d
    return table


def map_kernels(fn: Any, params: PyTree, where: Any, key: jax.Array, method: str) -> PyTree:
    """``fn(kernel, key_a, key_b)`` on every selected leaf of ``params`` (which must be a 2-D
    ``[in, out]`` kernel, else a ``ValueError`` naming it and ``method``), ``None`` elsewhere;
    the two keys of the leaf at flat position ``i`` are ``split(key, 2 n)[2 i : 2 i + 2]``."""
    chosen = select(where, tree=params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    keys = jax.random.split(key, 2 * max(len(flat), 1))
    out = []
    for i, (path, p) in enumerate(flat):
        if p is None or not chosen(path, p):
            out.append(None)
            continue
        if jnp.ndim(p) != 2:
            raise ValueError(must_be(f"params{jax.tree_util.keystr(path)}",
                                     f"a 2-D [in, out] kernel for {method}",
                                     f"shape {tuple(jnp.shape(p))}", raw=True))
        out.append(fn(p, keys[2 * i], keys[2 * i + 1]))
    return jax.tree.unflatten(treedef, out)

"""`masked_transform`: the one skeleton of every mask-keeping optax transform.

``prune``, ``rigl``, ``sparse_evolutionary``, ``static_sparse`` and ``bayes.ssvi`` are each this
skeleton plus their mask rules. See `masked_transform` for what one ``update`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax._checks import (
    _is_none,
    check_bool,
    check_callable,
    check_same_structure,
    must_be,
)
from sparsejax.select import select
from sparsejax.training.moments import reset_moments
from sparsejax.training.state import SparseState
from sparsejax.tree import apply_masks

PyTree = Any
__all__ = ["MaskUpdate", "masked_transform"]


class MaskUpdate(NamedTuple):
    """What a mask-update hook of `masked_transform` may return instead of a bare mask tree.

    Attributes:
        masks: the new mask tree (mirroring the params; bool arrays, ``None`` on dense leaves).
        values: a tree mirroring the params: the value each *grown* entry (``True`` in the new
            mask, ``False`` in the old) starts from, e.g. SSVI's ``mu = 0`` and the mean kept
            ``rho`` (arrays broadcastable to the leaf, ``None`` = ``0``). Other entries ignore it.
    """

    masks: PyTree
    values: PyTree


def is_function(value: Any) -> bool:
    """A function to call, not a tree: callable and without array leaves (an Equinox module is
    callable but holds arrays). Same rule as the core branch's ``_checks.is_function``; replace
    this one by it once both are merged."""
    return callable(value) and not any(isinstance(x, jax.Array | np.ndarray)
                                       for x in jax.tree.leaves(value))


def key_data(key: Any, name: str = "key") -> jax.Array:
    """Raw uint32 key data of a PRNG key (typed keys converted), validated."""
    if key is None:
        raise ValueError(f"`{name}` must be a jax.random key; got None.")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.dtype != jnp.uint32:
        raise TypeError(f"`{name}` must be a jax.random key (jax.random.key or PRNGKey); got an "
                        f"array of dtype {key.dtype}.")
    return key


def full_masks(params: PyTree, where: Any) -> PyTree:
    """All-``True`` masks for the leaves ``where`` selects, ``None`` elsewhere."""
    chosen = select(where)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.ones(jnp.shape(x), bool) if x is not None and chosen(p, x) else None,
        params, is_leaf=_is_none)


def _mask_map(fn, masks, *trees):
    return jax.tree.map(lambda m, *xs: None if m is None else fn(m, *xs), masks, *trees,
                        is_leaf=_is_none)




def check_leaf_shapes(tree: PyTree, other: PyTree, name: str, tree_name: str) -> None:
    """``ValueError`` naming ``name`` and the leaf path unless ``other``'s leaves have the shapes
    of ``tree``'s (the structures already match)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for (path, a), b in zip(flat, jax.tree.leaves(other)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(must_be(f"{name}{jax.tree_util.keystr(path)}",
                                     f"of the shape of {tree_name}{jax.tree_util.keystr(path)}, "
                                     f"{tuple(jnp.shape(a))}", f"shape {tuple(jnp.shape(b))}",
                                     raw=True))


def _select(pred: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """``a`` where the scalar ``pred`` holds, else ``b``, leaf by leaf (elementwise: fuses)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def masked_transform(
    inner: optax.GradientTransformation,
    init_masks: Callable[[PyTree, Any], PyTree],
    update_masks: Callable[[PyTree, PyTree, PyTree, jax.Array, Any], PyTree | MaskUpdate] | None,
    schedule: Any,
    *,
    key: Any = None,
    reset: bool = False,
    update_at_mask_step: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform that keeps the params exactly masked, its masks in its state.

    One ``update(grads, state, params)`` at step ``t = state.count``:

    1. if ``schedule`` is active at ``t`` (under ``lax.cond``, one compiled step; only the
       hook's outputs and the key pass through the conditional), ``update_masks(params, grads,
       masks, t, key)`` gives the new masks (and optionally the values of grown entries, as a
       `MaskUpdate`) from the params *before* this step and the gradients as received (dense);
    2. with ``reset``, the inner optimizer's params-shaped moments of every entry whose mask
       changed (grown or dropped) are set to zero (`reset_moments`);
    3. at an update step, by default (``update_at_mask_step=False``) the inner optimizer is not
       stepped: every update is zero except the mask change, and the inner state is unchanged
       (apart from the reset), as rigl's ``cond(is_mask_update_iter, mask_update_op,
       apply_gradient_op)`` and jaxpruner's ``skip_gradients=True`` do. Otherwise (and at every
       other step) the inner optimizer runs on the gradients masked by ``old & new``;
    4. the returned updates leave the params exactly masked: entries kept by both masks move by
       the inner update, dropped entries get ``-params``, grown entries ``value - params``
       (``value = 0`` without a `MaskUpdate`), dense leaves (mask ``None``) the inner update.

    Args:
        inner: the wrapped optimizer (extra ``update`` arguments are passed through).
        init_masks: ``(params, key) -> masks`` at ``init`` (``key``: half of ``key``'s split, or
            ``None``).
        update_masks: ``(params, grads, masks, step, key) -> masks`` or a `MaskUpdate`; ``None``:
            the masks never change. The returned masks mirror the params.
        schedule: when ``update_masks`` runs: an object with ``.active(step)`` (such as
            `DropGrowSchedule`) or a function ``step -> bool`` (traced); ignored when
            ``update_masks`` is ``None``.
        key: PRNG key data kept in the state, split at every update step (``None``: no key).
        reset: reset the inner optimizer's moments where the mask changes (the optimizer's state
            is checked at ``init``).
        update_at_mask_step: also step the inner optimizer at a mask-update step (on the entries
            kept by both masks); ``False`` follows rigl / jaxpruner / SSVI.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.

    Raises:
        ValueError: at ``update``, ``params`` missing or trees that do not mirror each other.
    """
    inner = optax.with_extra_args_support(inner)
    check_bool(update_at_mask_step, "update_at_mask_step")
    active = None
    if update_masks is not None:
        active = schedule.active if hasattr(schedule, "active") else check_callable(
            schedule, "schedule", "an object with .active(step) or a function step -> bool")

    def init(params):
        k_init = None
        k_state = key
        if key is not None:
            k_init, k_state = jax.random.split(key)
        masks = init_masks(params, k_init)
        inner_state = inner.init(params)
        if reset:  # fail at init (not mid-training) on a state the reset cannot match
            reset_moments(inner_state, params, _mask_map(jnp.zeros_like, masks))
        if update_masks is not None:  # surface pattern / shape errors now, eagerly
            jax.eval_shape(lambda p: update_masks(p, p, masks, jnp.int32(0), k_state), params)
        return SparseState(jnp.zeros([], jnp.int32), masks, inner_state, k_state)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("`params` must be passed to update(grads, state, params) by the "
                             "sparse-training transforms (they read the weights); got None.")
        grads = updates
        old, inner_state = state.masks, state.inner_state
        check_same_structure(params, old, "state.masks", "params")  # state vs these params
        check_same_structure(params, grads, "updates", "params")
        check_leaf_shapes(params, grads, "updates", "params")
        step, k_state = state.count, state.key
        new, values, is_update = old, None, None
        if update_masks is not None:
            def changed_masks():
                k_next, k_update = k_state, None
                if k_state is not None:
                    k_next, k_update = jax.random.split(k_state)
                out = update_masks(params, grads, old, step, k_update)
                if isinstance(out, MaskUpdate):
                    return out.masks, _fill(out.values, params, out.masks), k_next
                return out, _fill(None, params, out), k_next

            def same_masks():
                return old, _fill(None, params, old), k_state

            is_update = jnp.asarray(active(step), bool)
            new, values, k_state = lax.cond(is_update, changed_masks, same_masks)
            if reset:  # changed entries start from zero moments and get zero gradients below
                inner_state = reset_moments(inner_state, params,
                                            _mask_map(lambda a, b: a != b, old, new))
        keep = _mask_map(lambda a, b: a & b, old, new)
        inner_updates, next_state = inner.update(apply_masks(grads, keep), inner_state, params,
                                                 **extra_args)
        if is_update is not None and not update_at_mask_step:
            inner_updates = _select(is_update, jax.tree.map(jnp.zeros_like, inner_updates),
                                    inner_updates)
            next_state = _select(is_update, inner_state, next_state)

        def out(u, p, m_keep, m_new, v):
            if m_keep is None:
                return u
            start = jnp.where(m_new, v, 0).astype(u.dtype)  # grown: value; dropped: 0
            return jnp.where(m_keep, u, start - p.astype(u.dtype))

        if values is None:  # no mask updates: nothing is ever grown
            values = _fill(None, params, new)
        result = jax.tree.map(out, inner_updates, params, keep, new, values, is_leaf=_is_none)
        return result, SparseState(optax.safe_increment(step), new, next_state, k_state)

    return optax.GradientTransformationExtraArgs(init, update)


def _fill(values: PyTree, params: PyTree, masks: PyTree) -> PyTree:
    """Grown-entry values as full arrays of the params' dtypes (``0`` where ``None``), so both
    branches of the update's ``lax.cond`` return the same structure."""
    if values is None:
        return _mask_map(lambda m, p: jnp.zeros(jnp.shape(p), p.dtype), masks, params)
    return jax.tree.map(
        lambda m, p, v: None if m is None else jnp.broadcast_to(
            jnp.zeros((), p.dtype) if v is None else jnp.asarray(v, p.dtype), jnp.shape(p)),
        masks, params, values, is_leaf=_is_none)

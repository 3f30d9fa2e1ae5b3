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
    is_concrete,
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
    hold_frozen: bool = False,
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
    Incoming params must be exactly masked from step 1 on (the updates of step 0 zero the pruned
    entries): a transform chained *after* this one that rescales the updates (e.g.
    ``optax.clip_by_global_norm``) breaks that. Called eagerly, ``update`` raises; under ``jit``
    it is not checked (a ``checkify`` check would take every jitted step off JAX's fast dispatch
    path, milliseconds per call). Wrap the whole chain in `keep_masked` to make any chain safe.

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
        hold_frozen: keep the mask of a *frozen* leaf unchanged at an update step: a leaf the
            inner optimizer does not move (its update is exactly zero while its gradient on the
            kept entries is not, e.g. a zero learning rate under ``optax.multi_transform``).
            Growing entries there would replace trained weights by zeros that never train.

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
        _check_masked(params, old, step)
        new, values, is_update = old, None, None
        if update_masks is not None:
            traced = []  # the update branch's values (their shapes give the other branch's zeros)

            def changed_masks():
                k_next, k_update = k_state, None
                if k_state is not None:
                    k_next, k_update = jax.random.split(k_state)
                out = update_masks(params, grads, old, step, k_update)
                masks, values = (out.masks, out.values) if isinstance(out, MaskUpdate) else (out,
                                                                                            None)
                if hold_frozen:
                    masks = _hold_frozen(inner, grads, inner_state, params, old, masks,
                                         extra_args)
                values = _fill(values, params, masks)
                traced.append(values)
                return masks, values, k_next

            def same_masks():
                like = traced[0] if traced else jax.eval_shape(changed_masks)[1]
                return old, jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), like), k_state

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


def _check_masked(params: PyTree, masks: PyTree, step: Any) -> None:
    """Entries outside the mask must be zero in the params an update receives (from step 1)."""
    leaves = []
    jax.tree.map(lambda m, p: None if m is None else leaves.append((p, m)), masks, params,
                 is_leaf=_is_none)
    if not leaves:
        return
    if is_concrete(step) and all(is_concrete(p) and getattr(p, "is_fully_addressable", True)
                                 for p, _ in leaves):  # (a host check, eager calls only)
        if int(step) == 0:
            return
        bad = [int(np.count_nonzero(np.asarray(p)[~np.asarray(m)])) for p, m in leaves]
        if any(bad):
            raise ValueError(must_be(
                "params", f"exactly masked at step {int(step)} (zero outside the transform's "
                "masks)", f"{sum(bad)} nonzero entries outside the masks: a transform chained "
                "after the sparse one changed its updates (e.g. clip_by_global_norm), or the "
                "params were edited; wrap the whole chain in sparsejax.training.keep_masked(...)",
                raw=True))
        return
    # Traced (under jit): not checked. A checkify.debug_check here is a no-op without checkify,
    # yet its effect takes the whole jitted step off JAX's C++ dispatch path (about 0.2 ms per
    # call plus per-argument Python work: 4 ms on an SSVI MLP step); keep_masked is the remedy.


def _hold_frozen(inner, grads, inner_state, params, old, new, extra_args):
    """``new`` with the leaves the inner optimizer does not move reset to ``old``."""
    probe, _ = inner.update(apply_masks(grads, old), inner_state, params, **extra_args)

    def leaf(m_old, m_new, u, g):
        frozen = jnp.all(jnp.where(m_old, u == 0, True)) & jnp.any(jnp.where(m_old, g != 0,
                                                                             False))
        return jnp.where(frozen, m_old, m_new)

    return jax.tree.map(lambda a, b, u, g: None if a is None else leaf(a, b, u, g),
                        old, new, probe, grads, is_leaf=_is_none)


def _fill(values: PyTree, params: PyTree, masks: PyTree) -> PyTree:
    """Grown-entry values in the params' dtypes at their own (broadcastable) shapes: a scalar
    ``0`` where ``None``, so the update's ``lax.cond`` passes no params-sized zeros between mask
    updates (SSVI's values are one mean ``rho`` per leaf)."""
    if values is None:
        return _mask_map(lambda m, p: jnp.zeros((), p.dtype), masks, params)

    def leaf(m, p, v):
        if m is None:
            return None
        v = jnp.zeros((), p.dtype) if v is None else jnp.asarray(v, p.dtype)
        try:
            fits = np.broadcast_shapes(v.shape, jnp.shape(p)) == jnp.shape(p)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(must_be("MaskUpdate.values", f"arrays broadcastable to their "
                                     f"leaf's shape {jnp.shape(p)}", f"shape {v.shape}",
                                     raw=True))
        return v

    return jax.tree.map(leaf, masks, params, values, is_leaf=_is_none)

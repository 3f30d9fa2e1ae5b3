"""The one skeleton shared by every mask-keeping optax transform (private).

``update`` may first compute new masks (under ``lax.cond`` on the step, inside ``jit``: only the
bool masks and the key pass through the conditional), optionally resets the inner optimizer's
moments where the mask changed, runs the inner optimizer on the gradients masked by
``old & new`` (so changed entries get zero gradients and, after a reset, end the step with zero
moments), and returns updates that leave the params exactly masked: kept entries move by the inner
update, entries outside the new mask get ``-params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax._checks import _is_none, check_same_structure
from sparsejax.select import select
from sparsejax.training.moments import reset_moments
from sparsejax.training.state import SparseState
from sparsejax.tree import apply_masks

PyTree = Any
# (params, grads, masks, step, key) -> new masks
MaskUpdate = Callable[[PyTree, PyTree, PyTree, jax.Array, Any], PyTree]


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


def masked_transform(
    inner: optax.GradientTransformation,
    init_masks: Callable[[PyTree, Any], PyTree],
    update_masks: MaskUpdate | None,
    should_update: Callable[[jax.Array], jax.Array] | None,
    *,
    key: Any = None,
    reset: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Build a transform from its mask rules.

    Args:
        inner: the wrapped optimizer.
        init_masks: ``(params, key) -> masks`` at ``init``.
        update_masks: new masks at an update step (``None``: masks never change).
        should_update: ``step -> bool`` (traced), when ``update_masks`` runs.
        key: PRNG key data kept in the state and split at every update step.
        reset: reset the inner optimizer's moments where the mask changes (checked at ``init``).
    """
    inner = optax.with_extra_args_support(inner)

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
        check_same_structure(params, old, "masks")  # the state's masks vs these params
        check_same_structure(params, grads, "updates")
        step, k_state = state.count, state.key
        new = keep = old
        if update_masks is not None:
            def changed_masks():
                k_next, k_update = k_state, None
                if k_state is not None:
                    k_next, k_update = jax.random.split(k_state)
                return update_masks(params, grads, old, step, k_update), k_next

            # only the (bool) masks and the key go through the cond: float state passed through a
            # conditional is copied, while elementwise work outside it fuses with the inner update
            new, k_state = lax.cond(should_update(step), changed_masks, lambda: (old, k_state))
            keep = _mask_map(lambda a, b: a & b, old, new)
            if reset:  # changed entries start from zero moments and get zero gradients below,
                # so adam / momentum statistics of grown and dropped entries end the step at zero
                inner_state = reset_moments(inner_state, params,
                                            _mask_map(lambda a, b: a != b, old, new))
        inner_updates, inner_state = inner.update(apply_masks(grads, keep), inner_state, params,
                                                  **extra_args)
        out = jax.tree.map(
            lambda m, u, p: u if m is None else jnp.where(m, u, -p.astype(u.dtype)),
            keep, inner_updates, params, is_leaf=_is_none)
        return out, SparseState(optax.safe_increment(step), new, inner_state, k_state)

    return optax.GradientTransformationExtraArgs(init, update)

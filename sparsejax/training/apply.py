"""Applying a sparse-training state's masks outside its transform: `sparsify` (params at init)
and `keep_masked` (a guard around a whole optimizer chain)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparsejax._checks import _is_none, check_same_structure
from sparsejax.training.state import masks_of
from sparsejax.tree import apply_masks

__all__ = ["keep_masked", "sparsify"]

PyTree = Any


def sparsify(params: PyTree, opt_state: PyTree) -> PyTree:
    """The params with the masks of the sparse-training state in ``opt_state`` applied.

    `rigl`, `sparse_evolutionary` and `static_sparse` draw their masks at ``init``, but the
    params only become sparse with the first applied update (``k - 1`` micro-steps later under
    ``optax.MultiSteps``). ``params = sparsify(params, opt_state)`` right after ``init`` makes
    them sparse at once (jaxpruner's ``instant_sparsify``). With `prune` the masks are all
    ``True`` until its first mask update, so this returns the params unchanged.

    Args:
        params: the params ``opt_state`` was built for.
        opt_state: an optimizer state holding one `SparseState` (see `masks_of`).

    Returns:
        the params, zero outside the masks (same structure and dtypes).
    """
    masks = masks_of(opt_state)
    check_same_structure(params, masks, "masks_of(opt_state)")
    return apply_masks(params, masks)


def keep_masked(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Make any chain containing one sparse-training transform keep the params exactly masked.

    A transform chained *after* the sparse one (``optax.chain(prune(adam), clip_by_global_norm(
    1.0))``) rescales its updates, so the ``-params`` it returns for pruned entries no longer
    zeroes them. ``keep_masked(chain)`` runs the whole chain, then sets the update of every entry
    outside the (new) masks to ``-params``: after ``optax.apply_updates`` the params are exactly
    masked whatever the chain does.

    Args:
        tx: an optimizer whose state holds exactly one `SparseState`.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` with ``tx``'s state.
    """
    tx = optax.with_extra_args_support(tx)

    def init(params):
        state = tx.init(params)
        masks_of(state)  # exactly one sparse state, checked now
        return state

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("`params` must be passed to update(grads, state, params) by "
                             "keep_masked (it reads the weights); got None.")
        updates, state = tx.update(updates, state, params, **extra_args)
        masks = masks_of(state)
        out = jax.tree.map(
            lambda m, u, p: u if m is None else jnp.where(m, u, -p.astype(u.dtype)),
            masks, updates, params, is_leaf=_is_none)
        return out, state

    return optax.GradientTransformationExtraArgs(init, update)

"""Reset an optimizer's per-parameter statistics (moments) where a mask changes.

Used by `dynamic_sparse` (RigL/SET: grown and dropped entries restart with zero moments) and
reusable by any transform that edits a mask inside an optax state (e.g. SSVI's subspace update).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_map_with_path

from sparsejax._checks import _is_none

__all__ = ["reset_moments"]

PyTree = Any


def _shapes(tree: PyTree) -> tuple[Any, list]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [np.shape(x) for x in leaves]


def reset_moments(inner_state: PyTree, params: PyTree, reset_masks: PyTree,
                  value: float = 0.0) -> PyTree:
    """Set the entries of every params-shaped statistic in an optax state to ``value`` where
    ``reset_masks`` is ``True``.

    A *params-shaped statistic* is any subtree of ``inner_state`` with the tree structure of
    ``params`` and, leaf by leaf, the shape of the parameter: adam's / adamw's ``mu`` and ``nu``,
    sgd-momentum's ``trace``, wherever they sit (inside ``optax.chain`` tuples, NamedTuples,
    ``optax.inject_hyperparams`` states, Flax NNX ``State`` trees). Every other state leaf must be a
    scalar (step counts, hyperparameters); an array leaf of rank >= 1 that is not part of a
    params-shaped statistic (a factored second moment, a flattened buffer) cannot be matched to a
    parameter, and this function raises instead of silently leaving it stale.

    Works under ``jit`` (the matching is on static structure and shapes); call it once eagerly
    (e.g. in ``init``, with an all-``False`` mask) to validate an optimizer up front.

    Args:
        inner_state: an optax optimizer state built for ``params``.
        params: the parameter tree (arrays or ``jax.ShapeDtypeStruct``; only shapes are read).
        reset_masks: a tree mirroring ``params``: a bool array (``True`` = reset this entry) per
            leaf, or ``None`` for a leaf to leave untouched.
        value: the value written (0 for moments).

    Returns:
        ``inner_state`` with the reset applied (same structure, dtypes and shapes).

    Raises:
        ValueError: ``reset_masks`` does not mirror ``params``, or a state leaf of rank >= 1
            cannot be matched to a parameter.
    """
    p_treedef, p_shapes = _shapes(params)
    m_treedef = jax.tree.structure(reset_masks, is_leaf=_is_none)
    p_none_treedef = jax.tree.structure(params, is_leaf=_is_none)
    if m_treedef != p_none_treedef:
        raise ValueError(f"`reset_masks` must mirror the structure of params (a bool array or None "
                         f"per leaf); got {m_treedef}, params have {p_none_treedef}.")
    # aligned with the params' array leaves: a None params leaf has no statistic to reset
    mask_leaves = [m for p, m in zip(jax.tree.leaves(params, is_leaf=_is_none),
                                     jax.tree.leaves(reset_masks, is_leaf=_is_none))
                   if p is not None]

    def is_params_copy(node: Any) -> bool:
        if node is None:
            return False
        try:
            treedef, shapes = _shapes(node)
        except Exception:  # noqa: BLE001 - an exotic node is simply not a params copy
            return False
        return treedef == p_treedef and shapes == p_shapes

    def one(path, node):
        if is_params_copy(node):
            leaves = jax.tree.leaves(node)
            out = [x if m is None else jnp.where(m, jnp.asarray(value, x.dtype), x)
                   for x, m in zip(leaves, mask_leaves)]
            return jax.tree.unflatten(p_treedef, out)
        if node is not None and np.ndim(node) >= 1:
            raise ValueError(
                f"`inner_state` leaf {keystr(path)} must be a scalar or part of a params-shaped "
                f"statistic (adam/adamw mu and nu, momentum traces: a copy of the params tree) so "
                f"the moment reset can match it to a parameter; got an array of shape "
                f"{np.shape(node)}. Use an optimizer whose per-parameter state mirrors the params "
                f"(e.g. optax.adam, optax.sgd(momentum=...)).")
        return node

    return tree_map_with_path(one, inner_state, is_leaf=is_params_copy)

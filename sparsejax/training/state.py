"""The optimizer state every sparse-training transform keeps, and `masks_of` to read it back."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jaxtyping import Array, Int

from sparsejax._checks import _is_none

__all__ = ["SparseState", "masks_of"]

PyTree = Any


class SparseState(NamedTuple):
    """State of `prune`, `dynamic_sparse` (`rigl`, `sparse_evolutionary`) and `static_sparse`.

    Attributes:
        count: optimizer steps already taken (int32 scalar); the step a mask update is keyed on.
        masks: the current mask tree mirroring the params (bool array, ``True`` = kept, or
            ``None`` for a dense leaf).
        inner_state: the wrapped optimizer's state.
        key: PRNG key data (uint32) for random scores / random growth, or ``None``.
    """

    count: Int[Array, ""]
    masks: PyTree
    inner_state: optax.OptState
    key: Any = None


def _unwrap(x: Any) -> Any:
    """Array payload of a Flax NNX variable (``nnx.Optimizer`` wraps state arrays); identity else."""
    if x is None or isinstance(x, jax.Array | np.ndarray):
        return x
    if hasattr(x, "get_value"):
        return x.get_value()
    return getattr(x, "value", x)


def masks_of(opt_state: PyTree) -> PyTree:
    """The current mask tree held in an optimizer state.

    Finds the one `SparseState` anywhere inside ``opt_state`` (a bare state, nested in an
    ``optax.chain`` tuple, an ``optax.inject_hyperparams`` state, or the ``opt_state`` of a Flax
    ``nnx.Optimizer``) and returns its masks, with NNX variable wrappers removed and the
    ``optax.MaskedNode`` placeholders of an ``optax.multi_transform`` branch made ``None`` (a
    dense leaf), so `sparsejax.summary` and `sparsejax.apply_masks` accept the result.

    Args:
        opt_state: an optimizer state (or anything containing exactly one `SparseState`).

    Returns:
        the mask tree (bool arrays and ``None``), mirroring the params.

    Raises:
        ValueError: ``opt_state`` contains no `SparseState`, or more than one.
    """
    state = find_state(opt_state, SparseState,
                       "sparsejax.training SparseState (from prune / rigl / sparse_evolutionary / "
                       "static_sparse)")
    return jax.tree.map(
        lambda x: None if isinstance(x, optax.MaskedNode) else _unwrap(x), state.masks,
        is_leaf=lambda x: _is_none(x) or isinstance(x, optax.MaskedNode) or not isinstance(
            x, dict | list | tuple) and hasattr(x, "get_value"))


def find_state(opt_state: PyTree, state_type: type, label: str) -> Any:
    """The one ``state_type`` instance anywhere inside ``opt_state`` (bare, in a chain, in an
    ``inject_hyperparams`` state); ``ValueError`` naming ``label`` unless there is exactly one.
    Shared by the transforms that keep masks in their state (`masks_of`,
    `sparsejax.bayes.masks_of`)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, state_type))
             if isinstance(x, state_type)]
    if len(found) != 1:
        raise ValueError(f"`opt_state` must contain exactly one {label}; got {len(found)}.")
    return found[0]

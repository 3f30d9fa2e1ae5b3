"""Sparse Model Soups (Zimmer et al. 2024, ZIB-IOL/SMS): average models that share one mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import _is_none, check_same_structure, is_concrete
from sparsejax.tree import apply_masks

__all__ = ["soup"]

PyTree = Any


def soup(models: Sequence[PyTree], masks: PyTree | Sequence[PyTree]) -> PyTree:
    """Uniform soup: the entrywise mean of ``models``, exactly masked by their shared mask.

    Args:
        models: two or more param trees of one structure (e.g. fine-tuned from one pruned model
            with different seeds or hyperparameters).
        masks: the shared mask tree, or a sequence with each model's own mask tree (from
            `masks_of`); these must all be equal.

    Returns:
        the averaged params (each leaf in its models' dtype, averaged in float32 or wider), with
        the entries outside the mask exactly zero.

    Raises:
        ValueError: fewer than one model, models of different structures, a mask tree that does
            not mirror the params, or per-model masks that differ (the soup is only sparse with
            the same mask).
    """
    models = list(models)
    if not models:
        raise ValueError("`models` must be a non-empty sequence of param trees; got an empty one.")
    for i, model in enumerate(models[1:], 1):
        check_same_structure(models[0], model, f"models[{i}]")
    per_model = (isinstance(masks, list | tuple) and len(masks) == len(models)
                 and jax.tree.structure(masks[0], is_leaf=_is_none)
                 == jax.tree.structure(models[0], is_leaf=_is_none))
    if per_model:
        shared = masks[0]
        for i, other in enumerate(masks[1:], 1):
            check_same_structure(models[0], other, f"masks[{i}]")
            for a, b in zip(jax.tree.leaves(shared, is_leaf=_is_none),
                            jax.tree.leaves(other, is_leaf=_is_none)):
                differ = (a is None) != (b is None) or (
                    a is not None and is_concrete(a) and is_concrete(b)
                    and not np.array_equal(np.asarray(a), np.asarray(b)))
                if differ:
                    raise ValueError(f"`masks` must be one shared mask; masks[{i}] differs from "
                                     f"masks[0] (sparse model soups average models with the same "
                                     f"mask).")
        masks = shared
    check_same_structure(models[0], masks, "masks")

    def mean(*leaves):
        acc = jnp.promote_types(leaves[0].dtype, jnp.float32)
        return (sum(x.astype(acc) for x in leaves) / len(leaves)).astype(leaves[0].dtype)

    return apply_masks(jax.tree.map(mean, *models), masks)

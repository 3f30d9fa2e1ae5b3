"""Mask application: zero the dropped entries of any pytree under a mask tree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax._checks import _is_none, check_mask_tree, check_same_structure, must_be
from sparsejax.select import path_str

__all__ = ["apply_masks"]

PyTree = Any


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

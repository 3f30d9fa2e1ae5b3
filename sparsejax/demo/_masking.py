"""Mask application used by the demo's training loop (None-aware, like ``sparsejax.apply_masks``)."""

import jax


def apply_masks_or_identity(tree, masks):
    """``tree`` with each leaf multiplied by its mask where the mask tree has a bool array."""
    if masks is None:
        return tree
    return jax.tree.map(lambda m, x: x if m is None else x * m.astype(x.dtype), masks, tree,
                        is_leaf=lambda m: m is None)

"""Mask trees: masks that mirror a params pytree, one job per module.

* `sparsejax.tree.compute`: `compute_masks` (pattern x score x allocation over a tree) and
  `pattern_mask` (one leaf);
* `sparsejax.tree.apply`: `apply_masks`;
* `sparsejax.tree.stats`: `sparsity` and the `summary` table;
* `sparsejax.tree.layout`: the pattern a mask follows and its compressed size, `nbytes`.
"""

from sparsejax.tree.apply import apply_masks
from sparsejax.tree.compute import compute_masks, pattern_mask
from sparsejax.tree.layout import nbytes
from sparsejax.tree.stats import Sparsity, sparsity, summary

__all__ = [
    "Sparsity",
    "apply_masks",
    "compute_masks",
    "nbytes",
    "pattern_mask",
    "sparsity",
    "summary",
]

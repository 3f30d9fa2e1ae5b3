"""sparsejax: sparsity as a first-class, composable JAX transform.

A mask is *pattern x score x allocation x schedule*: `sparsejax.masks` (patterns),
`sparsejax.scores`, `sparsejax.allocation`, `sparsejax.schedules`, combined over any
pytree by `compute_masks` / `apply_masks` (`sparsejax.tree`).
"""

from sparsejax import (
    activation,
    allocation,
    attention,
    bayes,
    dictionary,
    formats,
    masks,
    models,
    moe,
    nn,
    oneshot,
    ops,
    schedules,
    scores,
    training,
)
from sparsejax.attention import BlockMask
from sparsejax.formats import CSR, BlockSparse, NMSparse
from sparsejax.select import path_str, select
from sparsejax.tree import Sparsity, apply_masks, compute_masks, nbytes, sparsity, summary

__version__ = "0.1.0"

__all__ = [
    "BlockMask",
    "BlockSparse",
    "CSR",
    "NMSparse",
    "Sparsity",
    "activation",
    "allocation",
    "attention",
    "bayes",
    "dictionary",
    "formats",
    "nn",
    "ops",
    "apply_masks",
    "compute_masks",
    "masks",
    "models",
    "moe",
    "nbytes",
    "oneshot",
    "path_str",
    "schedules",
    "scores",
    "select",
    "sparsity",
    "summary",
    "training",
]

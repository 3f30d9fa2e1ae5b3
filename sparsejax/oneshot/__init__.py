"""Post-training (one-shot) pruning with calibration data: magnitude, Wanda, SparseGPT, DSnoT.

Per-layer methods take a weight, its calibration `LayerStats` and a pattern (unstructured
``sparsity`` or ``n``:``m`` along the input axis) and return ``(pruned_weight, mask)``;
`prune_model` applies one to a whole model sequentially, calibrating each layer group on the outputs
of the already-pruned earlier ones; `prune_blocks` does the same block by block for a stack of
identically shaped blocks (one compiled block program, reused).
"""

from sparsejax.oneshot.blocks import prune_blocks
from sparsejax.oneshot.driver import METHODS, layer_order, prune_model
from sparsejax.oneshot.dsnot import dsnot_prune, reconstruction_error
from sparsejax.oneshot.methods import (
    hessian_inverse_factor,
    magnitude_prune,
    sparsegpt_prune,
    wanda_prune,
)
from sparsejax.oneshot.stats import LayerStats

__all__ = [
    "METHODS",
    "LayerStats",
    "dsnot_prune",
    "hessian_inverse_factor",
    "layer_order",
    "magnitude_prune",
    "prune_blocks",
    "prune_model",
    "reconstruction_error",
    "sparsegpt_prune",
    "wanda_prune",
]

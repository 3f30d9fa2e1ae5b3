"""Sparse training inside the user's loop: optax transforms that keep masks in the optimizer state.

Every transform wraps the user's optimizer and returns an ``optax.GradientTransformation`` whose
updates leave the params exactly masked after every step; `masks_of` reads the masks back. See the
"Sparse training" docs page for the recipes (optax, Flax NNX, Equinox, orbax, sharding).
"""

from sparsejax.training._transform import MaskUpdate, masked_transform
from sparsejax.training.apply import keep_masked, sparsify
from sparsejax.training.bdwp import bdwp_masks, bdwp_matmul
from sparsejax.training.blocks import compact_blocks
from sparsejax.training.cast import AdamSState, adams, cast_decay, project
from sparsejax.training.drop_grow import DropGrowSchedule, drop_and_grow
from sparsejax.training.dynamic import (
    dynamic_sparse,
    random_masks,
    rigl,
    sparse_evolutionary,
)
from sparsejax.training.iso_flop import iso_flop_width
from sparsejax.training.moments import reset_moments
from sparsejax.training.prune import prune
from sparsejax.training.soup import soup
from sparsejax.training.state import SparseState, masks_of
from sparsejax.training.static import static_sparse
from sparsejax.training.ste import (
    decay_factor,
    mask_decay,
    sr_ste,
    ste,
    structure_decay_ladder,
    structure_decay_masks,
)

__all__ = [
    "AdamSState",
    "DropGrowSchedule",
    "MaskUpdate",
    "SparseState",
    "adams",
    "bdwp_masks",
    "bdwp_matmul",
    "cast_decay",
    "compact_blocks",
    "decay_factor",
    "drop_and_grow",
    "dynamic_sparse",
    "iso_flop_width",
    "keep_masked",
    "mask_decay",
    "masked_transform",
    "masks_of",
    "project",
    "prune",
    "random_masks",
    "reset_moments",
    "rigl",
    "soup",
    "sparsify",
    "sparse_evolutionary",
    "sr_ste",
    "static_sparse",
    "ste",
    "structure_decay_ladder",
    "structure_decay_masks",
]

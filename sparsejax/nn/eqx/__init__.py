"""Equinox layers over sparsejax's core, with the same class names as their Flax NNX
counterparts in `sparsejax.nn` (e.g. `sparsejax.nn.eqx.BlockSparseLinear`)."""

from sparsejax.nn.eqx.attention import SparseMultiHeadAttention
from sparsejax.nn.eqx.linear import BlockSparseLinear, NMLinear
from sparsejax.nn.eqx.sae import SparseAutoencoder

__all__ = [
    "BlockSparseLinear",
    "NMLinear",
    "SparseAutoencoder",
    "SparseMultiHeadAttention",
]

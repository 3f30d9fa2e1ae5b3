"""Flax NNX layers over sparsejax's core; their Equinox counterparts (same class names) are in
`sparsejax.nn.eqx`.

Block-sparse / N:M linear layers, sparse multi-head attention and sparse autoencoders.
"""

from sparsejax.nn import eqx
from sparsejax.nn.attention import SparseMultiHeadAttention
from sparsejax.nn.linear import BlockSparseLinear, NMLinear, SparseStructure
from sparsejax.nn.sae import SAEStateVariable, SparseAutoencoder

__all__ = [
    "BlockSparseLinear",
    "NMLinear",
    "SAEStateVariable",
    "SparseAutoencoder",
    "SparseMultiHeadAttention",
    "SparseStructure",
    "eqx",
]

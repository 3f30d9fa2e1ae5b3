"""Equinox layers over sparsejax's core, with the same class names as their Flax NNX
counterparts in `sparsejax.nn` (e.g. `sparsejax.nn.eqx.BlockSparseLinear`)."""

from sparsejax.nn.eqx.attention import SparseMultiHeadAttention
from sparsejax.nn.eqx.linear import BlockSparseLinear, NMLinear
from sparsejax.nn.eqx.lista import LISTA
from sparsejax.nn.eqx.masked import Masked
from sparsejax.nn.eqx.moe import MoE
from sparsejax.nn.eqx.sae import SparseAutoencoder
from sparsejax.nn.eqx.sparse_linear import SparseConv1x1, SparseLinear
from sparsejax.nn.eqx.ssvi import SSVIConv, SSVILinear, posterior_of, with_posterior
from sparsejax.nn.eqx.surgery import to_dense, to_sparse

__all__ = [
    "BlockSparseLinear",
    "LISTA",
    "MoE",
    "Masked",
    "NMLinear",
    "SSVIConv",
    "SSVILinear",
    "SparseAutoencoder",
    "SparseConv1x1",
    "SparseLinear",
    "SparseMultiHeadAttention",
    "posterior_of",
    "to_dense",
    "to_sparse",
    "with_posterior",
]

"""Equinox layers over sparsejax's core, with the same class names as their Flax NNX
counterparts in `sparsejax.nn` (e.g. `sparsejax.nn.eqx.BlockSparseLinear`)."""

from sparsejax.nn.eqx.attention import SparseMultiHeadAttention
from sparsejax.nn.eqx.linear import BlockSparseLinear, NMLinear
from sparsejax.nn.eqx.lista import LISTA
from sparsejax.nn.eqx.lsr import TermWeightHead
from sparsejax.nn.eqx.masked import Masked
from sparsejax.nn.eqx.moe import MoE
from sparsejax.nn.eqx.sae import SparseAutoencoder
from sparsejax.nn.eqx.ssvi import SSVIConv, SSVILinear
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
    "SparseMultiHeadAttention",
    "TermWeightHead",
    "to_dense",
    "to_sparse",
]

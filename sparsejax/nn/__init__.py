"""Flax NNX layers over sparsejax's core; their Equinox counterparts (same class names) are in
`sparsejax.nn.eqx`.

Block-sparse / N:M linear layers, sparse multi-head attention, sparse autoencoders and LISTA, and the
model surgery that deploys a pruned model's ``Linear`` layers on the sparse kernels
(`to_sparse`, `to_dense`).
"""

from sparsejax.nn import eqx
from sparsejax.nn.attention import SparseMultiHeadAttention
from sparsejax.nn.linear import BlockSparseLinear, NMLinear, SparseStructure
from sparsejax.nn.lista import LISTA
from sparsejax.nn.masked import Masked
from sparsejax.nn.moe import MoE
from sparsejax.nn.sae import SAEStateVariable, SparseAutoencoder
from sparsejax.nn.sparse_linear import SparseConv1x1, SparseLinear
from sparsejax.nn.ssvi import SSVIConv, SSVILinear, merge_posterior, split_posterior
from sparsejax.nn.surgery import to_dense, to_sparse

__all__ = [
    "BlockSparseLinear",
    "LISTA",
    "MoE",
    "Masked",
    "NMLinear",
    "SAEStateVariable",
    "SSVIConv",
    "SSVILinear",
    "SparseAutoencoder",
    "SparseConv1x1",
    "SparseLinear",
    "SparseMultiHeadAttention",
    "SparseStructure",
    "eqx",
    "merge_posterior",
    "split_posterior",
    "to_dense",
    "to_sparse",
]

"""Flax NNX and Equinox layers over sparsejax's core: block-sparse / N:M linear layers, sparse
multi-head attention and sparse autoencoders."""

from sparsejax.dictionary.sae.eqx import EqxSparseAutoencoder
from sparsejax.dictionary.sae.nnx import NNXSparseAutoencoder
from sparsejax.nn.attention import EqxSparseMultiHeadAttention, SparseMultiHeadAttention
from sparsejax.nn.moe import MoE
from sparsejax.nn.block_sparse import (
    BlockSparseLinear,
    EqxBlockSparseLinear,
    EqxNMLinear,
    NMLinear,
    SparseStructure,
)

__all__ = [
    "BlockSparseLinear",
    "EqxBlockSparseLinear",
    "EqxNMLinear",
    "EqxSparseAutoencoder",
    "EqxSparseMultiHeadAttention",
    "MoE",
    "NMLinear",
    "NNXSparseAutoencoder",
    "SparseMultiHeadAttention",
    "SparseStructure",
]

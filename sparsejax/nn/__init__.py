"""Flax NNX layers over sparsejax's core; their Equinox counterparts (same class names) are in
`sparsejax.nn.eqx`.

Block-sparse / N:M linear layers, sparse multi-head attention, sparse autoencoders and LISTA, and the
model surgery that deploys a pruned model's ``Linear`` layers on the sparse kernels
(`to_sparse`, `to_dense`).

Every name loads on first use, so ``import sparsejax.nn.eqx`` never imports Flax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsejax._lazy import lazy_getattr

if TYPE_CHECKING:
    from sparsejax.nn import eqx
    from sparsejax.nn.activation import Threshold, ThresholdLinear
    from sparsejax.nn.attention import SparseMultiHeadAttention
    from sparsejax.nn.linear import BDWPLinear, BlockSparseLinear, NMLinear, SparseStructure
    from sparsejax.nn.lista import LISTA
    from sparsejax.nn.lsr import TermWeightHead
    from sparsejax.nn.masked import Masked
    from sparsejax.nn.moe import MoE
    from sparsejax.nn.peft import DeltaIndices, DeltaLinear, Frozen, merge_delta, to_delta
    from sparsejax.nn.sae import SAEStateVariable, SparseAutoencoder
    from sparsejax.nn.sparse_linear import SparseConv1x1, SparseLinear
    from sparsejax.nn.ssvi import SSVIConv, SSVILinear, merge_posterior, split_posterior
    from sparsejax.nn.surgery import to_dense, to_sparse

__all__ = [
    "BDWPLinear",
    "BlockSparseLinear",
    "DeltaIndices",
    "DeltaLinear",
    "Frozen",
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
    "TermWeightHead",
    "Threshold",
    "ThresholdLinear",
    "eqx",
    "merge_delta",
    "merge_posterior",
    "split_posterior",
    "to_delta",
    "to_dense",
    "to_sparse",
]

_HOMES = {
    "eqx": "eqx",
    "TermWeightHead": "lsr",
    "Threshold": "activation",
    "ThresholdLinear": "activation",
    "SparseMultiHeadAttention": "attention",
    "BDWPLinear": "linear",
    "BlockSparseLinear": "linear",
    "NMLinear": "linear",
    "SparseStructure": "linear",
    "LISTA": "lista",
    "Masked": "masked",
    "MoE": "moe",
    "DeltaIndices": "peft",
    "DeltaLinear": "peft",
    "Frozen": "peft",
    "merge_delta": "peft",
    "to_delta": "peft",
    "SAEStateVariable": "sae",
    "SparseAutoencoder": "sae",
    "SSVIConv": "ssvi",
    "SSVILinear": "ssvi",
    "merge_posterior": "ssvi",
    "split_posterior": "ssvi",
    "SparseConv1x1": "sparse_linear",
    "SparseLinear": "sparse_linear",
    "to_dense": "surgery",
    "to_sparse": "surgery",
}

__getattr__ = lazy_getattr("sparsejax.nn", globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

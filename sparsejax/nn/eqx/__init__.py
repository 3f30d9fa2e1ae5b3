"""Equinox layers over sparsejax's core, with the same class names as their Flax NNX
counterparts in `sparsejax.nn` (e.g. `sparsejax.nn.eqx.BlockSparseLinear`).

Every name loads on first use; none of these modules imports Flax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsejax._lazy import lazy_getattr

if TYPE_CHECKING:
    from sparsejax.nn.eqx.activation import ThresholdLinear
    from sparsejax.nn.eqx.attention import SparseMultiHeadAttention
    from sparsejax.nn.eqx.linear import BDWPLinear, BlockSparseLinear, NMLinear
    from sparsejax.nn.eqx.lista import LISTA
    from sparsejax.nn.eqx.lsr import TermWeightHead
    from sparsejax.nn.eqx.masked import Masked
    from sparsejax.nn.eqx.moe import MoE
    from sparsejax.nn.eqx.peft import DeltaLinear, merge_delta, to_delta
    from sparsejax.nn.eqx.sae import SparseAutoencoder
    from sparsejax.nn.eqx.sparse_linear import SparseConv1x1, SparseLinear
    from sparsejax.nn.eqx.ssvi import SSVIConv, SSVILinear, posterior_of, with_posterior
    from sparsejax.nn.eqx.surgery import to_dense, to_sparse

__all__ = [
    "BDWPLinear",
    "BlockSparseLinear",
    "DeltaLinear",
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
    "TermWeightHead",
    "ThresholdLinear",
    "merge_delta",
    "posterior_of",
    "to_delta",
    "to_dense",
    "to_sparse",
    "with_posterior",
]

_HOMES = {
    "TermWeightHead": "lsr",
    "ThresholdLinear": "activation",
    "SparseMultiHeadAttention": "attention",
    "BDWPLinear": "linear",
    "BlockSparseLinear": "linear",
    "NMLinear": "linear",
    "LISTA": "lista",
    "Masked": "masked",
    "MoE": "moe",
    "DeltaLinear": "peft",
    "merge_delta": "peft",
    "to_delta": "peft",
    "SparseAutoencoder": "sae",
    "SSVIConv": "ssvi",
    "SSVILinear": "ssvi",
    "posterior_of": "ssvi",
    "with_posterior": "ssvi",
    "SparseConv1x1": "sparse_linear",
    "SparseLinear": "sparse_linear",
    "to_dense": "surgery",
    "to_sparse": "surgery",
}

__getattr__ = lazy_getattr("sparsejax.nn.eqx", globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

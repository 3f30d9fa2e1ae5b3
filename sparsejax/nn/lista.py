"""Flax NNX LISTA (learned ISTA, Gregor and LeCun 2010) over `sparsejax.dictionary.lista_apply`."""

from __future__ import annotations

from flax import nnx
from jaxtyping import Array, Float

from sparsejax.dictionary.lasso import lista_apply, lista_init

__all__ = ["LISTA"]


class LISTA(nnx.Module):
    """Flax NNX LISTA: ``LISTA(dictionary, alpha, n_layers)(signals) -> codes``.

    ``nnx.Param`` fields ``encoder``, ``lateral``, ``threshold`` initialised by
    `sparsejax.dictionary.lista_init`, trainable with ``nnx.Optimizer``; the Equinox counterpart
    is `sparsejax.nn.eqx.LISTA`.
    """

    def __init__(self, dictionary: Float[Array, "n_features n_atoms"], alpha: float, n_layers: int):
        p = lista_init(dictionary, alpha, n_layers)
        self.encoder = nnx.Param(p["encoder"])
        self.lateral = nnx.Param(p["lateral"])
        self.threshold = nnx.Param(p["threshold"])

    def __call__(self, signals: Float[Array, "... n_features"]) -> Float[Array, "... n_atoms"]:
        """Codes of ``signals`` (`sparsejax.dictionary.lista_apply`)."""
        return lista_apply(
            {"encoder": self.encoder[...], "lateral": self.lateral[...],
             "threshold": self.threshold[...]},
            signals,
        )

"""Equinox LISTA (learned ISTA, Gregor and LeCun 2010) over `sparsejax.dictionary.lista_apply`."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float

from sparsejax.dictionary.lasso import lista_apply, lista_init

__all__ = ["LISTA"]


class LISTA(eqx.Module):
    """Equinox LISTA: ``LISTA(dictionary, alpha, n_layers)(signals) -> codes``.

    The Equinox counterpart of `sparsejax.nn.LISTA`; the functions are
    `sparsejax.dictionary.lista_init` / `sparsejax.dictionary.lista_apply`.

    Fields are the arrays of `sparsejax.dictionary.lista_init`; train them with any optax
    optimiser, for example on ``||y - z D^T||^2`` (unsupervised) or on ``||z - z_star||^2``
    against ISTA/FISTA codes.
    """

    encoder: Array
    lateral: Array
    threshold: Array

    def __init__(self, dictionary: Float[Array, "n_features n_atoms"], alpha: float, n_layers: int):
        p = lista_init(dictionary, alpha, n_layers)
        self.encoder, self.lateral, self.threshold = p["encoder"], p["lateral"], p["threshold"]

    def __call__(self, signals: Float[Array, "... n_features"]) -> Float[Array, "... n_atoms"]:
        """Codes of ``signals`` (`sparsejax.dictionary.lista_apply`)."""
        return lista_apply(
            {"encoder": self.encoder, "lateral": self.lateral, "threshold": self.threshold}, signals
        )

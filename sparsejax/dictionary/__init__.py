"""Sparse dictionary codes: OMP, ISTA/FISTA/LISTA, dictionary learning, semi-NMF, CoSpaDi,
tokenizer transplantation."""

from sparsejax.dictionary.lasso import (
    LISTA,
    LISTAModule,
    fista,
    ista,
    lasso_objective,
    lipschitz_constant,
    lista_apply,
    lista_init,
    soft_threshold,
)
from sparsejax.dictionary.omp import SparseCode, omp

__all__ = [
    "LISTA",
    "LISTAModule",
    "SparseCode",
    "fista",
    "ista",
    "lasso_objective",
    "lipschitz_constant",
    "lista_apply",
    "lista_init",
    "omp",
    "soft_threshold",
]

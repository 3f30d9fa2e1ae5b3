"""Sparse dictionary codes: OMP, ISTA/FISTA/LISTA, dictionary learning, semi-NMF, CoSpaDi,
tokenizer transplantation."""

from sparsejax.dictionary.omp import SparseCode, omp

__all__ = ["SparseCode", "omp"]

"""Sparse dictionary codes: OMP, ISTA/FISTA/LISTA, dictionary learning, semi-NMF, CoSpaDi,
tokenizer transplantation."""

from sparsejax.dictionary.cospadi import CoSpaDiResult, cospadi, output_error, truncated_svd
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
from sparsejax.dictionary.learning import (
    OnlineDictionaryState,
    atom_recovery,
    init_dictionary,
    ksvd,
    ksvd_atom_updates,
    minibatch_dictionary_learning,
    online_dictionary_init,
    online_dictionary_update,
    sparse_encode,
)
from sparsejax.dictionary.omp import SparseCode, omp
from sparsejax.dictionary.seminmf import SemiNMFResult, semi_nmf, semi_nmf_step
from sparsejax.dictionary.transplant import transplant_embeddings

__all__ = [
    "CoSpaDiResult",
    "SemiNMFResult",
    "cospadi",
    "output_error",
    "semi_nmf",
    "semi_nmf_step",
    "transplant_embeddings",
    "truncated_svd",
    "LISTA",
    "LISTAModule",
    "OnlineDictionaryState",
    "SparseCode",
    "atom_recovery",
    "init_dictionary",
    "ksvd",
    "ksvd_atom_updates",
    "minibatch_dictionary_learning",
    "online_dictionary_init",
    "online_dictionary_update",
    "sparse_encode",
    "fista",
    "ista",
    "lasso_objective",
    "lipschitz_constant",
    "lista_apply",
    "lista_init",
    "omp",
    "soft_threshold",
]

"""Sparse dictionary codes: OMP, ISTA/FISTA/LISTA, the elastic net, dictionary learning,
binary and spike-and-slab sparse coding by truncated EM, semi-NMF, CoSpaDi, Concept Lancet, tokenizer
transplantation (this package) and sparse autoencoders (the subpackage
`sparsejax.dictionary.sae`, whose names are used qualified: ``sae.topk``, ``sae.forward``)."""

from sparsejax.dictionary import sae
from sparsejax.dictionary.bsc import (
    BSCParams,
    BSCPosterior,
    bsc_candidates,
    bsc_em_step,
    bsc_fit,
    bsc_init,
    bsc_posterior,
    state_matrix,
)
from sparsejax.dictionary.cospadi import (
    CoSpaDiResult,
    cospadi,
    output_error,
    truncated_svd,
)
from sparsejax.dictionary.gsc import (
    GSCParams,
    GSCPosterior,
    gsc_em_step,
    gsc_fit,
    gsc_init,
    gsc_posterior,
)
from sparsejax.dictionary.lancet import (
    add_concept,
    concept_atoms,
    concept_coefficients,
    remove_concept,
    replace_concept,
)
from sparsejax.dictionary.lasso import (
    elastic_net,
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
from sparsejax.dictionary.omp import (
    SparseCode,
    omp,
)
from sparsejax.dictionary.seminmf import (
    SemiNMFResult,
    semi_nmf,
    semi_nmf_step,
)
from sparsejax.dictionary.transplant import (
    transplant_embeddings,
)

__all__ = [
    "BSCParams",
    "BSCPosterior",
    "GSCParams",
    "GSCPosterior",
    "CoSpaDiResult",
    "OnlineDictionaryState",
    "SemiNMFResult",
    "SparseCode",
    "add_concept",
    "atom_recovery",
    "bsc_candidates",
    "bsc_em_step",
    "bsc_fit",
    "bsc_init",
    "bsc_posterior",
    "gsc_em_step",
    "gsc_fit",
    "gsc_init",
    "gsc_posterior",
    "concept_atoms",
    "concept_coefficients",
    "cospadi",
    "elastic_net",
    "fista",
    "init_dictionary",
    "ista",
    "ksvd",
    "ksvd_atom_updates",
    "lasso_objective",
    "lipschitz_constant",
    "lista_apply",
    "lista_init",
    "minibatch_dictionary_learning",
    "omp",
    "online_dictionary_init",
    "online_dictionary_update",
    "output_error",
    "remove_concept",
    "replace_concept",
    "sae",
    "semi_nmf",
    "semi_nmf_step",
    "soft_threshold",
    "sparse_encode",
    "state_matrix",
    "transplant_embeddings",
    "truncated_svd",
]

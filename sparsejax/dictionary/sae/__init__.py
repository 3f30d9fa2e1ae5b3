"""Sparse autoencoders and transcoders: pure functions, metrics, training, NNX/Equinox modules.

The functional core (`.functional`) takes a params dict and a static `SAEConfig`;
`.activations` holds the sparsifying activations, `.losses` the auxiliary losses,
`.decoder` the unit-norm decoder constraint and the geometric-median bias init,
`.metrics` FVU / L0 / dead fraction / CE loss recovered, `.train` ``train_sae``,
`.deactivate` interpret-then-deactivate concept editing.
The Flax NNX and Equinox modules are `sparsejax.nn.SparseAutoencoder` and
`sparsejax.nn.eqx.SparseAutoencoder`.
"""

from sparsejax.dictionary.sae.activations import (
    abs_topk,
    batch_topk,
    feature_choice,
    gradient_topk,
    jumprelu,
    jumprelu_step,
    mutual_choice,
    rectangle,
    threshold_activation,
    topk,
    topk_indices,
    zipf_capacities,
)
from sparsejax.dictionary.sae.deactivate import (
    ConceptEdit,
    concept_features,
    deactivate,
    deactivate_concept,
    deactivation_error,
    gate_threshold,
)
from sparsejax.dictionary.sae.decoder import (
    geometric_median,
    normalize_decoder,
    remove_decoder_parallel_grads,
    remove_parallel_component,
    unit_norm_rows,
)
from sparsejax.dictionary.sae.functional import (
    ACTIVATIONS,
    SAEConfig,
    SAEOutput,
    SAEState,
    dead_mask,
    decode,
    encode,
    forward,
    init_sae,
    init_state,
    pre_activation,
    prefix_reconstructions,
    sae_loss,
    update_state,
)
from sparsejax.dictionary.sae.losses import (
    aux_zipf_loss,
    auxk_loss,
    decoder_weighted_l1,
    underutilised_mask,
)
from sparsejax.dictionary.sae.metrics import (
    ce_loss_recovered,
    dead_fraction,
    explained_variance,
    fvu,
    l0,
)
from sparsejax.dictionary.sae.train import TrainResult, make_train_step, train_sae

__all__ = [
    "ACTIVATIONS",
    "ConceptEdit",
    "SAEConfig",
    "SAEOutput",
    "SAEState",
    "TrainResult",
    "abs_topk",
    "aux_zipf_loss",
    "auxk_loss",
    "batch_topk",
    "ce_loss_recovered",
    "concept_features",
    "dead_fraction",
    "deactivate",
    "deactivate_concept",
    "deactivation_error",
    "dead_mask",
    "decode",
    "decoder_weighted_l1",
    "encode",
    "explained_variance",
    "feature_choice",
    "forward",
    "fvu",
    "gate_threshold",
    "geometric_median",
    "gradient_topk",
    "init_sae",
    "init_state",
    "jumprelu",
    "jumprelu_step",
    "l0",
    "make_train_step",
    "mutual_choice",
    "normalize_decoder",
    "pre_activation",
    "prefix_reconstructions",
    "rectangle",
    "remove_decoder_parallel_grads",
    "remove_parallel_component",
    "sae_loss",
    "threshold_activation",
    "topk",
    "topk_indices",
    "train_sae",
    "underutilised_mask",
    "unit_norm_rows",
    "update_state",
    "zipf_capacities",
]

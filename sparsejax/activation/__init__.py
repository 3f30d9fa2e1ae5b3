"""Activation (contextual) sparsity: skip the weight rows whose input is zero.

Pure functions over arrays; the speed comes from `sparsejax.ops.sparse_input_matmul`.

* thresholds (TEAL, CATS, R-Sparse conventions): `calibrate_thresholds`, `sparsify`;
* calibration and application through a model's ``tap`` hook (the one of
  `sparsejax.oneshot.prune_model`): `collect_inputs`, `threshold_tap`, `rsparse_tap`;
* TEAL's greedy per-projection allocation: `greedy_sparsities`, `block_output_error`;
* R-Sparse: `rsparse_factors`, `rsparse_linear`, `rsparse_search`;
* gated MLPs: `swiglu_mlp`, `cats_mlp` (CATS), `griffin_neurons` + `select_neurons` (Griffin);
* `sirius_generate` (Sirius: sparse decoding checked and rolled back by the full model);
* CoreMatching: `core_neurons`, `core_tokens`, `elbow_value`;
* Deja Vu: `dejavu_train`, `dejavu_predict`, `dejavu_loss`, `dejavu_init` (MLP neurons) and
  `dejavu_train_heads`, `dejavu_head_loss`, `dejavu_head_labels`, `dejavu_head_norms`
  (attention heads);
* TEAL's prompt rule (sparsify only the second half of a prompt): `teal_sparsify`,
  ``threshold_tap(..., prefill="half")``.
"""

from sparsejax.activation.corematching import core_neurons, core_tokens, elbow_value
from sparsejax.activation.dejavu import (
    DejaVuPredictor,
    dejavu_head_labels,
    dejavu_head_loss,
    dejavu_head_norms,
    dejavu_init,
    dejavu_loss,
    dejavu_predict,
    dejavu_train,
    dejavu_train_heads,
)
from sparsejax.activation.greedy import GreedyResult, block_output_error, greedy_sparsities
from sparsejax.activation.rsparse import (
    RSparse,
    rsparse_factors,
    rsparse_linear,
    rsparse_search,
    rsparse_tap,
)
from sparsejax.activation.sirius import SiriusResult, sirius_generate
from sparsejax.activation.swiglu import cats_mlp, griffin_neurons, select_neurons, swiglu_mlp
from sparsejax.activation.taps import collect_inputs, threshold_tap
from sparsejax.activation.thresholds import (
    PREFILL_RULES,
    THRESHOLD_METHODS,
    calibrate_thresholds,
    sparsify,
    teal_sparsify,
)

__all__ = [
    "PREFILL_RULES",
    "THRESHOLD_METHODS",
    "DejaVuPredictor",
    "GreedyResult",
    "RSparse",
    "SiriusResult",
    "block_output_error",
    "calibrate_thresholds",
    "cats_mlp",
    "collect_inputs",
    "core_neurons",
    "core_tokens",
    "dejavu_head_labels",
    "dejavu_head_loss",
    "dejavu_head_norms",
    "dejavu_init",
    "dejavu_loss",
    "dejavu_predict",
    "dejavu_train",
    "dejavu_train_heads",
    "elbow_value",
    "greedy_sparsities",
    "griffin_neurons",
    "rsparse_factors",
    "rsparse_linear",
    "rsparse_search",
    "rsparse_tap",
    "select_neurons",
    "sirius_generate",
    "sparsify",
    "swiglu_mlp",
    "teal_sparsify",
    "threshold_tap",
]

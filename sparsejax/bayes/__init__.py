"""Sparse Bayesian layers and sparse Bayesian learning.

* SSVI (sparse subspace variational inference): a mean-field Gaussian posterior on a sparse
  subspace (`Posterior`, `init_posterior`), the local reparameterisation trick (`linear_lrt`,
  `conv_lrt`), the KL and ELBO (`kl_divergence`, `elbo`), SSVI's removal scores (`expected_abs`,
  `snr_mean_abs`) and subspace update (`subspace_update`); predictive metrics (`predict`,
  `predict_model` over a whole model, `accuracy`, `nll`, `expected_calibration_error`,
  `predictive_entropy`) and `training_flops`; the paper's configuration as one object
  (`SSVI_CIFAR`, an `SSVIPreset`).
* Sparse Bayesian learning: ARD regression (`sbl`) and its Kronecker-dictionary form (`kron_sbl`).
"""

from sparsejax.bayes.lrt import conv_lrt, expected_abs, linear_lrt, snr_mean_abs
from sparsejax.bayes.metrics import (
    accuracy,
    expected_calibration_error,
    nll,
    predict,
    predict_model,
    predictive_entropy,
    training_flops,
)
from sparsejax.bayes.posterior import (
    Posterior,
    elbo,
    init_kernel,
    init_posterior,
    kl_divergence,
    kl_weight,
    sample_weights,
    sigma_of,
)
from sparsejax.bayes.preset import SSVI_CIFAR, SSVIPreset
from sparsejax.bayes.sbl import SBLResult, kron_sbl, sbl
from sparsejax.bayes.subspace import CRITERIA, removal_scores, subspace_update
from sparsejax.bayes.transform import ssvi

__all__ = [
    "CRITERIA",
    "Posterior",
    "SBLResult",
    "SSVIPreset",
    "SSVI_CIFAR",
    "accuracy",
    "conv_lrt",
    "elbo",
    "expected_abs",
    "expected_calibration_error",
    "init_kernel",
    "init_posterior",
    "kl_divergence",
    "kl_weight",
    "kron_sbl",
    "linear_lrt",
    "nll",
    "predict",
    "predict_model",
    "predictive_entropy",
    "removal_scores",
    "sample_weights",
    "sbl",
    "sigma_of",
    "snr_mean_abs",
    "ssvi",
    "subspace_update",
    "training_flops",
]

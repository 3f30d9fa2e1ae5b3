"""Sparse Bayesian layers and sparse Bayesian learning.

* SSVI (sparse subspace variational inference): a mean-field Gaussian posterior on a sparse
  subspace (`Posterior`, `init_posterior`), the local reparameterisation trick (`linear_lrt`,
  `conv_lrt`), the KL and ELBO (`kl_divergence`, `elbo`), SSVI's removal scores (`expected_abs`,
  `snr`) and subspace update (`subspace_update`).
"""

from sparsejax.bayes.lrt import conv_lrt, expected_abs, linear_lrt, snr
from sparsejax.bayes.posterior import (
    Posterior,
    elbo,
    init_posterior,
    kl_divergence,
    kl_weight,
    sample_weights,
    sigma_of,
)
from sparsejax.bayes.subspace import CRITERIA, drop_fraction_at, removal_scores, subspace_update

__all__ = [
    "CRITERIA",
    "Posterior",
    "conv_lrt",
    "drop_fraction_at",
    "elbo",
    "expected_abs",
    "init_posterior",
    "kl_divergence",
    "kl_weight",
    "linear_lrt",
    "removal_scores",
    "sample_weights",
    "sigma_of",
    "snr",
    "subspace_update",
]

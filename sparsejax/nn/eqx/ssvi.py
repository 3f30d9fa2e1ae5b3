"""Equinox SSVI layers: the same as `sparsejax.nn.SSVILinear` / `sparsejax.nn.SSVIConv`.

Fields ``mu``, ``rho`` (float arrays, trained), ``mask`` (a bool array, which
``eqx.filter(model, eqx.is_inexact_array)`` and ``eqx.filter_grad`` skip) and ``bias``. Thin over
`sparsejax.bayes`; `update_subspace` returns a new layer (``eqx.tree_at``).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_int
from sparsejax.bayes.lrt import conv_lrt, linear_lrt
from sparsejax.bayes.metrics import predict
from sparsejax.bayes.posterior import Posterior, kl_divergence, sigma_of
from sparsejax.bayes.subspace import subspace_update
from sparsejax.nn.ssvi import init_sparse_gaussian

__all__ = ["SSVIConv", "SSVILinear"]


class _SSVIBase(eqx.Module):
    mu: Float[Array, "..."]
    rho: Float[Array, "..."]
    mask: Bool[Array, "..."]
    bias: Float[Array, " out"] | None

    def _forward(self, key, x):
        raise NotImplementedError

    def posterior(self) -> Posterior:
        """The kernel's `sparsejax.bayes.Posterior` (single-leaf trees)."""
        return Posterior(self.mu, self.rho, self.mask)

    def __call__(self, x: Array, *, key: jax.Array | None = None) -> Array:
        """One LRT sample with ``key``; the mean-weights output without."""
        return self._forward(key, x)

    def predict(self, x: Array, key: jax.Array, *, samples: int) -> Array:
        """Monte-Carlo mean of ``samples`` stochastic passes."""
        return predict(self._forward, key, x, samples=samples)

    def kl(self, prior_sigma: float = 1.0) -> Float[Array, ""]:
        """KL of the kernel's posterior to ``N(0, prior_sigma^2)`` over the active entries."""
        return kl_divergence(self.posterior(), prior_sigma)

    def update_subspace(self, grad_mu: Array, step: int | Array, **kwargs):
        """A copy with `sparsejax.bayes.subspace_update` applied (keyword arguments passed through)."""
        new = subspace_update(self.posterior(), grad_mu, step, **kwargs)
        return eqx.tree_at(lambda m: (m.mu, m.rho, m.mask), self, (new.mu, new.rho, new.mask))


class SSVILinear(_SSVIBase):
    """Equinox SSVI linear layer ``[in, out]``; arguments as `sparsejax.nn.SSVILinear` with
    ``key`` instead of ``rngs``."""

    def __init__(self, in_features: int, out_features: int, *, sparsity: float, key: jax.Array,
                 rho_init: float = -5.0, use_bias: bool = True,
                 param_dtype: jnp.dtype = jnp.float32):
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        self.mu, self.rho, self.mask = init_sparse_gaussian(
            key, (in_features, out_features), in_features, sparsity, rho_init, param_dtype)
        self.bias = jnp.zeros((out_features,), param_dtype) if use_bias else None

    def _forward(self, key, x):
        return linear_lrt(key, x, self.mu, sigma_of(self.rho, self.mask), self.mask, self.bias)


class SSVIConv(_SSVIBase):
    """Equinox SSVI 2-D convolution (NHWC, HWIO); arguments as `sparsejax.nn.SSVIConv` with
    ``key`` instead of ``rngs``."""

    strides: int | tuple[int, int] = eqx.field(static=True)
    padding: str | tuple = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 sparsity: float, key: jax.Array, strides: int | Sequence[int] = 1,
                 padding: str | Sequence[tuple[int, int]] = "SAME", rho_init: float = -5.0,
                 use_bias: bool = True, param_dtype: jnp.dtype = jnp.float32):
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        shape = (check_int(kh, "kernel_size", minimum=1), check_int(kw, "kernel_size", minimum=1),
                 in_features, out_features)
        self.mu, self.rho, self.mask = init_sparse_gaussian(
            key, shape, kh * kw * in_features, sparsity, rho_init, param_dtype)
        self.bias = jnp.zeros((out_features,), param_dtype) if use_bias else None
        self.strides = strides if isinstance(strides, int) else tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def _forward(self, key, x):
        return conv_lrt(key, x, self.mu, sigma_of(self.rho, self.mask), self.mask, self.bias,
                        strides=self.strides, padding=self.padding)

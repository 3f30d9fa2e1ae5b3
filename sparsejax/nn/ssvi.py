"""Flax NNX SSVI layers: mean-field Gaussian linear / conv layers on a sparse subspace.

Thin over `sparsejax.bayes`: the forward pass is `sparsejax.bayes.linear_lrt` /
`sparsejax.bayes.conv_lrt` (a local-reparameterisation sample with ``key``, the mean weights without),
`predict` averages ``samples`` stochastic passes, `kl` is `sparsejax.bayes.kl_divergence`, and
`update_subspace` is `sparsejax.bayes.subspace_update` written back into the layer.

Variables: ``mu`` and ``rho`` (``nnx.Param``, ``sigma = softplus(rho)``; both exactly ``0`` outside
the mask), ``mask`` (a non-trainable `SparseStructure` bool array) and an optional ``bias``
(``nnx.Param``, deterministic). ``dL/dmu`` is the dense gradient (the growth signal); mask the
gradients with ``layer.mask`` before an optimizer step, or train with `sparsejax.bayes.ssvi` on
``layer.posterior()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sparsejax import masks as _masks
from sparsejax._checks import check_int, check_sparsity
from sparsejax.bayes.lrt import conv_lrt, linear_lrt
from sparsejax.bayes.metrics import predict
from sparsejax.bayes.posterior import Posterior, kl_divergence, sigma_of
from sparsejax.bayes.subspace import subspace_update
from sparsejax.nn.linear import SparseStructure

__all__ = ["SSVIConv", "SSVILinear"]


def init_sparse_gaussian(key: jax.Array, shape: tuple[int, ...], fan_in: int, sparsity: float,
                         rho_init: float, dtype) -> tuple[Array, Array, Array]:
    """``(mu, rho, mask)`` of a fresh SSVI kernel: a uniformly random mask with the exact kept count
    of `sparsejax.masks.unstructured`, LeCun-normal means scaled to the kept fan-in, ``rho_init``."""
    check_sparsity(sparsity)
    k_mask, k_mu = jax.random.split(key)
    mask = _masks.random(k_mask, shape, sparsity)
    std = 1.0 / math.sqrt(max(1.0, (1.0 - float(sparsity)) * fan_in))
    zero = jnp.zeros((), dtype)
    mu = jnp.where(mask, jax.random.normal(k_mu, shape, dtype) * std, zero)
    rho = jnp.where(mask, jnp.asarray(rho_init, dtype), zero)
    return mu, rho, mask


class _SSVIBase(nnx.Module):
    def _forward(self, key, x):
        raise NotImplementedError

    def posterior(self) -> Posterior:
        """The kernel's `sparsejax.bayes.Posterior` (single-leaf trees)."""
        return Posterior(self.mu[...], self.rho[...], self.mask[...])

    def __call__(self, x: Array, *, key: jax.Array | None = None) -> Array:
        """One LRT sample with ``key``; the mean-weights output without."""
        return self._forward(key, x)

    def predict(self, x: Array, key: jax.Array, *, samples: int) -> Array:
        """Monte-Carlo mean of ``samples`` stochastic passes."""
        return predict(self._forward, key, x, samples=samples)

    def kl(self, prior_sigma: float = 1.0) -> Float[Array, ""]:
        """KL of the kernel's posterior to ``N(0, prior_sigma^2)`` over the active entries."""
        return kl_divergence(self.posterior(), prior_sigma)

    def update_subspace(self, grad_mu: Array, step: int | Array, **kwargs) -> None:
        """`sparsejax.bayes.subspace_update` on this kernel (keyword arguments passed through)."""
        new = subspace_update(self.posterior(), grad_mu, step, **kwargs)
        self.mu[...], self.rho[...], self.mask[...] = new.mu, new.rho, new.mask

    def _sigma(self):
        return sigma_of(self.rho[...], self.mask[...])

    def _bias(self):
        return None if self.bias is None else self.bias[...]


class SSVILinear(_SSVIBase):
    """SSVI linear layer ``[in, out]`` (SSVI's ``StoLinear``) on a random sparse subspace.

    Args:
        in_features: input size.
        out_features: output size.
        sparsity: fraction of kernel entries outside the subspace, in ``[0, 1]``.
        rho_init: initial ``rho`` of the active entries.
        use_bias: add a deterministic bias.
        param_dtype: parameter dtype.
        rngs: ``nnx.Rngs`` (the ``params`` stream draws the mask and the means).
    """

    def __init__(self, in_features: int, out_features: int, *, sparsity: float,
                 rho_init: float = -5.0, use_bias: bool = True,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        mu, rho, mask = init_sparse_gaussian(rngs.params(), (in_features, out_features),
                                             in_features, sparsity, rho_init, param_dtype)
        self.mu, self.rho, self.mask = nnx.Param(mu), nnx.Param(rho), SparseStructure(mask)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None

    def _forward(self, key, x):
        return linear_lrt(key, x, self.mu[...], self._sigma(), self.mask[...], self._bias())


class SSVIConv(_SSVIBase):
    """SSVI 2-D convolution (SSVI's ``StoConv2d``), NHWC inputs, HWIO kernel.

    Args:
        in_features: input channels.
        out_features: output channels.
        kernel_size: ``(kh, kw)`` or an int.
        sparsity: fraction of kernel entries outside the subspace, in ``[0, 1]``.
        strides: an int or a pair.
        padding: ``"SAME"``, ``"VALID"`` or explicit pairs.
        rho_init: as in `SSVILinear`.
        use_bias: as in `SSVILinear`.
        param_dtype: as in `SSVILinear`.
        rngs: as in `SSVILinear`.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 sparsity: float, strides: int | Sequence[int] = 1,
                 padding: str | Sequence[tuple[int, int]] = "SAME", rho_init: float = -5.0,
                 use_bias: bool = True, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        shape = (check_int(kh, "kernel_size", minimum=1), check_int(kw, "kernel_size", minimum=1),
                 in_features, out_features)
        mu, rho, mask = init_sparse_gaussian(rngs.params(), shape, kh * kw * in_features,
                                             sparsity, rho_init, param_dtype)
        self.mu, self.rho, self.mask = nnx.Param(mu), nnx.Param(rho), SparseStructure(mask)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.strides = strides if isinstance(strides, int) else tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def _forward(self, key, x):
        return conv_lrt(key, x, self.mu[...], self._sigma(), self.mask[...], self._bias(),
                        strides=self.strides, padding=self.padding)

"""Equinox SSVI layers: the same as `sparsejax.nn.SSVILinear` / `sparsejax.nn.SSVIConv`.

Fields ``mu``, ``rho`` (float arrays, trained), ``mask`` (a bool array, which
``eqx.filter(model, eqx.is_inexact_array)`` and ``eqx.filter_grad`` skip) and ``bias``. Thin over
`sparsejax.bayes` (initialisation `sparsejax.bayes.init_kernel`, forward
`sparsejax.bayes.linear_lrt` / `conv_lrt`); `update_subspace` returns a new layer
(``eqx.tree_at``). Imports no Flax.

Training: `posterior_of` gives the whole model's `sparsejax.bayes.Posterior` for
`sparsejax.bayes.ssvi` and `with_posterior` puts one back into the model (inside the jitted loss,
and at the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import _is_none, check_int
from sparsejax.bayes.lrt import conv_lrt, linear_lrt
from sparsejax.bayes.metrics import predict
from sparsejax.bayes.posterior import Posterior, init_kernel, kl_divergence, sigma_of
from sparsejax.bayes.subspace import subspace_update

__all__ = ["SSVIConv", "SSVILinear", "posterior_of", "with_posterior"]


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
        self.mu, self.rho, self.mask = init_kernel(
            key, (in_features, out_features), fan_in=in_features, sparsity=sparsity,
            rho_init=rho_init, dtype=param_dtype)
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
        self.mu, self.rho, self.mask = init_kernel(
            key, shape, fan_in=kh * kw * in_features, sparsity=sparsity, rho_init=rho_init,
            dtype=param_dtype)
        self.bias = jnp.zeros((out_features,), param_dtype) if use_bias else None
        self.strides = strides if isinstance(strides, int) else tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def _forward(self, key, x):
        return conv_lrt(key, x, self.mu, sigma_of(self.rho, self.mask), self.mask, self.bias,
                        strides=self.strides, padding=self.padding)


def _is_layer(x) -> bool:
    return isinstance(x, _SSVIBase)


def _fields(layer: _SSVIBase, mu, rho, mask, bias) -> _SSVIBase:
    return eqx.tree_at(lambda m: (m.mu, m.rho, m.mask, m.bias), layer, (mu, rho, mask, bias),
                       is_leaf=_is_none)


def posterior_of(model: Any) -> Posterior:
    """The model's variational parameters as one `sparsejax.bayes.Posterior`, for `ssvi`.

    The trees have the model's structure: at every SSVI layer ``posterior.mu`` holds the layer
    with ``mu`` and ``bias`` (``rho`` and ``mask`` ``None``), ``posterior.rho`` / ``posterior.mask``
    the layer with ``rho`` / the mask in its ``mu`` field (everything else ``None``). Every other
    float array of the model is a point estimate in ``posterior.mu``; non-float leaves are
    ``None`` (put back by `with_posterior`).

    Args:
        model: an Equinox model containing `SSVILinear` / `SSVIConv` layers.

    Returns:
        a `Posterior`.
    """
    if not any(_is_layer(x) for x in jax.tree.leaves(model, is_leaf=_is_layer)):
        raise ValueError(f"`model` must contain SSVI layers (sparsejax.nn.eqx.SSVILinear / "
                         f"SSVIConv); got a {type(model).__name__} without any.")

    def part(which):
        def leaf(x):
            if _is_layer(x):
                return {"mu": _fields(x, x.mu, None, None, x.bias),
                        "rho": _fields(x, x.rho, None, None, None),
                        "mask": _fields(x, x.mask, None, None, None)}[which]
            return x if which == "mu" and eqx.is_inexact_array(x) else None
        return jax.tree.map(leaf, model, is_leaf=_is_layer)

    return Posterior(part("mu"), part("rho"), part("mask"))


def with_posterior(model: Any, posterior: Posterior) -> Any:
    """``model`` with the values of ``posterior`` (from `posterior_of`; pure, works under ``jit``).

    Args:
        model: the model `posterior_of` was called on (supplies the non-float leaves).
        posterior: a `Posterior` of that structure, e.g.
            ``v._replace(mask=sparsejax.training.masks_of(opt_state)[0])``.

    Returns:
        a new model.
    """
    def leaf(mu, rho, mask):
        if _is_layer(mu):
            return _fields(mu, mu.mu, rho.mu, mask.mu, mu.bias)
        return mu

    params = jax.tree.map(leaf, posterior.mu, posterior.rho, posterior.mask,
                          is_leaf=lambda x: _is_layer(x) or x is None)
    return eqx.combine(params, model)

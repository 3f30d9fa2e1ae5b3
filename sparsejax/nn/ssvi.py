"""Flax NNX SSVI layers: mean-field Gaussian linear / conv layers on a sparse subspace.

Thin over `sparsejax.bayes`: the kernel is initialised by `sparsejax.bayes.init_kernel`, the
forward pass is `sparsejax.bayes.linear_lrt` / `sparsejax.bayes.conv_lrt` (a
local-reparameterisation sample with ``key``, the mean weights without), `predict` averages
``samples`` stochastic passes, `kl` is `sparsejax.bayes.kl_divergence`, and `update_subspace` is
`sparsejax.bayes.subspace_update` written back into the layer.

Variables: ``mu`` and ``rho`` (``nnx.Param``, ``sigma = softplus(rho)``; both exactly ``0`` outside
the mask), ``mask`` (a non-trainable `SparseStructure` bool array) and an optional ``bias``
(``nnx.Param``, deterministic). ``dL/dmu`` is the dense gradient (the growth signal).

Training: `split_posterior` gives the whole model's `sparsejax.bayes.Posterior` (every SSVI kernel
with its mask, every other ``nnx.Param`` as a point estimate) for `sparsejax.bayes.ssvi`, and
`merge_posterior` rebuilds the model from it (inside the jitted loss, and at the end). Do not mask
the gradients with ``layer.mask`` under a plain ``nnx.Optimizer``: at a subspace update the
optimizer's moments would move dropped entries off zero; `sparsejax.bayes.ssvi` resets them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.tree_util import DictKey
from jaxtyping import Array, Float

from sparsejax._checks import _is_none, check_int
from sparsejax.bayes.lrt import conv_lrt, linear_lrt
from sparsejax.bayes.metrics import predict
from sparsejax.bayes.posterior import Posterior, init_kernel, kl_divergence, sigma_of
from sparsejax.bayes.subspace import subspace_update
from sparsejax.nn.linear import SparseStructure

__all__ = ["SSVIConv", "SSVILinear", "merge_posterior", "split_posterior"]


def _layers(model: nnx.Module) -> list[tuple[tuple, Any]]:
    layers = [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, _SSVIBase)]
    if not layers:
        raise ValueError(f"`model` must contain SSVI layers (sparsejax.nn.SSVILinear / SSVIConv); "
                         f"got a {type(model).__name__} without any.")
    return layers


def _at(tree: dict, path: tuple) -> dict:
    for k in path:
        tree = tree[k]
    return tree


def split_posterior(model: nnx.Module) -> tuple[nnx.GraphDef, Posterior, nnx.State]:
    """The model's variational parameters as one `sparsejax.bayes.Posterior`, for `ssvi`.

    The posterior trees are the pure dict of the model's ``nnx.Param`` state: at every SSVI
    layer the ``mu`` entry holds the kernel (``mu`` in ``posterior.mu``, ``rho`` in
    ``posterior.rho``, the mask in ``posterior.mask``) and the ``rho`` entry is ``None``; every
    other Param (biases, plain ``nnx.Linear`` kernels) is a point estimate in ``posterior.mu``.

    Args:
        model: an NNX module containing `SSVILinear` / `SSVIConv` layers.

    Returns:
        ``(graphdef, posterior, state)``: pass them to `merge_posterior`.
    """
    layers = _layers(model)
    graphdef, state = nnx.split(model)
    mu = nnx.state(model, nnx.Param).to_pure_dict()
    rho = jax.tree.map(lambda _: None, mu)
    mask = jax.tree.map(lambda _: None, mu)
    for path, layer in layers:
        _at(rho, path)["mu"] = _at(mu, path)["rho"]
        _at(mu, path)["rho"] = None
        _at(mask, path)["mu"] = layer.mask[...]
    return graphdef, Posterior(mu, rho, mask), state


def merge_posterior(graphdef: nnx.GraphDef, posterior: Posterior, state: nnx.State) -> nnx.Module:
    """The model of `split_posterior` with the values of ``posterior`` (pure; works under ``jit``).

    Args:
        graphdef: from `split_posterior`.
        posterior: a `Posterior` with the structure `split_posterior` returned (e.g.
            ``v._replace(mask=sparsejax.training.masks_of(opt_state)[0])``).
        state: from `split_posterior` (the variables that are not in the posterior).

    Returns:
        a new NNX module.
    """
    updates: dict[Any, Any] = {}

    def put(path, value):
        d = updates
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = value

    for (path, mu), (_, rho), (_, m) in zip(
            *(jax.tree_util.tree_flatten_with_path(t, is_leaf=_is_none)[0]
              for t in (posterior.mu, posterior.rho, posterior.mask))):
        keys = tuple(k.key if isinstance(k, DictKey) else k for k in path)
        if mu is not None:
            put(keys, mu)
        if rho is not None:
            put(keys[:-1] + ("rho",), rho)
            put(keys[:-1] + ("mask",), m)
    new_state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(new_state, updates)
    return nnx.merge(graphdef, new_state)


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
        mu, rho, mask = init_kernel(rngs.params(), (in_features, out_features),
                                    fan_in=in_features, sparsity=sparsity, rho_init=rho_init,
                                    dtype=param_dtype)
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
        mu, rho, mask = init_kernel(rngs.params(), shape, fan_in=kh * kw * in_features,
                                    sparsity=sparsity, rho_init=rho_init, dtype=param_dtype)
        self.mu, self.rho, self.mask = nnx.Param(mu), nnx.Param(rho), SparseStructure(mask)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.strides = strides if isinstance(strides, int) else tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def _forward(self, key, x):
        return conv_lrt(key, x, self.mu[...], self._sigma(), self.mask[...], self._bias(),
                        strides=self.strides, padding=self.padding)

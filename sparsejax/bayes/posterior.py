"""A mean-field Gaussian posterior restricted to a sparse subspace, as pytrees that mirror the params.

`Posterior` holds three trees with the structure of the model's params:

* ``mu``: the posterior means. On a *selected* leaf (chosen by ``where``) the entries outside the
  mask are exactly ``0``; an unselected leaf (a bias, a norm scale) is an ordinary point estimate.
* ``rho``: ``sigma = softplus(rho)`` on selected leaves (``0`` outside the mask), ``None`` elsewhere.
* ``mask``: the shared bool mask of ``mu`` and ``rho`` on selected leaves, ``None`` elsewhere.

Pruned entries hold ``mu = rho = 0`` and contribute nothing: not to the outputs (`linear_lrt`,
`conv_lrt`, `sample_weights`), not to the KL (`kl_divergence`).

For gradients and optax, use the *variational parameters* ``post._replace(mask=None)`` (float leaves
only, so ``jax.grad`` and ``optax.apply_updates`` work as usual) and keep the mask aside (the `ssvi`
transform keeps it in its state).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    _is_none,
    check_choice,
    check_float_array,
    check_int,
    check_positive_float,
    check_same_structure,
    check_sparsity,
)
from sparsejax.select import Where
from sparsejax.tree import compute_masks

__all__ = [
    "Posterior",
    "elbo",
    "init_kernel",
    "init_posterior",
    "kl_divergence",
    "kl_weight",
    "sample_weights",
    "sigma_of",
]

PyTree = Any


class Posterior(NamedTuple):
    """Mean-field Gaussian posterior ``N(mu, softplus(rho)^2)`` on a masked subspace.

    Attributes:
        mu: tree mirroring the params (means; point estimates on unselected leaves).
        rho: tree mirroring the params: ``rho`` arrays on selected leaves, ``None`` elsewhere.
        mask: tree mirroring the params: bool arrays on selected leaves, ``None`` elsewhere (or
            ``None`` as a whole in the variational-parameter form ``post._replace(mask=None)``).
    """

    mu: PyTree
    rho: PyTree
    mask: PyTree


def _check_posterior(post: Any, name: str = "posterior") -> Posterior:
    if not isinstance(post, Posterior):
        raise TypeError(f"`{name}` must be a sparsejax.bayes.Posterior; got {type(post).__name__}.")
    if post.mask is None:
        raise ValueError(f"`{name}.mask` must be a mask tree (bool arrays / None) mirroring "
                         f"`{name}.mu`; got None. Rebuild it with post._replace(mask=masks).")
    check_same_structure(post.mu, post.rho, f"{name}.rho", f"{name}.mu")
    check_same_structure(post.mu, post.mask, f"{name}.mask", f"{name}.mu")
    for path_leaves in zip(*(jax.tree.leaves_with_path(t, is_leaf=_is_none)
                             for t in (post.mu, post.rho, post.mask))):
        (path, mu), (_, rho), (_, mask) = path_leaves
        if (rho is None) != (mask is None):
            raise ValueError(f"`{name}` leaf {jax.tree_util.keystr(path)}: `rho` and `mask` must "
                             f"both be arrays or both be None; got rho={type(rho).__name__}, "
                             f"mask={type(mask).__name__}.")
        if mask is not None and not (jnp.shape(mu) == jnp.shape(rho) == jnp.shape(mask)):
            raise ValueError(f"`{name}` leaf {jax.tree_util.keystr(path)}: mu, rho and mask must "
                             f"have the same shape; got {jnp.shape(mu)}, {jnp.shape(rho)}, "
                             f"{jnp.shape(mask)}.")
    return post


def _check_positive(value: Any, name: str) -> Any:
    """A static value must be a float > 0; a (traced) array passes."""
    if not isinstance(value, jax.Array):
        check_positive_float(value, name)
    return value


def sigma_of(rho: Float[Array, "*shape"], mask: Any) -> Float[Array, "*shape"]:
    """``softplus(rho)`` on the mask, exactly ``0`` outside it."""
    return jnp.where(mask, _softplus_on(rho, mask), jnp.zeros((), rho.dtype))


def _softplus_on(rho: jax.Array, mask: Any) -> jax.Array:
    """``softplus(where(mask, rho, 0))``: the one expression of ``sigma`` that `sigma_of` and
    `kl_divergence` share, so that XLA computes it (and its gradient) once per leaf."""
    return jax.nn.softplus(jnp.where(mask, rho, jnp.zeros((), rho.dtype)))


def init_posterior(
    key: jax.Array,
    params: PyTree,
    sparsity: float,
    *,
    allocation: str = "uniform",
    where: Where = None,
    rho_init: float = -5.0,
) -> Posterior:
    """A posterior on a random sparse subspace (SSVI's random initial mask).

    The mask of each selected leaf is uniformly random with the leaf's sparsity from
    ``allocation`` (`sparsejax.compute_masks` with ``scores="random"``); ``mu`` is the given
    ``params`` on the mask (``0`` outside) and ``rho = rho_init`` on the mask (``0`` outside).
    Unselected leaves keep their value in ``mu`` and get ``None`` in ``rho``/``mask``.

    Args:
        key: PRNG key for the masks.
        params: any pytree of float arrays (already initialised, e.g. by Flax).
        sparsity: fraction of pruned entries, in ``[0, 1]`` (``0`` is dense mean-field VI).
        allocation: ``"uniform"``, ``"erk"`` or ``"er"`` (see `sparsejax.allocation`).
        where: leaf selector (default: float arrays with ``ndim >= 2``).
        rho_init: initial ``rho`` (``sigma = softplus(rho_init)``; ``-5`` gives ``sigma ~ 0.0067``).

    Returns:
        `Posterior` mirroring ``params``.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1]`` or an unknown ``allocation``.
    """
    check_sparsity(sparsity)
    check_choice(allocation, "allocation", ("uniform", "erk", "er"))
    masks = compute_masks(params, sparsity=sparsity, scores="random", key=key, where=where,
                          allocation=allocation)

    def mu_leaf(x, m):
        return x if m is None else jnp.where(m, x, jnp.zeros((), x.dtype))

    def rho_leaf(x, m):
        return None if m is None else jnp.where(m, jnp.asarray(rho_init, x.dtype),
                                                jnp.zeros((), x.dtype))

    mu = jax.tree.map(mu_leaf, params, masks, is_leaf=_is_none)
    rho = jax.tree.map(rho_leaf, params, masks, is_leaf=_is_none)
    return Posterior(mu, rho, masks)


def init_kernel(
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    fan_in: int,
    sparsity: float,
    rho_init: float = -5.0,
    dtype: Any = jnp.float32,
) -> Posterior:
    """A fresh SSVI kernel (the layers' initialiser): a single-array `Posterior`.

    LeCun-normal means scaled to the *kept* fan-in, ``std = 1 / sqrt(max(1, (1 - sparsity) *
    fan_in))``, then `init_posterior` on them: a uniformly random mask with the exact kept count of
    `sparsejax.masks.unstructured`, ``mu`` the means on the mask and ``rho = rho_init`` there.

    Args:
        key: PRNG key.
        shape: kernel shape (``[in, out]`` or ``[kh, kw, in, out]``).
        fan_in: inputs per output (``in`` or ``kh * kw * in``).
        sparsity: fraction of entries outside the subspace, in ``[0, 1]``.
        rho_init: initial ``rho`` on the mask.
        dtype: parameter dtype.

    Returns:
        ``Posterior(mu, rho, mask)`` with arrays of ``shape`` (not trees).
    """
    check_sparsity(sparsity)
    fan_in = check_int(fan_in, "fan_in", minimum=1)
    k_mask, k_mu = jax.random.split(key)
    std = 1.0 / math.sqrt(max(1.0, (1.0 - float(sparsity)) * fan_in))
    means = jax.random.normal(k_mu, shape, dtype) * jnp.asarray(std, dtype)
    return init_posterior(k_mask, means, sparsity, where=lambda path, leaf: True,
                          rho_init=rho_init)


def sample_weights(key: jax.Array, posterior: Posterior) -> PyTree:
    """One draw ``theta = mu + sigma * eps`` per selected leaf (``0`` outside the mask).

    Unselected leaves are returned as their point estimate ``mu``.

    Args:
        key: PRNG key.
        posterior: a `Posterior`.

    Returns:
        a tree like ``posterior.mu``.
    """
    _check_posterior(posterior)
    leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    rhos = treedef.flatten_up_to(posterior.rho)
    masks = treedef.flatten_up_to(posterior.mask)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, mu, rho, m in zip(keys, leaves, rhos, masks):
        if m is None:
            out.append(mu)
        else:
            eps = jax.random.normal(k, mu.shape, mu.dtype)
            out.append(jnp.where(m, mu + sigma_of(rho, m) * eps, jnp.zeros((), mu.dtype)))
    return jax.tree.unflatten(treedef, out)


def kl_divergence(posterior: Posterior, prior_sigma: float | Float[Array, ""] = 1.0
                  ) -> Float[Array, ""]:
    """``KL(q || N(0, prior_sigma^2))`` summed over the *active* entries of the selected leaves.

    Per entry (closed form): ``log(s0 / s) + (s^2 + mu^2) / (2 s0^2) - 1/2`` with
    ``s = softplus(rho)``. Inactive entries contribute exactly ``0`` (and no gradient); unselected
    leaves are point estimates and contribute nothing.

    Args:
        posterior: a `Posterior`.
        prior_sigma: prior standard deviation ``s0 > 0``.

    Returns:
        float32 scalar.

    Raises:
        ValueError: ``prior_sigma <= 0`` (when concrete).
    """
    _check_posterior(posterior)
    _check_positive(prior_sigma, "prior_sigma")
    total = jnp.zeros((), jnp.float32)
    leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    for mu, rho, m in zip(leaves, treedef.flatten_up_to(posterior.rho),
                          treedef.flatten_up_to(posterior.mask)):
        if m is None:
            continue
        s0 = jnp.asarray(prior_sigma, jnp.float32)
        mu32 = jnp.where(m, mu, 0).astype(jnp.float32)
        # float32 rho: sigma_of's own expression (computed once with the forward's); a narrower
        # rho: softplus in float32
        s = (_softplus_on(rho, m) if rho.dtype == jnp.float32 else
             jax.nn.softplus(jnp.where(m, rho, 0).astype(jnp.float32)))
        per = jnp.log(s0) - jnp.log(s) + (s**2 + mu32**2) / (2 * s0**2) - 0.5
        total = total + jnp.sum(jnp.where(m, per, 0.0))
    return total


def kl_weight(step: Int[Array, ""] | int, warmup_steps: int) -> Float[Array, ""]:
    """Linear KL warm-up factor ``min(1, step / warmup_steps)`` (``1`` when ``warmup_steps == 0``)."""
    warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
    if warmup_steps == 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)


def elbo(
    log_likelihood: Float[Array, ""],
    kl: Float[Array, ""],
    *,
    num_data: int,
    step: Int[Array, ""] | int = 0,
    warmup_steps: int = 0,
) -> Float[Array, ""]:
    """The evidence lower bound per data point, with a linear KL warm-up.

    ``elbo = log_likelihood - kl_weight(step, warmup_steps) * kl / num_data``, where
    ``log_likelihood`` is the mini-batch *mean* log-likelihood (a Monte-Carlo estimate) and ``kl``
    the full `kl_divergence`. Train by minimising ``-elbo``.

    Args:
        log_likelihood: scalar mean log-likelihood of the batch.
        kl: scalar KL divergence of the posterior to the prior.
        num_data: size of the training set.
        step: the training step (may be traced).
        warmup_steps: length of the linear warm-up (``0``: no warm-up).

    Returns:
        float32 scalar.
    """
    num_data = check_int(num_data, "num_data", minimum=1)
    log_likelihood = check_float_array(log_likelihood, "log_likelihood")
    return log_likelihood - kl_weight(step, warmup_steps) * kl / num_data

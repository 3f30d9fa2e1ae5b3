"""Closed-form moments of ``|theta|`` and the local reparameterisation trick on a sparse subspace.

* `expected_abs` / `snr_mean_abs`: ``E|theta|`` and ``E|theta| / std|theta|`` of
  ``theta ~ N(mu, sigma^2)`` (the folded normal): the SSVI reference's removal scores
  ``E_mean_abs`` and ``SNR_mean_abs`` (its default).
* `linear_lrt` / `conv_lrt`: the pre-activations of a mean-field Gaussian linear / 2-D convolution
  layer sampled by the local reparameterisation trick (Kingma et al., 2015), as in SSVI's
  ``StoLinear`` / ``StoConv2d``: ``out = x @ (mu*M) + sqrt(x^2 @ (sigma*M)^2 + 1e-8) * eps``.

The mean path is a straight-through mask: the forward uses ``mu * M`` but ``d out / d mu`` is the
*dense* gradient (the gradient with respect to the effective weight ``mu * M``), which is the growth
signal of `subspace_update` (RigL's ``|dL/dW|``). The variance path is masked, so ``rho`` gets no
gradient outside the mask. The `ssvi` transform masks both gradients before the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_bool_array, check_float_array, is_concrete, must_be

__all__ = ["conv_lrt", "expected_abs", "linear_lrt", "snr_mean_abs"]

_SQRT2 = math.sqrt(2.0)
_SQRT2_OVER_PI = math.sqrt(2.0 / math.pi)
LRT_EPS = 1e-8


def _check_sigma(sigma) -> jax.Array:
    """A float array of standard deviations; ``ValueError`` on a negative entry (when concrete)."""
    sigma = check_float_array(sigma, "sigma")
    if is_concrete(sigma) and sigma.size and bool(jnp.any(sigma < 0)):
        raise ValueError(must_be("sigma", "non-negative", f"min {float(jnp.min(sigma))}", raw=True))
    return sigma


def _folded_parts(mu: jax.Array, sigma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(E|theta|, Var|theta|, positive)`` with the variance in a cancellation-free form.

    With ``a = |mu| / (sigma sqrt 2)`` and ``d = E|theta| - |mu| = sigma sqrt(2/pi) exp(-a^2) -
    |mu| erfc(a)``, ``Var|theta| = mu^2 + sigma^2 - E|theta|^2 = sigma^2 - 2 |mu| d - d^2``.
    """
    positive = sigma > 0
    s = jnp.where(positive, sigma, jnp.ones((), sigma.dtype))
    m = jnp.abs(mu)
    a = m / (s * _SQRT2)
    d = s * _SQRT2_OVER_PI * jnp.exp(-(a**2)) - m * lax.erfc(a)
    d = jnp.where(positive, d, jnp.zeros((), d.dtype))
    var = jnp.where(positive, jnp.maximum(s**2 - 2 * m * d - d**2, 0.0), jnp.zeros((), d.dtype))
    return m + d, var, positive


def expected_abs(mu: Float[Array, "*shape"], sigma: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """``E|theta|`` for ``theta ~ N(mu, sigma^2)`` (mean of the folded normal), elementwise.

    The SSVI reference's removal score ``E_mean_abs``.

    ``E|theta| = mu erf(mu / (sigma sqrt 2)) + sigma sqrt(2/pi) exp(-mu^2 / (2 sigma^2))``; equals
    ``|mu|`` where ``sigma == 0``.

    Args:
        mu: means (float).
        sigma: standard deviations ``>= 0``, broadcastable with ``mu``.

    Returns:
        float array of the broadcast shape.
    """
    mu = check_float_array(mu, "mu")
    return _folded_parts(mu, _check_sigma(sigma))[0]


def snr_mean_abs(mu: Float[Array, "*shape"], sigma: Float[Array, "*shape"]
                 ) -> Float[Array, "*shape"]:
    """Signal-to-noise ratio of ``|theta|``: ``E|theta| / sqrt(Var|theta|)``.

    The SSVI reference's default removal score ``SNR_mean_abs`` (not its ``snr``, which is
    ``|mu| / sigma``).

    ``Var|theta| = mu^2 + sigma^2 - (E|theta|)^2``, evaluated without cancellation for
    ``|mu| >> sigma`` (see `expected_abs`). ``sigma == 0`` gives ``inf`` (a deterministic nonzero
    weight) or ``0`` for ``mu == sigma == 0``. At ``mu = 0`` the SNR is
    ``sqrt(2/pi) / sqrt(1 - 2/pi) ~ 1.3236`` for any ``sigma``.

    Args:
        mu: means (float).
        sigma: standard deviations ``>= 0``, broadcastable with ``mu``.

    Returns:
        float array of the broadcast shape, ``>= 0``.
    """
    mu = check_float_array(mu, "mu")
    mean, var, positive = _folded_parts(mu, _check_sigma(sigma))
    tiny = jnp.finfo(var.dtype).tiny
    ratio = mean / jnp.sqrt(jnp.maximum(var, tiny))
    return jnp.where(positive, ratio, jnp.where(mean > 0, jnp.inf, 0.0)).astype(mean.dtype)


def _masked_mean(mu: jax.Array, mask: jax.Array) -> jax.Array:
    """``mu * M`` in the forward, the identity in the backward (straight-through)."""
    masked = jnp.where(mask, mu, jnp.zeros((), mu.dtype))
    return mu + lax.stop_gradient(masked - mu)


def _lrt(key, op, x, mu, sigma, mask, bias):
    """``op(x, mu*M) + bias + sqrt(op(x^2, (sigma*M)^2) + eps) * N(0, 1)`` (the mean if no key)."""
    mean = op(x, _masked_mean(mu, mask))
    if bias is not None:
        mean = mean + bias
    if key is None:
        return mean
    var = op(x * x, jnp.where(mask, sigma * sigma, jnp.zeros((), sigma.dtype)))
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.sqrt(var + LRT_EPS) * eps


def _check_lrt(x, mu, sigma, mask):
    x = check_float_array(x, "x")
    mu = check_float_array(mu, "mu")
    sigma = _check_sigma(sigma)
    mask = check_bool_array(mask, "mask")
    if not (mu.shape == sigma.shape == mask.shape):
        raise ValueError(f"`mu`, `sigma` and `mask` must have the same shape; got {mu.shape}, "
                         f"{sigma.shape}, {mask.shape}.")
    return x, mu, sigma, mask


def linear_lrt(
    key: jax.Array | None,
    x: Float[Array, "*batch n_in"],
    mu: Float[Array, "n_in n_out"],
    sigma: Float[Array, "n_in n_out"],
    mask: Bool[Array, "n_in n_out"],
    bias: Float[Array, " n_out"] | None = None,
) -> Float[Array, "*batch n_out"]:
    """Local-reparameterisation sample of ``x @ theta + bias``, ``theta ~ N(mu, sigma^2)`` on ``mask``.

    ``out = x @ (mu*M) + bias + sqrt(x^2 @ (sigma*M)^2 + 1e-8) * eps`` with ``eps ~ N(0, 1)`` of the
    output's shape: each output is exactly distributed as with a weight sample per example.

    Args:
        key: PRNG key for ``eps``; ``None`` returns the mean ``x @ (mu*M) + bias`` (mean-weights mode).
        x: inputs ``[..., n_in]``.
        mu: weight means ``[n_in, n_out]`` (the Flax ``Dense`` layout).
        sigma: weight standard deviations ``[n_in, n_out]``, ``>= 0``.
        mask: bool ``[n_in, n_out]``, ``True`` = active.
        bias: optional deterministic bias ``[n_out]``.

    Returns:
        ``[..., n_out]``.

    Raises:
        TypeError: non-float ``x``/``mu``/``sigma`` or a non-bool ``mask``.
        ValueError: shapes that do not match.
    """
    x, mu, sigma, mask = _check_lrt(x, mu, sigma, mask)
    if mu.ndim != 2 or x.shape[-1] != mu.shape[0]:
        raise ValueError(f"`x` must be [..., n_in] and `mu` [n_in, n_out] with the same n_in; got "
                         f"x {x.shape}, mu {mu.shape}.")
    return _lrt(key, lambda inputs, kernel: inputs @ kernel, x, mu, sigma, mask, bias)


def conv_lrt(
    key: jax.Array | None,
    x: Float[Array, "batch height width c_in"],
    mu: Float[Array, "kh kw c_in c_out"],
    sigma: Float[Array, "kh kw c_in c_out"],
    mask: Bool[Array, "kh kw c_in c_out"],
    bias: Float[Array, " c_out"] | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> Float[Array, "batch out_h out_w c_out"]:
    """Local-reparameterisation sample of a 2-D convolution (NHWC inputs, HWIO kernels).

    ``out = conv(x, mu*M) + bias + sqrt(conv(x^2, (sigma*M)^2) + 1e-8) * eps``: each output position
    is exactly distributed as under a fresh weight sample (``lax.conv_general_dilated`` semantics).

    Args:
        key: PRNG key; ``None`` returns the mean ``conv(x, mu*M) + bias``.
        x: inputs ``[N, H, W, C_in]``.
        mu: kernel means ``[KH, KW, C_in, C_out]`` (the Flax ``Conv`` layout).
        sigma: kernel standard deviations, same shape, ``>= 0``.
        mask: bool kernel mask, same shape.
        bias: optional deterministic bias ``[C_out]``.
        strides: an int or a pair.
        padding: ``"SAME"``, ``"VALID"`` or explicit ``[(lo, hi), (lo, hi)]``.

    Returns:
        ``[N, H', W', C_out]``.
    """
    x, mu, sigma, mask = _check_lrt(x, mu, sigma, mask)
    if x.ndim != 4 or mu.ndim != 4 or x.shape[-1] != mu.shape[2]:
        raise ValueError(f"`x` must be [N, H, W, C_in] and `mu` [KH, KW, C_in, C_out] with the same "
                         f"C_in; got x {x.shape}, mu {mu.shape}.")
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)

    def conv(inputs, kernel):
        return lax.conv_general_dilated(inputs, kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return _lrt(key, conv, x, mu, sigma, mask, bias)

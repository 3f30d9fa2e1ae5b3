"""Spike-and-slab sparse coding (GSC) trained by truncated EM, on the BSC core.

The model (Sheikh, Shelton and Lücke 2014): ``s_h ~ Bernoulli(pi_h)``, ``z_h ~ N(mu_h, psi_h)``,
``y | s, z ~ N(W (s * z), sigma^2 I_D)`` with ``W`` ``[D, H]``: each active cause contributes its
generative field scaled by a Gaussian amplitude. Given a binary state ``s`` with active set ``A``
the amplitudes integrate out in closed form, ``y | s ~ N(W_A mu_A, sigma^2 I + W_A Psi_A W_A^T)``,
and ``z_A | s, y`` is Gaussian with precision ``Lambda = W_A^T W_A / sigma^2 + Psi_A^{-1}`` and
mean ``kappa = mu_A + Lambda^{-1} W_A^T (y - W_A mu_A) / sigma^2``. All of it is computed through
``|A| x |A|`` matrices (Woodbury), never ``D x D`` ones.

Expectation Truncation is the BSC one (`sparsejax.dictionary.bsc`): the zero state, the ``H``
singletons and every state with 2 to ``gamma`` active among ``H'`` candidates
(`sparsejax.dictionary.bsc.active_sets`, the same layout as `BSCPosterior.log_joint`), the
candidates being the ``H'`` causes whose singleton state explains ``y`` best (largest
``log p(y | s = e_h)``, prosper's ``component_scores``). The M-step is closed form:

* ``W = (sum_n y_n <s z>_n^T) (sum_n <(s z)(s z)^T>_n)^{-1}``,
* ``pi = sum_n <s>_n / N`` (clipped to ``[5e-5, 1 - 5e-5]``),
* ``mu = sum_n <s z>_n / sum_n <s>_n``,
* ``psi_h = sum_n <s_h (z_h - mu_h)^2>_n / sum_n <s_h>_n + 1e-5``,
* ``sigma^2 = (sum_n ||y_n||^2 - tr(W^T W sum_n <(s z)(s z)^T>_n)) / (N D) + 1e-5`` (the new
  ``W``).

Follows ml-uol/prosper ``em/camodels/gsc_et.py`` (scalar ``sigma_sq``, diagonal ``psi_sq``, no
``Ncut``, the temperature dividing the log-likelihood) with its per-point, per-state loops replaced
by batched arrays under `jax.jit`, and four corrections to that code, each an exact EM update
where the reference is not: its log-joint omits the ``1/2`` of the Gaussian log-density (the
likelihood counts twice against the prior); its ``sigma^2`` uses ``<s z><s z>^T`` for the second
moment ``<(s z)(s z)^T>``; its ``psi`` uses ``<s_h><s_h z_h>`` for ``<s_h z_h>``; its full-matrix
``psi`` update multiplies by a matrix inverse elementwise (here ``psi`` is diagonal and divided
elementwise). With ``H' = H`` and ``gamma = H`` the E-step is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, check_int
from sparsejax.dictionary.bsc import (
    _call,
    _check_data,
    _expectations,
    _jit_fit,
    _normalize,
    active_sets,
    anneal_schedule,
    bsc_init,
    state_matrix,
    top_ascending,
)

__all__ = [
    "GSCParams",
    "GSCPosterior",
    "gsc_em_step",
    "gsc_fit",
    "gsc_init",
    "gsc_posterior",
]

_EPS = 1e-5
_PI_EPS = 5e-5


class GSCParams(NamedTuple):
    """GSC parameters (a pytree).

    Attributes:
        W: ``[D, H]``, one generative field per column.
        pi: ``[H]`` prior probability of each cause being active.
        mu: ``[H]`` mean of each cause's amplitude.
        psi: ``[H]`` variance of each cause's amplitude.
        sigma_sq: scalar observation noise variance.
    """

    W: Array
    pi: Array
    mu: Array
    psi: Array
    sigma_sq: Array


class GSCPosterior(NamedTuple):
    """The truncated posterior of `gsc_posterior`.

    Attributes:
        log_joint: ``[N, 1 + H + S]`` log p(s, y) (amplitudes integrated out) of the zero state,
            the ``H`` singletons and the ``S`` multi-cause states (tempered by ``T``).
        candidates: int ``[N, H']``, the selected causes, ascending.
        s: ``[N, H]``, ``<s>``.
        sz: ``[N, H]``, ``<s z>`` (the expected code).
        log_likelihood: ``[N]``, ``log sum_s p(s, y)`` over the truncated set (at ``T = 1``,
            exact with ``H' = H``, ``gamma = H``).
    """

    log_joint: Array
    candidates: Array
    s: Array
    sz: Array
    log_likelihood: Array


def _check(params, y, h_prime, gamma):
    if not isinstance(params, GSCParams):
        raise TypeError(f"`params` must be a GSCParams; got {type(params).__name__}")
    h_prime, gamma = _check_data(params.W, y, h_prime, gamma)
    h = params.W.shape[1]
    for name in ("pi", "mu", "psi"):
        shape = jnp.shape(getattr(params, name))
        if shape != (h,):
            raise ValueError(f"`params.{name}` must have shape ({h},); got {shape}")
    if jnp.shape(params.sigma_sq) != ():
        raise ValueError(f"`params.sigma_sq` must be a scalar; got shape "
                         f"{jnp.shape(params.sigma_sq)}")
    return h_prime, gamma


def _chol_inverse(a):
    """Cholesky diagonal and inverse of a batch of small SPD matrices ``[..., g, g]``, unrolled
    over ``g`` in elementwise array ops (LAPACK's per-matrix calls are slow for many tiny ones)."""
    g = a.shape[-1]
    rows = jnp.arange(g)
    chol = jnp.zeros_like(a)
    for j in range(g):
        col = a[..., :, j] - jnp.sum(chol[..., :, :j] * chol[..., j, None, :j], -1)
        col = jnp.where(rows >= j, col / jnp.sqrt(col[..., j, None]), 0.0)
        chol = chol.at[..., :, j].set(col)
    inv_l = jnp.zeros_like(a)                                    # L^{-1}, forward substitution
    for i in range(g):
        row = (rows == i).astype(a.dtype) - jnp.sum(chol[..., i, :i, None] * inv_l[..., :i, :], -2)
        inv_l = inv_l.at[..., i, :].set(row / chol[..., i, i, None])
    return (jnp.diagonal(chol, axis1=-2, axis2=-1),
            jnp.sum(inv_l[..., :, :, None] * inv_l[..., :, None, :], -3))


def _state_terms(params, y, index, valid, temperature):
    """Per point and state: tempered log-joint, untempered log-likelihood, kappa, Lambda^{-1}."""
    w, pi, mu, psi, s2 = params
    d = w.shape[0]
    valid = jnp.asarray(valid)
    vf = valid.astype(y.dtype)                                   # [S, g]
    wty = y @ w                                                  # [N, H]
    gram = w.T @ w                                               # [H, H]
    wty_a = jnp.take_along_axis(wty[:, None, :], index, axis=2) * vf       # [N, S, g]
    g_a = gram[index[..., :, None], index[..., None, :]] * (vf[:, :, None] * vf[:, None, :])
    mu_a = mu[index] * vf
    psi_a = jnp.where(valid, psi[index], 1.0)
    lam = g_a / s2 + (1.0 / psi_a)[..., None] * jnp.eye(index.shape[-1], dtype=y.dtype)
    chol_diag, lam_inv = _chol_inverse(lam)
    b = wty_a - jnp.sum(g_a * mu_a[..., None, :], -1)           # W_A^T (y - W_A mu_A)
    lam_inv_b = jnp.sum(lam_inv * b[..., None, :], -1)
    r2 = (jnp.sum(y * y, -1)[:, None] - 2 * jnp.sum(mu_a * wty_a, -1)
          + jnp.sum(mu_a * (wty_a - b), -1))                     # ||y - W_A mu_A||^2
    quad = r2 / s2 - jnp.sum(b * lam_inv_b, -1) / s2**2
    logdet = (d * jnp.log(s2) + jnp.sum(jnp.where(valid, jnp.log(psi_a), 0.0), -1)
              + 2 * jnp.sum(jnp.log(chol_diag), -1))
    log_lik = -0.5 * (d * jnp.log(2 * jnp.pi) + logdet + quad)   # [N, S]
    logit = jnp.log(pi) - jnp.log1p(-pi)
    log_prior = jnp.sum(jnp.log1p(-pi)) + jnp.sum(logit[index] * vf, -1)
    kappa = (mu_a + lam_inv_b / s2) * vf
    return log_prior + log_lik / temperature, kappa, lam_inv


def _candidates(params, y, h_prime):
    """The ``h_prime`` causes with the largest singleton log-likelihood, ascending by index."""
    h = params.W.shape[1]
    index, valid = active_sets(jnp.zeros((y.shape[0], 1), jnp.int32), h, 1)
    log_joint, *_ = _state_terms(params, y, index[:, 1:], valid[1:], 1.0)
    prior = jnp.log(params.pi) - jnp.log1p(-params.pi)
    score = log_joint - prior                                    # log p(y | s = e_h) + const
    return jnp.sort(top_ascending(score, h_prime), axis=1)


def _e_step(params, y, temperature, h_prime, gamma):
    n, h = y.shape[0], params.W.shape[1]
    cand = _candidates(params, y, h_prime)
    index, valid = active_sets(cand, h, gamma)
    log_joint, kappa, lam_inv = _state_terms(params, y, index, valid, temperature)
    q, log_z = _normalize(log_joint)                             # [N, S], [N]
    sm = jnp.asarray(state_matrix(h_prime, gamma), y.dtype)
    s, *_ = _expectations(q, cand, sm, h)
    flat = (jnp.arange(n)[:, None, None] * h + index).reshape(-1)
    qk = (q[..., None] * kappa).reshape(-1)
    sz = jax.ops.segment_sum(qk, flat, n * h).reshape(n, h)      # invalid entries add 0
    return log_joint, log_z, cand, index, valid, q, kappa, lam_inv, s, sz


def _posterior(params, y, temperature, h_prime, gamma):
    log_joint, log_z, cand, *_, s, sz = _e_step(params, y, temperature, h_prime, gamma)
    return GSCPosterior(log_joint, cand, s, sz, log_z)


def gsc_posterior(params: GSCParams, y: Float[Array, "N D"], *, h_prime: int, gamma: int,
                  temperature: float = 1.0) -> GSCPosterior:
    """The truncated E-step, for all data points at once.

    Args:
        params: `GSCParams`.
        y: data ``[N, D]``.
        h_prime: candidate causes per point (``H'``), ``1 <= h_prime <= H``.
        gamma: most active causes among the candidates, ``1 <= gamma <= h_prime``.
        temperature: deterministic-annealing temperature ``T > 0`` dividing the log-likelihood.

    Returns:
        `GSCPosterior`.
    """
    return _call(_posterior, _check, params, y, h_prime, gamma, temperature)


def _em_step(params, y, temperature, h_prime, gamma):
    n, d = y.shape
    h = params.W.shape[1]
    _, log_z, _, index, valid, q, kappa, lam_inv, s, sz = _e_step(params, y, temperature,
                                                                   h_prime, gamma)
    second = q[..., None, None] * (kappa[..., :, None] * kappa[..., None, :] + lam_inv)
    vf = jnp.asarray(valid, y.dtype)
    second = second * (vf[:, :, None] * vf[:, None, :])
    pair = (index[..., :, None] * h + index[..., None, :]).reshape(-1)
    szsz = jax.ops.segment_sum(second.reshape(-1), pair, h * h).reshape(h, h)   # sum over n
    sum_s, sum_sz = jnp.sum(s, 0), jnp.sum(sz, 0)
    w_new = jnp.linalg.solve(szsz, (y.T @ sz).T).T               # szsz is symmetric
    pi_new = jnp.clip(sum_s / n, _PI_EPS, 1 - _PI_EPS)
    mu_new = sum_sz / (sum_s + jnp.finfo(y.dtype).eps)
    psi_new = (jnp.diag(szsz) - mu_new * sum_sz) / (sum_s + jnp.finfo(y.dtype).eps) + _EPS
    s2_new = (jnp.sum(y * y) - jnp.sum((w_new.T @ w_new) * szsz)) / (n * d) + _EPS
    new = GSCParams(w_new, pi_new, mu_new, psi_new, s2_new)
    return new, jnp.mean(log_z)


def gsc_em_step(params: GSCParams, y: Float[Array, "N D"], *, h_prime: int, gamma: int,
                temperature: float = 1.0) -> tuple[GSCParams, Float[Array, ""]]:
    """One truncated-EM iteration: selection, E-step, closed-form M-step (see the module docstring).

    Args:
        params: current `GSCParams`.
        y: data ``[N, D]``.
        h_prime: as `gsc_posterior`.
        gamma: as `gsc_posterior`.
        temperature: as `gsc_posterior`.

    Returns:
        ``(new_params, mean truncated log-likelihood under the old params)``.
    """
    return _call(_em_step, _check, params, y, h_prime, gamma, temperature)


def gsc_init(key: Array, y: Float[Array, "N D"], n_causes: int) -> GSCParams:
    """prosper's GSC ``standard_init``: ``W`` as `sparsejax.dictionary.bsc_init`, ``pi`` uniform
    in ``[0.05, 0.95)``, ``mu ~ N(0, 1)``, ``psi`` uniform in ``[0.05, 2)``, ``sigma_sq`` the mean
    per-dimension data variance plus ``0.001``.

    Args:
        key: PRNG key.
        y: data ``[N, D]``.
        n_causes: ``H``.
    """
    y = check_float_array(y, "y", min_ndim=2)
    h = check_int(n_causes, "n_causes", minimum=1)
    k_w, k_pi, k_mu, k_psi = jax.random.split(key, 4)
    w = bsc_init(k_w, y, h).W
    dtype = w.dtype
    y = y.astype(dtype)
    pi = jnp.maximum(0.95 * jax.random.uniform(k_pi, (h,), dtype), 0.05)
    mu = jax.random.normal(k_mu, (h,), dtype)
    psi = jnp.maximum(2.0 * jax.random.uniform(k_psi, (h,), dtype), 0.05)
    sigma_sq = jnp.mean(jnp.var(y, axis=0)) + 0.001
    return GSCParams(w, pi, mu, psi, sigma_sq)


def gsc_fit(key: Array, y: Float[Array, "N D"], n_causes: int, *, h_prime: int, gamma: int,
            n_iter: int = 100, start_temperature: float = 4.0, anneal_fraction: float = 0.8
            ) -> tuple[GSCParams, Float[Array, " n_iter"]]:
    """Train GSC by truncated EM from `gsc_init`, with prosper's linear annealing schedule
    (`sparsejax.dictionary.bsc.anneal_schedule`; prosper's GSC bars example: 4 to 1 over 80%).
    All iterations run in one `jax.lax.scan`.

    Args:
        key: PRNG key for the initialisation.
        y: data ``[N, D]``.
        n_causes: ``H``.
        h_prime: as `gsc_posterior`.
        gamma: as `gsc_posterior`.
        n_iter: EM iterations.
        start_temperature: initial ``T >= 1``.
        anneal_fraction: share of iterations spent annealing, in ``(0, 1]``.

    Returns:
        ``(params, per-iteration mean truncated log-likelihood [n_iter])``.
    """
    temps = anneal_schedule(n_iter, start_temperature, anneal_fraction)
    params = gsc_init(key, y, n_causes)
    y = jnp.asarray(y, params.W.dtype)
    h_prime, gamma = _check(params, y, h_prime, gamma)
    return _jit_fit(_em_step, params, y, jnp.asarray(temps, params.W.dtype), h_prime=h_prime,
                    gamma=gamma)

"""Binary sparse coding (BSC) trained by truncated EM (Expectation Truncation), vectorised.

The model (Henniges et al. 2010): ``s ~ Bernoulli(pi)^H``, ``y | s ~ N(W s, sigma^2 I_D)`` with
``W`` ``[D, H]``. Expectation Truncation (Lücke and Eggert 2010) replaces the exact posterior
over the ``2^H`` states by one over a data-dependent set: the zero state, the ``H`` singletons,
and every state with 2 to ``gamma`` active causes among ``H'`` candidates, chosen per data point
by the selection function (the ``H'`` causes whose ``W`` column has the largest cosine with
``y``). The M-step is closed form:

* ``W = (sum_n <s s^T>_n)^{-1} (sum_n <s>_n y_n^T)`` (least squares),
* ``pi = E_pi_gamma * sum_n <|s|>_n / (H N)`` with ET's correction
  ``E_pi_gamma = pi H A / B``, ``A = sum_{g<=gamma} C(H,g) pi^g (1-pi)^(H-g)``, ``B`` the same
  sum weighted by ``g``,
* ``sigma^2 = sum_n <||y_n - W s||^2>_n / (D N)`` (with the previous ``W``).

A transcription of ml-uol/prosper ``em/camodels/bsc_et.py`` (its ``select_Hprimes``,
``E_step``, ``M_step`` with ``Ncut_factor = 0`` and ``anneal_prior = False``: the temperature
``T`` divides the log-likelihood, not the prior), with the reference's loop over data points
replaced by batched array code under `jax.jit`. With ``H' = H`` and ``gamma = H`` the state set
is all ``2^H`` states and the E-step is exact.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_float, check_float_array, check_int

__all__ = [
    "BSCParams",
    "active_sets",
    "anneal_schedule",
    "top_ascending",
    "BSCPosterior",
    "bsc_candidates",
    "bsc_em_step",
    "bsc_fit",
    "bsc_init",
    "bsc_posterior",
    "state_matrix",
]


class BSCParams(NamedTuple):
    """BSC parameters (a pytree).

    Attributes:
        W: ``[D, H]``, one generative field per column.
        pi: scalar prior probability of a cause being active.
        sigma: scalar observation noise standard deviation.
    """

    W: Array
    pi: Array
    sigma: Array


class BSCPosterior(NamedTuple):
    """The truncated posterior of `bsc_posterior`.

    Attributes:
        log_joint: ``[N, 1 + H + S]`` log p(s, y) of the zero state, the ``H`` singletons and the
            ``S`` multi-cause states over each point's candidates (tempered by ``T``).
        candidates: int ``[N, H']``, the selected causes.
        expectation: ``[N, H]``, ``<s>`` under the truncated posterior.
        log_likelihood: ``[N]``, ``log sum_s p(s, y)`` over the truncated set (at ``T = 1``, the
            ET lower bound on ``log p(y)``; exact with ``H' = H``, ``gamma = H``).
    """

    log_joint: Array
    candidates: Array
    expectation: Array
    log_likelihood: Array


def state_matrix(h_prime: int, gamma: int) -> np.ndarray:
    """All binary ``h_prime``-vectors with 2 to ``gamma`` ones, by size then lexicographically.

    Returns:
        uint8 ``[S, h_prime]`` with ``S = sum_{g=2}^{gamma} C(h_prime, g)`` (prosper's
        ``generate_state_matrix``).
    """
    h_prime = check_int(h_prime, "h_prime", minimum=1)
    gamma = check_int(gamma, "gamma", minimum=1, maximum=h_prime)
    rows = [c for g in range(2, gamma + 1) for c in itertools.combinations(range(h_prime), g)]
    sm = np.zeros((len(rows), h_prime), np.uint8)
    for i, c in enumerate(rows):
        sm[i, list(c)] = 1
    return sm


def _check_data(w, y: Array, h_prime: int, gamma: int, name: str = "params.W"
                ) -> tuple[int, int]:
    """Shared argument checks of the truncated-EM models (BSC, `sparsejax.dictionary.gsc`)."""
    w = check_float_array(w, name, min_ndim=2)
    if w.ndim != 2 or y.ndim != 2 or y.shape[1] != w.shape[0]:
        raise ValueError(f"`y` must have shape [N, D={w.shape[0]}] for {name} of shape "
                         f"{w.shape}; got {y.shape}")
    h = w.shape[1]
    h_prime = check_int(h_prime, "h_prime", minimum=1, maximum=h)
    gamma = check_int(gamma, "gamma", minimum=1, maximum=h_prime)
    return h_prime, gamma


def _check(params: BSCParams, y: Array, h_prime: int, gamma: int) -> tuple[int, int]:
    if not isinstance(params, BSCParams):
        raise TypeError(f"`params` must be a BSCParams; got {type(params).__name__}")
    return _check_data(params.W, y, h_prime, gamma)


def active_sets(candidates: Int[Array, "N h_prime"], h: int, gamma: int
                ) -> tuple[Int[Array, "N states g"], np.ndarray]:
    """The truncated state set of every data point as lists of active causes.

    The layout of `BSCPosterior.log_joint`: the zero state, the ``h`` singletons, then the rows
    of ``state_matrix(h_prime, gamma)`` over each point's candidates.

    Args:
        candidates: int ``[N, h_prime]``, the selected causes per point.
        h: number of causes ``H``.
        gamma: most active causes per state.

    Returns:
        ``(index, valid)``: int ``[N, 1 + h + S, g]`` cause indices (``g = gamma``; ``0`` where
        not valid) and the bool numpy ``[1 + h + S, g]`` mask of the real entries (the same for
        every point).
    """
    sm = state_matrix(candidates.shape[1], gamma)
    pos = np.zeros((1 + h + sm.shape[0], gamma), np.int32)
    valid = np.zeros(pos.shape, bool)
    valid[1:h + 1, 0] = True
    for i, row in enumerate(sm):
        on = np.flatnonzero(row)
        pos[1 + h + i, :on.size], valid[1 + h + i, :on.size] = on, True
    single = np.zeros(pos.shape, np.int32)
    single[1:h + 1, 0] = np.arange(h)
    multi = (np.arange(pos.shape[0]) > h)[None, :, None]
    index = jnp.where(multi, jnp.take(candidates, jnp.asarray(pos), axis=1), single[None])
    return jnp.where(valid[None], index, 0), valid


def anneal_schedule(n_iter: int, start_temperature: float, anneal_fraction: float
                    ) -> np.ndarray:
    """prosper's linear annealing schedule, float64 ``[n_iter]``.

    ``T`` falls linearly from ``start_temperature`` to 1 over the first ``anneal_fraction`` of
    the iterations, then stays at 1.

    Args:
        n_iter: iterations (``>= 1``).
        start_temperature: initial ``T >= 1``.
        anneal_fraction: share of iterations spent annealing, in ``(0, 1]``.
    """
    n_iter = check_int(n_iter, "n_iter", minimum=1)
    start = check_float(start_temperature, "start_temperature", minimum=1.0)
    frac = check_float(anneal_fraction, "anneal_fraction", minimum=0.0, exclusive_minimum=True,
                       maximum=1.0)
    progress = np.minimum(np.arange(n_iter) / max(frac * n_iter, 1.0), 1.0)
    return start + (1.0 - start) * progress


def bsc_candidates(w: Float[Array, "D H"], y: Float[Array, "N D"], h_prime: int
                   ) -> Int[Array, "N h_prime"]:
    """The selection function: per data point the ``h_prime`` causes of largest cosine with ``y``.

    Listed by increasing cosine (prosper's order, which fixes the order of the multi-cause
    states in `BSCPosterior.log_joint`).

    Args:
        w: ``[D, H]``.
        y: ``[N, D]``.
        h_prime: candidates per point, ``1 <= h_prime <= H``.
    """
    h_prime = check_int(h_prime, "h_prime", minimum=1, maximum=w.shape[1])
    # ||y|| is the same for every cause of a row: ranking (y @ w) / ||w|| ranks the cosines
    return top_ascending((y @ w) / jnp.linalg.norm(w, axis=0), h_prime)


def top_ascending(score: Float[Array, "N H"], k: int) -> Int[Array, "N k"]:
    """Indices of the ``k`` largest entries of each row, by increasing score (ties: lower index
    first), as ``np.argsort(score, axis=1)[:, -k:]`` (prosper's candidate selection).

    For ``H <= 64`` by counting ranks (``[N, H, H]`` comparisons, several times faster on CPU
    than `jax.lax.top_k` for the small ``H`` of these models), else by `jax.lax.top_k`.

    Args:
        score: ``[N, H]``.
        k: ``1 <= k <= H``.
    """
    h = score.shape[1]
    if h > 64:
        return jax.lax.top_k(score, k)[1][:, ::-1]
    idx = jnp.arange(h)
    below = ((score[:, None, :] < score[:, :, None])
             | ((score[:, None, :] == score[:, :, None]) & (idx[None, :] < idx[:, None])))
    slot = jnp.sum(below, -1) - (h - k)                      # [N, H]: ascending rank - (H - k)
    return jnp.sum((slot[:, :, None] == jnp.arange(k)) * idx[None, :, None], axis=1)


def _posterior_terms(params, y, sm, h_prime, temperature):
    """Log-joint, candidates, squared errors per state; shared by the E- and M-steps."""
    w, pi, sigma = params.W, params.pi, params.sigma
    d, h = w.shape
    cand = bsc_candidates(w, y, h_prime)
    # ||y - W s||^2 = ||y||^2 - 2 s.(W^T y) + s^T (W^T W) s: no [N, S, D] array of W s
    wty = y @ w                                               # [N, H]
    gram = w.T @ w                                            # [H, H]
    sq0 = jnp.sum(y * y, -1)[:, None]                         # [N, 1]
    sq1 = sq0 - 2 * wty + jnp.diag(gram)                      # [N, H]
    # the multi-cause states' -2 s.(W^T y)_c + s^T G_c s in one matmul over [N, 2H' + P]
    # features (candidate W^T y, diagonal and upper-triangle Gram entries, P = H'(H'-1)/2)
    iu, ju = np.triu_indices(h_prime, 1)
    feats = jnp.concatenate([jnp.take_along_axis(wty, cand, axis=1),
                             jnp.diag(gram)[cand], gram[cand[:, iu], cand[:, ju]]], axis=1)
    coef = jnp.concatenate([-2 * sm.T, sm.T, 2 * (sm[:, iu] * sm[:, ju]).T])   # [2H' + P, S]
    sqm = sq0 + feats @ coef
    sq = jnp.concatenate([sq0, sq1, sqm], axis=1)
    n_active = jnp.concatenate([jnp.zeros(1), jnp.ones(h), jnp.sum(sm, 1)]).astype(y.dtype)
    log_prior = n_active * jnp.log(pi / (1 - pi)) + h * jnp.log1p(-pi)
    log_lik = -sq / (2 * sigma**2) - 0.5 * d * jnp.log(2 * jnp.pi * sigma**2)
    return log_prior + log_lik / temperature, cand, sq


def _normalize(log_joint):
    """``(posterior, log-normaliser)`` of a ``[N, states]`` log-joint, one pass of ``exp``."""
    top = jax.lax.stop_gradient(jnp.max(log_joint, axis=1, keepdims=True))
    e = jnp.exp(log_joint - top)
    z = jnp.sum(e, axis=1, keepdims=True)
    return e / z, (top + jnp.log(z))[:, 0]


def _expectations(q, cand, sm, h):
    one_hot = (cand[:, :, None] == jnp.arange(h)).astype(q.dtype)   # [N, H', H]
    q1, qm = q[:, 1:h + 1], q[:, h + 1:]
    es = q1 + jnp.sum((qm @ sm)[:, :, None] * one_hot, axis=1)
    return es, one_hot, q1, qm


def _posterior(params, y, temperature, h_prime, gamma):
    sm = jnp.asarray(state_matrix(h_prime, gamma), y.dtype)
    log_joint, cand, _ = _posterior_terms(params, y, sm, h_prime, temperature)
    q, log_z = _normalize(log_joint)
    es, *_ = _expectations(q, cand, sm, params.W.shape[1])
    return BSCPosterior(log_joint, cand, es, log_z)


@functools.partial(jax.jit, static_argnames=("fn", "h_prime", "gamma"))
def _jit_call(fn, params, y, temperature, *, h_prime, gamma):
    return fn(params, y, temperature, h_prime, gamma)


def _call(fn, check, params, y, h_prime, gamma, temperature):
    """Checks, float promotion and the jitted call shared by the public E- and EM-step functions
    of the truncated-EM models (BSC here, `sparsejax.dictionary.gsc`)."""
    y = check_float_array(y, "y", min_ndim=2)
    h_prime, gamma = check(params, y, h_prime, gamma)
    temperature = check_float(temperature, "temperature", minimum=0.0, exclusive_minimum=True)
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    params = type(params)(*(jnp.asarray(a, dtype) for a in params))
    return _jit_call(fn, params, y.astype(dtype), jnp.asarray(temperature, dtype),
                     h_prime=h_prime, gamma=gamma)


@functools.partial(jax.jit, static_argnames=("step", "h_prime", "gamma"))
def _jit_fit(step, params, y, temperatures, *, h_prime, gamma):
    return jax.lax.scan(lambda p, t: step(p, y, t, h_prime, gamma), params, temperatures)


def bsc_posterior(params: BSCParams, y: Float[Array, "N D"], *, h_prime: int, gamma: int,
                  temperature: float = 1.0) -> BSCPosterior:
    """The truncated E-step, for all data points at once.

    Args:
        params: `BSCParams`.
        y: data ``[N, D]``.
        h_prime: candidate causes per point (``H'``), ``1 <= h_prime <= H``.
        gamma: most active causes among the candidates, ``1 <= gamma <= h_prime``.
        temperature: deterministic-annealing temperature ``T >= 1`` dividing the log-likelihood.

    Returns:
        `BSCPosterior`.
    """
    return _call(_posterior, _check, params, y, h_prime, gamma, temperature)


def _pi_correction(pi, h, gamma):
    g = np.arange(gamma + 1)
    comb = jnp.asarray([math.comb(h, int(k)) for k in g], pi.dtype)
    terms = comb * pi**g * (1 - pi) ** (h - g)
    return pi * h * jnp.sum(terms) / jnp.sum(g * terms)


def _em_step(params, y, temperature, h_prime, gamma):
    n, d = y.shape
    h = params.W.shape[1]
    sm = jnp.asarray(state_matrix(h_prime, gamma), y.dtype)
    log_joint, cand, sq = _posterior_terms(params, y, sm, h_prime, temperature)
    q, log_z = _normalize(log_joint)
    es, one_hot, q1, qm = _expectations(q, cand, sm, h)
    pair = jnp.einsum("ns,sa,sb->nab", qm, sm, sm)           # [N, H', H'] over candidates
    ess = jnp.diag(jnp.sum(q1, 0)) + jnp.einsum("nah,nab,nbk->hk", one_hot, pair, one_hot)
    w_new = jnp.linalg.lstsq(ess, es.T @ y)[0].T              # [D, H]
    pi_new = _pi_correction(params.pi, h, gamma) * jnp.sum(es) / (h * n)
    sigma_new = jnp.sqrt(jnp.sum(q * sq) / (d * n))
    return BSCParams(w_new, pi_new, sigma_new), jnp.mean(log_z)


def bsc_em_step(params: BSCParams, y: Float[Array, "N D"], *, h_prime: int, gamma: int,
                temperature: float = 1.0) -> tuple[BSCParams, Float[Array, ""]]:
    """One truncated-EM iteration: selection, E-step, closed-form M-step (see the module docstring).

    Args:
        params: current `BSCParams`.
        y: data ``[N, D]``.
        h_prime: as `bsc_posterior`.
        gamma: as `bsc_posterior`.
        temperature: as `bsc_posterior`.

    Returns:
        ``(new_params, mean truncated log-likelihood under the old params)``.
    """
    return _call(_em_step, _check, params, y, h_prime, gamma, temperature)


def bsc_init(key: Array, y: Float[Array, "N D"], n_causes: int) -> BSCParams:
    """prosper's ``standard_init``: columns at the data mean plus noise of std ``sigma0 / 4``,
    ``pi = 1 / H``, ``sigma0`` the mean per-dimension standard deviation of the data.

    Args:
        key: PRNG key.
        y: data ``[N, D]``.
        n_causes: ``H``.
    """
    y = check_float_array(y, "y", min_ndim=2)
    h = check_int(n_causes, "n_causes", minimum=1)
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    y = y.astype(dtype)
    mean = jnp.mean(y, 0)
    sigma0 = jnp.sum(jnp.sqrt(jnp.mean((y - mean) ** 2, 0))) / y.shape[1]
    w = mean[:, None] + sigma0 / 4 * jax.random.normal(key, (y.shape[1], h), dtype)
    return BSCParams(w, jnp.asarray(1.0 / h, dtype), sigma0)


def bsc_fit(key: Array, y: Float[Array, "N D"], n_causes: int, *, h_prime: int, gamma: int,
            n_iter: int = 100, start_temperature: float = 5.0, anneal_fraction: float = 0.8
            ) -> tuple[BSCParams, Float[Array, " n_iter"]]:
    """Train BSC by truncated EM from `bsc_init`, with prosper's linear annealing schedule.

    The temperature falls linearly from ``start_temperature`` to 1 over the first
    ``anneal_fraction`` of the iterations (prosper's bars example: 5 to 1 over 80%), then stays
    at 1. All iterations run in one `jax.lax.scan`.

    Args:
        key: PRNG key for the initialisation.
        y: data ``[N, D]``.
        n_causes: ``H``.
        h_prime: as `bsc_posterior`.
        gamma: as `bsc_posterior`.
        n_iter: EM iterations.
        start_temperature: initial ``T >= 1``.
        anneal_fraction: share of iterations spent annealing, in ``(0, 1]``.

    Returns:
        ``(params, per-iteration mean truncated log-likelihood [n_iter])``.
    """
    temps = anneal_schedule(n_iter, start_temperature, anneal_fraction)
    params = bsc_init(key, y, n_causes)
    y = jnp.asarray(y, params.W.dtype)
    h_prime, gamma = _check(params, y, h_prime, gamma)
    return _jit_fit(_em_step, params, y, jnp.asarray(temps, params.W.dtype), h_prime=h_prime,
                    gamma=gamma)

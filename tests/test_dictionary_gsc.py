"""Spike-and-slab sparse coding (GSC) by truncated EM: exact enumeration, a float64 per-point
transcription of prosper's gsc_et.py E- and M-steps, and the spike-and-slab bars test."""

import itertools

import jax
import numpy as np
import pytest

from sparsejax.dictionary import GSCParams, gsc_em_step, gsc_fit, gsc_posterior
from sparsejax.dictionary.bsc import state_matrix


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _problem(seed, n=15, d=7, h=5):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, h))
    s = rng.random((n, h)) < 0.35
    z = 1.0 + 0.7 * rng.normal(size=(n, h))
    y = (s * z) @ w.T + 0.4 * rng.normal(size=(n, d))
    params = GSCParams(w, rng.uniform(0.2, 0.5, h), rng.normal(1.0, 0.3, h),
                       rng.uniform(0.3, 1.0, h), np.float64(0.3))
    return params, y


def _log_gauss(y, mean, cov):
    """log N(y; mean, cov) with the D x D covariance (no Woodbury: an independent route)."""
    diff = y - mean
    return -0.5 * (len(y) * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                   + diff @ np.linalg.solve(cov, diff))


def _state_stats(params, yn, act):
    """log p(s_A, y), E[z_A | s, y], E[z_A z_A^T | s, y] for active set ``act``."""
    w, pi, mu, psi, s2 = (np.asarray(a, np.float64) for a in params)
    d, h = w.shape
    on = np.zeros(h, bool)
    on[list(act)] = True
    log_prior = np.sum(np.log(np.where(on, pi, 1 - pi)))
    wa, mua, psia = w[:, on], mu[on], psi[on]
    cov = s2 * np.eye(d) + wa @ np.diag(psia) @ wa.T
    lam = wa.T @ wa / s2 + np.diag(1 / psia)
    kappa = mua + np.linalg.solve(lam, wa.T @ (yn - wa @ mua)) / s2
    return log_prior, _log_gauss(yn, wa @ mua, cov), kappa, np.outer(kappa, kappa) + np.linalg.inv(lam), on


def _reference_step(params, y, h_prime, gamma, temperature=1.0):
    """prosper gsc_et.py select_Hprimes + E_step + M_step, one data point at a time, float64.

    Corrected where the reference is not an exact EM update (see sparsejax.dictionary.gsc): the
    Gaussian log-density keeps its 1/2; sigma^2 uses <(sz)(sz)^T>; psi uses <s_h z_h>; psi is
    diagonal and divided elementwise.
    """
    w, pi, mu, psi, s2 = (np.asarray(a, np.float64) for a in params)
    d, h = w.shape
    sm = state_matrix(h_prime, gamma)
    xs, xsz, xszsz, logpj_all, cands = [], [], np.zeros((h, h)), [], []
    for yn in y:
        # component_scores: singleton log-likelihoods; the H' best, sorted by index
        scores = [_state_stats(params, yn, [k])[1] for k in range(h)]
        cand = np.sort(np.argsort(scores)[-h_prime:])
        states = [[]] + [[k] for k in range(h)] + [list(cand[np.flatnonzero(r)]) for r in sm]
        stats = [_state_stats(params, yn, a) for a in states]
        logpj = np.array([lp + ll / temperature for lp, ll, *_ in stats])
        post = np.exp(logpj - logpj.max())
        post /= post.sum()
        e_s, e_sz, e_szsz = np.zeros(h), np.zeros(h), np.zeros((h, h))
        for p, (_, _, kappa, kk, on) in zip(post, stats):
            e_s[on] += p
            e_sz[on] += p * kappa
            e_szsz[np.ix_(on, on)] += p * kk
        xs.append(e_s)
        xsz.append(e_sz)
        xszsz += e_szsz
        logpj_all.append(logpj)
        cands.append(cand)
    xs, xsz = np.array(xs), np.array(xsz)
    n = len(y)
    w_new = (y.T @ xsz) @ np.linalg.inv(xszsz)
    pi_new = np.clip(xs.sum(0) / n, 5e-5, 1 - 5e-5)
    mu_new = xsz.sum(0) / (xs.sum(0) + np.finfo(np.float64).eps)
    psi_new = (np.diag(xszsz) - 2 * mu_new * xsz.sum(0) + mu_new**2 * xs.sum(0)) / xs.sum(0) + 1e-5
    s2_new = (np.sum(y * y) - np.trace(xszsz @ w_new.T @ w_new)) / (n * d) + 1e-5
    return (w_new, pi_new, mu_new, psi_new, s2_new), np.array(logpj_all), np.array(cands), xs, xsz


def test_full_truncation_equals_enumeration(x64):
    params, y = _problem(0)
    h = params.W.shape[1]
    post = gsc_posterior(params, y, h_prime=h, gamma=h)
    states = list(itertools.product([0, 1], repeat=h))
    loglik, e_s, e_sz = [], [], []
    for yn in y:
        stats = [_state_stats(params, yn, np.flatnonzero(s)) for s in states]
        logpj = np.array([lp + ll for lp, ll, *_ in stats])
        total = np.logaddexp.reduce(logpj)
        p = np.exp(logpj - total)
        loglik.append(total)
        e_s.append(sum(pi * on for pi, (*_, on) in zip(p, stats)))
        sz = np.zeros(h)
        for pi, (_, _, kappa, _, on) in zip(p, stats):
            sz[on] += pi * kappa
        e_sz.append(sz)
    np.testing.assert_allclose(post.log_likelihood, loglik, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(post.s, e_s, atol=1e-8)
    np.testing.assert_allclose(post.sz, e_sz, atol=1e-8)


def test_em_step_matches_per_point_reference(x64, h_prime=4, gamma=3, temperature=2.5):
    params, y = _problem(1)
    ref, logpj, cands, xs, xsz = _reference_step(params, y, h_prime, gamma, temperature)
    post = gsc_posterior(params, y, h_prime=h_prime, gamma=gamma, temperature=temperature)
    np.testing.assert_array_equal(post.candidates, cands)
    np.testing.assert_allclose(post.log_joint, logpj, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(post.s, xs, atol=1e-10)
    np.testing.assert_allclose(post.sz, xsz, atol=1e-10)
    new, _ = gsc_em_step(params, y, h_prime=h_prime, gamma=gamma, temperature=temperature)
    for got, want in zip(new, ref):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_spike_and_slab_bars_recovered():
    # prosper's param-bars-gsc.py, smaller: 5 x 5 bars, W = 10 bars, pi = 2/H, mu = 1, psi = 1,
    # sigma^2 = 1, T from 4 to 1 over 80%; N = 300, H' = 6, gamma = 3, 40 iterations (the example:
    # N = 10000, H' = 7, gamma = 4, 150 iterations)
    rng = np.random.default_rng(0)
    size, h, n = 5, 10, 300
    bars = np.zeros((size, size, h))
    for i in range(size):
        bars[i, :, i] = bars[:, i, size + i] = 1
    w = 10 * bars.reshape(size * size, h)
    s = rng.random((n, h)) < 2 / h
    z = 1 + rng.normal(size=(n, h))
    y = (s * z) @ w.T + rng.normal(size=(n, size * size))
    params, loglik = gsc_fit(jax.random.key(1), y.astype(np.float32), h, h_prime=6, gamma=3,
                             n_iter=40)
    learned = np.asarray(params.W)
    cos = np.abs((w / np.linalg.norm(w, axis=0)).T @ (learned / np.linalg.norm(learned, axis=0)))
    assert cos.max(1).min() >= 0.95 and len(set(cos.argmax(1))) == h
    assert np.all(np.isfinite(np.asarray(loglik)))


def test_gsc_checks():
    params, y = _problem(2)
    with pytest.raises(ValueError, match="`gamma` must be"):
        gsc_posterior(params, y, h_prime=3, gamma=4)
    with pytest.raises(ValueError, match="`params.mu` must have shape"):
        gsc_posterior(params._replace(mu=np.ones(3)), y, h_prime=3, gamma=2)
    with pytest.raises(TypeError, match="`params` must be a GSCParams"):
        gsc_posterior(tuple(params), y, h_prime=3, gamma=2)

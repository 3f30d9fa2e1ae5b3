"""Binary sparse coding by truncated EM: exact enumeration, per-point transcription of prosper's
bsc_et.py E- and M-steps, and the bars test."""

import itertools
import math

import jax
import numpy as np
import pytest

from sparsejax.dictionary.bsc import (
    BSCParams,
    active_sets,
    bsc_em_step,
    bsc_fit,
    bsc_posterior,
    state_matrix,
    top_ascending,
)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _problem(seed, n=20, d=9, h=6):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, h))
    s = rng.random((n, h)) < 0.3
    y = s @ w.T + 0.5 * rng.normal(size=(n, d))
    return BSCParams(w, np.float64(0.3), np.float64(0.8)), y


def _reference_step(params, y, h_prime, gamma, temperature=1.0):
    """prosper bsc_et.py, one data point at a time (selection, E_step, M_step with Ncut 0)."""
    w, pi, sigma = (np.asarray(a, np.float64) for a in params)
    wt = w.T
    h, d = wt.shape
    sm = np.asarray(state_matrix(h_prime, gamma), np.float64)
    pre1 = -0.5 / sigma**2
    pil = np.log(pi / (1 - pi))
    pre_f = np.concatenate([[0.0], np.full(h, pil), pil * sm.sum(1)])
    wp, wq, my_pi, my_sigma = np.zeros((h, d)), np.zeros((h, h)), 0.0, 0.0
    posts, cands = [], []
    for yn in y:
        sim = wt @ yn / np.sqrt(np.diag(wt @ wt.T)) / np.sqrt(yn @ yn)
        cand = np.argsort(sim)[-h_prime:]
        f = np.concatenate([[pre1 * (yn**2).sum()], pre1 * ((wt - yn) ** 2).sum(1),
                            pre1 * ((sm @ wt[cand] - yn) ** 2).sum(1)])
        logpj = pre_f + f / temperature
        pjb = np.exp(logpj - logpj.max())
        this_wp = np.outer(pjb[1:h + 1], yn)
        this_wq = pjb[1:h + 1] * np.identity(h)
        this_pi = pjb[1:h + 1].sum()
        this_wp[cand] += np.dot(np.outer(yn, pjb[1 + h:]), sm).T
        tmp = np.zeros((h_prime, h))
        tmp[:, cand] = np.dot(pjb[1 + h:] * sm.T, sm)
        this_wq[cand] += tmp
        this_pi += np.inner(pjb[1 + h:], sm.sum(1))
        this_sigma = (pjb[0] * (yn**2).sum() + (pjb[1:h + 1] * ((wt - yn) ** 2).sum(1)).sum()
                      + (pjb[h + 1:] * ((sm @ wt[cand] - yn) ** 2).sum(1)).sum())
        denom = pjb.sum()
        wp += this_wp / denom
        wq += this_wq / denom
        my_pi += this_pi / denom
        my_sigma += this_sigma / denom
        posts.append(pjb / denom)
        cands.append(cand)
    a = sum(math.comb(h, g) * pi**g * (1 - pi) ** (h - g) for g in range(gamma + 1))
    b = sum(g * math.comb(h, g) * pi**g * (1 - pi) ** (h - g) for g in range(gamma + 1))
    n = len(y)
    new = (np.linalg.lstsq(wq, wp, rcond=None)[0].T, pi * h * a / b * my_pi / h / n,
           np.sqrt(my_sigma / d / n))
    return new, np.array(posts), np.array(cands)


def test_state_matrix_counts_and_order():
    sm = state_matrix(5, 3)
    assert sm.shape == (math.comb(5, 2) + math.comb(5, 3), 5)
    assert sm[0].tolist() == [1, 1, 0, 0, 0] and sm[-1].tolist() == [0, 0, 1, 1, 1]
    assert state_matrix(4, 1).shape == (0, 4)


def test_top_ascending_matches_argsort():
    rng = np.random.default_rng(3)
    ties = rng.integers(0, 4, size=(60, 9)).astype(np.float32)        # many ties: lower id first
    np.testing.assert_array_equal(top_ascending(ties, 5),
                                  np.argsort(ties, axis=1, kind="stable")[:, -5:])
    wide = rng.normal(size=(4, 70)).astype(np.float32)                # the lax.top_k path
    np.testing.assert_array_equal(top_ascending(wide, 3), np.argsort(wide, axis=1)[:, -3:])


def test_active_sets_layout():
    cand = np.array([[4, 0, 2], [1, 3, 0]])
    index, valid = active_sets(cand, 5, 2)
    sm = state_matrix(3, 2)
    for n in range(2):
        sets = [set(np.asarray(index[n, k])[valid[k]].tolist()) for k in range(len(valid))]
        want = [set()] + [{h} for h in range(5)] + [set(cand[n][r > 0].tolist()) for r in sm]
        assert sets == want


def test_full_truncation_equals_enumeration(x64):
    params, y = _problem(0)
    w, pi, sigma = params
    d, h = w.shape
    post = bsc_posterior(params, y, h_prime=h, gamma=h)
    states = np.array(list(itertools.product([0, 1], repeat=h)), np.float64)
    logp = (states.sum(1) * np.log(pi) + (h - states.sum(1)) * np.log(1 - pi)
            - ((y[:, None] - states @ w.T) ** 2).sum(-1) / (2 * sigma**2)
            - 0.5 * d * np.log(2 * np.pi * sigma**2))
    loglik = np.logaddexp.reduce(logp, axis=1)
    expect = np.exp(logp - loglik[:, None]) @ states
    np.testing.assert_allclose(post.log_likelihood, loglik, rtol=1e-10, atol=1e-6)
    np.testing.assert_allclose(post.expectation, expect, atol=1e-6)


@pytest.mark.parametrize("h_prime,gamma,temperature", [(4, 2, 1.0), (5, 3, 3.0)])
def test_em_step_matches_per_point_reference(x64, h_prime, gamma, temperature):
    params, y = _problem(1)
    (w_ref, pi_ref, sigma_ref), posts, cands = _reference_step(params, y, h_prime, gamma,
                                                               temperature)
    post = bsc_posterior(params, y, h_prime=h_prime, gamma=gamma, temperature=temperature)
    np.testing.assert_array_equal(post.candidates, cands)
    np.testing.assert_allclose(jax.nn.softmax(post.log_joint, axis=1), posts, atol=1e-12)
    new, _ = bsc_em_step(params, y, h_prime=h_prime, gamma=gamma, temperature=temperature)
    np.testing.assert_allclose(new.W, w_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(new.pi, pi_ref, rtol=1e-10)
    np.testing.assert_allclose(new.sigma, sigma_ref, rtol=1e-10)


def _bars(size=5):
    w = np.zeros((size, size, 2 * size))
    for i in range(size):
        w[i, :, i] = 1
        w[:, i, size + i] = 1
    return w.reshape(size * size, 2 * size)


def test_bars_recovered():
    rng = np.random.default_rng(0)
    w = 10 * _bars()
    y = (rng.random((400, 10)) < 0.2) @ w.T + 2 * rng.normal(size=(400, 25))
    params, loglik = bsc_fit(jax.random.key(0), y.astype(np.float32), 10, h_prime=8, gamma=5,
                             n_iter=60)
    learned = np.asarray(params.W)
    cos = (w / np.linalg.norm(w, axis=0)).T @ (learned / np.linalg.norm(learned, axis=0))
    assert cos.max(1).min() >= 0.95 and len(set(cos.argmax(1))) == 10
    assert abs(float(params.pi) - 0.2) < 0.03 and abs(float(params.sigma) - 2.0) < 0.1
    settled = np.asarray(loglik[int(0.8 * len(loglik)):])  # T = 1 from here: EM ascends
    assert np.all(np.diff(settled) > -1e-3)


def test_bsc_checks():
    params, y = _problem(2)
    with pytest.raises(ValueError, match="`gamma` must be"):
        bsc_posterior(params, y, h_prime=3, gamma=4)
    with pytest.raises(ValueError, match="`h_prime` must be"):
        bsc_posterior(params, y, h_prime=7, gamma=2)
    with pytest.raises(ValueError, match="`y` must have shape"):
        bsc_posterior(params, y[:, :4], h_prime=3, gamma=2)

"""semi-NMF, CoSpaDi and OMP tokenizer transplantation against by-hand references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.dictionary import (
    cospadi,
    output_error,
    semi_nmf,
    semi_nmf_step,
    transplant_embeddings,
    truncated_svd,
)

# ---------------------------------------------------------------- semi-NMF


def _seminmf_reference(a_t, g, keep, n_iter, reg=1e-6, eps=1e-12):
    """numpy port of the reference loop (A is [d, n] there; we pass activations [n, d])."""
    a = a_t.T
    for _ in range(n_iter):
        f = a @ g @ np.linalg.inv(g.T @ g + reg * np.eye(g.shape[1]))
        thresh = np.sort(np.abs(f), axis=0)[-keep]
        f = f * (np.abs(f) >= thresh)
        norms = np.maximum(np.linalg.norm(g, axis=0, keepdims=True), 1e-8)
        g = g / norms
        f = f * norms
        p, q = a.T @ f, f.T @ f
        pos, neg = lambda x: (abs(x) + x) / 2, lambda x: (abs(x) - x) / 2
        g = g * np.sqrt((pos(p) + g @ neg(q)) / (neg(p) + g @ pos(q) + eps))
    return f, g


def test_semi_nmf_step_matches_reference_loop():
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(60, 20)), 0)
    g0 = rng.random((60, 5)) + 0.1
    f_ref, g_ref = _seminmf_reference(acts, g0, keep=4, n_iter=3)
    with jax.enable_x64(True):
        g = jnp.asarray(g0)
        for _ in range(3):
            f, g = semi_nmf_step(jnp.asarray(acts), g, 4)
        np.testing.assert_allclose(f, f_ref, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(g, g_ref, rtol=1e-8, atol=1e-10)


def test_semi_nmf_invariants_and_best_loss():
    rng = np.random.default_rng(1)
    acts = jnp.asarray(np.maximum(rng.normal(size=(120, 30)), 0), jnp.float32)
    res = semi_nmf(acts, 6, sparsity=0.9, key=jax.random.PRNGKey(0), n_iter=60)
    assert res.features.shape == (30, 6) and res.weights.shape == (120, 6)
    assert np.all(np.asarray(res.weights) >= 0)
    assert np.all(np.asarray(jnp.sum(res.features != 0, axis=0)) <= 3)  # ceil(0.1 * 30)
    loss = float(jnp.sum((acts - res.weights @ res.features.T) ** 2))
    np.testing.assert_allclose(loss, float(jnp.min(res.loss)), rtol=1e-4)
    assert float(res.loss[-1]) < float(res.loss[0])


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(sparsity=1.0), ValueError, "sparsity"),
        (dict(n_components=0), ValueError, "n_components"),
        (dict(activations=np.ones(4)), ValueError, "2-D"),
        (dict(activations=np.ones((4, 3), np.int32)), TypeError, "floating"),
        (dict(init_weights=np.ones((2, 2))), ValueError, "init_weights"),
        (dict(n_iter=0), ValueError, "n_iter"),
    ],
)
def test_semi_nmf_bad_input(kwargs, exc, match):
    args = dict(activations=np.ones((10, 4), np.float32), n_components=2, sparsity=0.5)
    args.update(kwargs)
    acts = jnp.asarray(args.pop("activations"))
    if "init_weights" in args:
        args["init_weights"] = jnp.asarray(args["init_weights"])
    with pytest.raises(exc, match=match):
        semi_nmf(acts, args.pop("n_components"), args.pop("sparsity"), key=jax.random.PRNGKey(0),
                 **args)


# ---------------------------------------------------------------- CoSpaDi


def _planted_weight(seed=0, d_in=24, d_out=64, n_atoms=32, s=3, n=200):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(d_in, n_atoms))
    codes = np.zeros((n_atoms, d_out))
    for j in range(d_out):
        codes[rng.choice(n_atoms, s, replace=False), j] = rng.normal(size=s)
    x = rng.normal(size=(n, d_in)) * np.linspace(0.1, 3.0, d_in)  # anisotropic inputs
    return jnp.asarray(d @ codes, jnp.float32), jnp.asarray(x, jnp.float32)


def test_cospadi_beats_svd_and_reports_consistent_numbers():
    w, x = _planted_weight()
    res = cospadi(w, x, 32, 3, key=jax.random.PRNGKey(0), n_iter=15)
    assert res.dictionary.shape == (24, 32) and res.codes.shape == (32, 64)
    assert np.all(np.asarray(jnp.sum(res.codes != 0, axis=0)) <= 3)
    assert res.compression_ratio == pytest.approx(24 * 64 / (24 * 32 + 64 * 3))
    assert res.svd_rank == (24 * 32 + 64 * 3) // (24 + 64)
    wn, xn = np.asarray(w, np.float64), np.asarray(x, np.float64)
    approx = np.asarray(res.dictionary, np.float64) @ np.asarray(res.codes, np.float64)
    direct = np.linalg.norm(xn @ (wn - approx)) / np.linalg.norm(xn @ wn)
    assert res.output_error == pytest.approx(direct, rel=1e-3)
    assert res.output_error < res.whitened_svd_output_error <= res.svd_output_error + 1e-6


def test_cospadi_whitening_lowers_output_error_on_a_lossy_fit():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(24, 64)), jnp.float32)  # not sparse-representable
    _, x = _planted_weight()
    white = cospadi(w, x, 32, 3, key=jax.random.PRNGKey(0), n_iter=15)
    plain = cospadi(w, x, 32, 3, key=jax.random.PRNGKey(0), n_iter=15, whiten=False)
    assert white.output_error < 0.9 * plain.output_error


def test_truncated_svd_and_output_error_by_hand():
    w = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
    u, v = truncated_svd(w, 2)
    np.testing.assert_allclose(u @ v, jnp.diag(jnp.array([3.0, 2.0, 0.0])), atol=1e-6)
    x = jnp.eye(3)
    np.testing.assert_allclose(output_error(w, u @ v, x), 1 / np.sqrt(14), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(nnz_per_column=0), ValueError, "nnz_per_column"),
        (dict(nnz_per_column=9), ValueError, "`nnz_per_column` must be <= 8; got 9"),
        (dict(n_atoms=0), ValueError, "n_atoms"),
        (dict(calibration_inputs=np.ones((5, 3))), ValueError, "d_in=4"),
        (dict(weight=np.ones(4)), ValueError, "2-D"),
        (dict(weight=np.ones((4, 6), np.int32)), TypeError, "floating"),
    ],
)
def test_cospadi_bad_input(kwargs, exc, match):
    args = dict(weight=np.ones((4, 6), np.float32), calibration_inputs=np.ones((5, 4), np.float32),
                n_atoms=8, nnz_per_column=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        cospadi(jnp.asarray(args["weight"]), jnp.asarray(args["calibration_inputs"]),
                args["n_atoms"], args["nnz_per_column"], key=jax.random.PRNGKey(0))


# ---------------------------------------------------------------- tokenizer transplant


def _mergekit_batch_omp(targets, points, k):
    """numpy port of mergekit's batch_omp: raw |<r, p>| argmax over unselected points, exact k,
    least-squares refit (mergekit uses QR; lstsq gives the same solution)."""
    idx_all, coef_all = [], []
    for t in targets:
        sel, r = [], t.copy()
        for _ in range(k):
            score = np.abs(points @ r)
            score[sel] = -np.inf
            sel.append(int(np.argmax(score)))
            coef = np.linalg.lstsq(points[sel].T, t, rcond=None)[0]
            r = t - points[sel].T @ coef
        idx_all.append(sel)
        coef_all.append(coef)
    return np.array(idx_all), np.array(coef_all)


def test_transplant_matches_mergekit_omp():
    rng = np.random.default_rng(3)
    donor = rng.normal(size=(120, 16)) * rng.uniform(0.5, 2.0, size=(120, 1))
    base = rng.normal(size=(100, 24))
    pairs = np.stack([np.arange(80), rng.permutation(100)[:80]], 1)  # (donor_id, base_id)
    new = np.arange(80, 120)
    with jax.enable_x64(True):
        got = transplant_embeddings(jnp.asarray(donor), jnp.asarray(base), jnp.asarray(pairs),
                                    jnp.asarray(new), k=6)
        idx, coef = _mergekit_batch_omp(donor[new], donor[pairs[:, 0]], 6)
        ref = np.einsum("nk,nkd->nd", coef, base[pairs[idx, 1]])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)  # solved in float32


def test_transplant_exact_for_linearly_related_spaces():
    rng = np.random.default_rng(4)
    donor = rng.normal(size=(50, 8)).astype(np.float32)
    r = rng.normal(size=(8, 12)).astype(np.float32)
    base = donor @ r  # base space is a linear image of the donor space
    shared, new = jnp.arange(40), jnp.arange(40, 50)
    for normalize in (False, True):
        got = transplant_embeddings(jnp.asarray(donor), jnp.asarray(base), shared, new, k=8,
                                    normalize=normalize)
        np.testing.assert_allclose(got, base[40:], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(k=0), ValueError, "`k` must be >= 1; got 0"),
        (dict(k=6), ValueError, "`k` must be <= 5; got 6"),
        (dict(shared_ids=np.zeros((5, 3), np.int32)), ValueError, "shared_ids"),
        (dict(new_ids=np.zeros((2, 2), np.int32)), ValueError, "new_ids"),
        (dict(new_ids=np.zeros(2, np.float32)), TypeError, "integer"),
        (dict(donor_embeddings=np.ones(5)), ValueError, "donor_embeddings"),
    ],
)
def test_transplant_bad_input(kwargs, exc, match):
    args = dict(donor_embeddings=np.ones((10, 4), np.float32),
                base_embeddings=np.ones((10, 6), np.float32),
                shared_ids=np.arange(5), new_ids=np.arange(5, 8), k=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        transplant_embeddings(*(jnp.asarray(args[n]) for n in (
            "donor_embeddings", "base_embeddings", "shared_ids", "new_ids")), k=args["k"])

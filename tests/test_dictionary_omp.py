"""OMP against scikit-learn's orthogonal_mp and a textbook numpy OMP."""

import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _problems import dictionary_problem as _problem
from hypothesis import given, settings
from sklearn.linear_model import orthogonal_mp

from sparsejax.dictionary import SparseCode, omp


def _sk(d, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = orthogonal_mp(d, y.T, **kw)
    return np.asarray(out).reshape(d.shape[1], -1).T


def _textbook_exact_k(d, y, k):
    """Plain OMP that never stops early: masked argmax, lstsq refit (mergekit's batch_omp)."""
    support, r = [], y.copy()
    for _ in range(k):
        score = np.abs(d.T @ r)
        score[support] = -np.inf
        support.append(int(np.argmax(score)))
        coef = np.linalg.lstsq(d[:, support], y, rcond=None)[0]
        r = y - d[:, support] @ coef
    out = np.zeros(d.shape[1])
    out[support] = coef
    return out, support


@pytest.mark.parametrize("n_features,n_atoms,k", [(32, 64, 5), (20, 100, 12), (48, 40, 16)])
def test_float64_matches_sklearn(x64, n_features, n_atoms, k):
    d, y = _problem(0, n_features, n_atoms, 37)
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=k))
    ref = _sk(d, y, n_nonzero_coefs=k)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("precompute", [False, True])
def test_float32_matches_sklearn(precompute):
    d, y = _problem(1, 40, 120, 50, np.float32)
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=8))
    ref = _sk(d, y, n_nonzero_coefs=8, precompute=precompute)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tol", [0.5, 5.0, 20.0])
def test_tol_mode_float64_matches_sklearn(x64, tol):
    d, y = _problem(2, 30, 90, 40)
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), tol=tol))
    ref = _sk(d, y, tol=tol)
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-10, rtol=0)
    resid = np.sum((y - got @ d.T) ** 2, axis=1)
    stopped_early = (got != 0).sum(1) < 30
    assert np.all(resid[stopped_early] <= tol + 1e-9)


def test_tol_mode_float32_matches_sklearn():
    d, y = _problem(3, 30, 90, 40, np.float32)
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), tol=4.0))
    # sklearn's default (non-Gram) path tests the chosen atom's correlation with the *signal*
    # against eps; on this draw that stops signal 0 early at ||r||^2 = 7.06 > tol. We follow the
    # Gram path (precompute=True), which tests the residual's correlation.
    ref = _sk(d, y, tol=4.0, precompute=True)
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_tol_above_signal_norm_still_selects_one_atom(x64):
    d, y = _problem(4, 16, 32, 5)
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), tol=1e6))
    np.testing.assert_array_equal((got != 0).sum(1), 1)
    np.testing.assert_allclose(got, _sk(d, y, tol=1e6), atol=1e-12)


def test_stops_when_residual_vanishes(x64):
    # exactly 3-sparse signals, k=8: sklearn's Gram variant stops after 3 atoms
    rng = np.random.default_rng(5)
    d, _ = _problem(5, 40, 80, 1)
    codes = np.zeros((12, 80))
    for row in codes:
        row[rng.choice(80, 3, replace=False)] = rng.normal(size=3) + 2 * np.sign(rng.normal(size=3))
    y = codes @ d.T
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=8))
    ref = _sk(d, y, n_nonzero_coefs=8, precompute=True)
    np.testing.assert_array_equal((got != 0).sum(1), 3)
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, codes, atol=1e-10)


def test_exact_k_always_returns_k_atoms(x64):
    rng = np.random.default_rng(6)
    d, y = _problem(6, 24, 60, 10)
    y[:3] = (d[:, [1, 7]] @ rng.normal(size=(2, 3))).T  # 2-sparse: plain OMP would stop at 2
    res = omp(jnp.asarray(d), jnp.asarray(y), k=6, exact_k=True, return_indices=True)
    idx = np.asarray(res.indices)
    assert idx.shape == (10, 6)
    assert all(len(set(row)) == 6 for row in idx)
    assert np.all(idx < 60)
    for i in range(3, 10):  # generic signals: same as the textbook exact-k OMP
        ref, support = _textbook_exact_k(d, y[i], 6)
        np.testing.assert_array_equal(idx[i], support)
        dense = np.zeros(60)
        dense[idx[i]] = np.asarray(res.values[i])
        np.testing.assert_allclose(dense, ref, atol=1e-9)
    recon = np.einsum("bfk,bk->bf", d[:, idx].transpose(1, 0, 2), np.asarray(res.values))
    np.testing.assert_allclose(recon[:3], y[:3], atol=1e-8)


def test_sparse_code_matches_dense_and_padding():
    d, y = _problem(7, 16, 40, 6, np.float32)
    y[0] = d[:, 3] * 2.0  # 1-sparse: stops after one atom, padded slots follow
    dense = omp(jnp.asarray(d), jnp.asarray(y), k=4)
    sc = omp(jnp.asarray(d), jnp.asarray(y), k=4, return_indices=True)
    assert isinstance(sc, SparseCode)
    assert sc.indices.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(sc.indices[0]), [3, 40, 40, 40])
    np.testing.assert_array_equal(np.asarray(sc.values[0, 1:]), 0)
    rebuilt = jax.vmap(lambda i, v: jnp.zeros(40).at[i].set(v, mode="drop"))(*sc)
    np.testing.assert_array_equal(np.asarray(rebuilt), np.asarray(dense))


def test_batch_shapes_jit_vmap_and_chunks():
    d, y = _problem(8, 16, 48, 24, np.float32)
    dj, yj = jnp.asarray(d), jnp.asarray(y)
    flat = omp(dj, yj, k=5)
    np.testing.assert_array_equal(omp(dj, yj.reshape(4, 6, 16), k=5).reshape(24, 48), flat)
    chunked = omp(dj, yj, k=5, chunk_size=7)  # other batch shapes may round differently in BLAS
    np.testing.assert_array_equal(np.asarray(chunked) != 0, np.asarray(flat) != 0)
    np.testing.assert_allclose(chunked, flat, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda a, b: omp(a, b, k=5))(dj, yj), flat, rtol=1e-5, atol=1e-6)
    vm = jax.vmap(lambda s: omp(dj, s, k=5))(yj[:3])
    np.testing.assert_allclose(vm, flat[:3], atol=1e-6)
    assert omp(dj, jnp.zeros((0, 16)), k=5).shape == (0, 48)
    # all-zero signal: no atom selected
    np.testing.assert_array_equal(omp(dj, jnp.zeros((24, 16)), k=5), 0)


def test_traced_tol_under_jit(x64):
    d, y = _problem(9, 20, 50, 8)
    f = jax.jit(lambda t: omp(jnp.asarray(d), jnp.asarray(y), tol=t))
    np.testing.assert_allclose(f(3.0), _sk(d, y, tol=3.0), atol=1e-10)


def test_bfloat16_solved_in_float32():
    d, y = _problem(10, 16, 32, 6, np.float32)
    db, yb = jnp.asarray(d, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    got = omp(db, yb, k=3)
    assert got.dtype == jnp.bfloat16
    ref = omp(db.astype(jnp.float32), yb.astype(jnp.float32), k=3).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(ref, np.float32))


def test_default_k_is_ten_percent_of_atoms():
    d, y = _problem(11, 64, 50, 4, np.float32)
    got = omp(jnp.asarray(d), jnp.asarray(y))
    np.testing.assert_array_equal(np.asarray((got != 0).sum(1)), 5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_residual_orthogonal_to_selected_atoms(seed):
    k = 6  # one compilation for all examples
    d, y = _problem(seed, 24, 40, 3)
    with jax.enable_x64(True):
        codes = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=k))
    r = y - codes @ d.T
    for row, res in zip(codes, r):
        s = np.flatnonzero(row)
        assert 1 <= len(s) <= k
        np.testing.assert_allclose(d[:, s].T @ res, 0, atol=1e-9)
    assert np.all(np.sum(r * r, 1) <= np.sum(y * y, 1) + 1e-12)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dictionary=np.ones((3, 4, 5))), ValueError, "dictionary"),
        (dict(signals=np.ones((2, 7))), ValueError, "n_features=8"),
        (dict(k=0), ValueError, "`k` must be >= 1; got 0"),
        (dict(k=17), ValueError, "got 17"),
        (dict(k=2.0), TypeError, "`k` must be a Python int"),
        (dict(k=True), TypeError, "`k` must be a Python int"),
        (dict(tol=-1.0), ValueError, "`tol`"),
        (dict(signals=np.ones((2, 8), np.int32)), TypeError, "floating"),
        (dict(exact_k=True, k=3, tol=1.0), ValueError, "exact_k"),
        (dict(exact_k=True), ValueError, "explicit `k`"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(dictionary=[[1.0]]), TypeError, "must be arrays"),
        # a transposed dictionary [n_atoms, n_features] is blamed, not the signals
        (dict(dictionary=np.ones((16, 8), np.float32), signals=np.ones((2, 8), np.float32)), ValueError,
         r"`dictionary` must be \[n_features, n_atoms\].*got shape \(16, 8\).*looks transposed"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(dictionary=np.ones((8, 16), np.float32), signals=np.ones((2, 8), np.float32))
    args.update(kwargs)
    d, s = args.pop("dictionary"), args.pop("signals")
    with pytest.raises(exc, match=match):
        omp(d if isinstance(d, list) else jnp.asarray(d), jnp.asarray(s), **args)


def test_k_caps_tol_mode(x64):
    d, y = _problem(12, 30, 90, 20)
    capped = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=4, tol=1e-3))
    np.testing.assert_array_equal((capped != 0).sum(1), 4)  # tol never reached: the cap binds
    np.testing.assert_allclose(capped, _sk(d, y, n_nonzero_coefs=4), atol=1e-10)


def test_blocked_loops_match_sklearn(x64):
    # k >= 16 and k * n_atoms >= 8192: the steps run in four compiled loops, each contracting only
    # the Gram-row blocks filled so far; supports and coefficients must not change.
    from sparsejax.dictionary.omp import _block_ends

    assert _block_ends(18, 512) == [5, 9, 14, 18]
    d, y = _problem(9, 64, 512, 9)
    y[0] = d[:, [3, 30, 300]] @ np.array([1.5, -2.0, 1.0])  # stops after 3 atoms, in loop 0
    y[1] = d[:, 5:505:50] @ np.linspace(1.0, 2.0, 10)  # stops after 10 atoms, in loop 2
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=18, chunk_size=4))
    ref = _sk(d, y, n_nonzero_coefs=18, precompute=True)
    np.testing.assert_array_equal((got != 0).sum(1)[:3], [3, 10, 18])
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-10, rtol=0)
    # tol mode: these signals stop after 12 to 16 atoms, in loops 2 and 3
    got_tol = np.asarray(omp(jnp.asarray(d), jnp.asarray(y[2:]), k=18, tol=6.0))
    ref_tol = _sk(d, y[2:], tol=6.0, precompute=True)
    assert set((ref_tol != 0).sum(1)) >= {12, 16}
    np.testing.assert_array_equal(got_tol != 0, ref_tol != 0)
    np.testing.assert_allclose(got_tol, ref_tol, atol=1e-10, rtol=0)


def test_tiled_argmax_first_index_on_ties():
    # rows of >= 1024 atoms take the tiled argmax; ties (within and across tiles) and a ragged
    # last tile must give jnp.argmax's first index
    from sparsejax.dictionary.omp import _argmax_last

    rng = np.random.default_rng(13)
    score = rng.integers(0, 50, size=(6, 1100)).astype(np.float32)  # many ties, 1100 % 128 != 0
    score[1, [5, 700]] = 99.0  # tie across tiles: the first wins
    score[2, [1090, 1099]] = 99.0  # maximum only in the ragged last tile
    score[3] = 7.0  # all equal
    got = np.asarray(_argmax_last(jnp.asarray(score)))
    np.testing.assert_array_equal(got, np.argmax(score, axis=1))
    assert got[1] == 5 and got[2] == 1090 and got[3] == 0


def test_many_atoms_match_sklearn(x64):
    d, y = _problem(14, 24, 1100, 5)  # >= 1024 atoms: the tiled argmax
    got = np.asarray(omp(jnp.asarray(d), jnp.asarray(y), k=4))
    ref = _sk(d, y, n_nonzero_coefs=4, precompute=True)
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, atol=1e-10, rtol=0)

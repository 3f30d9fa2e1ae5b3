"""Transposable N:M masks against an independent LP oracle (scipy milp), written here."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsejax import masks

scipy_opt = pytest.importorskip("scipy.optimize")
scipy_sparse = pytest.importorskip("scipy.sparse")


def lp_oracle(blocks: np.ndarray, n: int) -> np.ndarray:
    """Optimum kept score of each ``m x m`` block (``[B, m, m]``): one LP relaxation of the
    b-matching over all blocks (HiGHS dual simplex; the matrix is totally unimodular, so a vertex
    optimum is the integer one)."""
    b, m, _ = blocks.shape
    var = np.arange(b * m * m).reshape(b, m, m)
    cons = np.concatenate([var.reshape(-1, m), var.transpose(0, 2, 1).reshape(-1, m)])
    a = scipy_sparse.csr_matrix((np.ones(cons.size), (np.repeat(np.arange(len(cons)), m),
                                                       cons.ravel())), shape=(len(cons), b * m * m))
    res = scipy_opt.linprog(-blocks.ravel().astype(np.float64), A_eq=a, b_eq=np.full(len(cons), n),
                            bounds=(0, 1), method="highs-ds")
    assert res.status == 0
    x = res.x.reshape(b, m, m)
    np.testing.assert_allclose(x, np.round(x), atol=1e-7)  # integral vertex
    return np.einsum("bij,bij->b", x, blocks.astype(np.float64))


def to_blocks(x: np.ndarray, m: int) -> np.ndarray:
    r, c = x.shape
    return x.reshape(r // m, m, c // m, m).transpose(0, 2, 1, 3).reshape(-1, m, m)


def check_both_axes(mask: np.ndarray, n: int, m: int) -> None:
    r, c = mask.shape
    assert (mask.reshape(r, c // m, m).sum(-1) == n).all()  # every row of every block
    assert (mask.reshape(r // m, m, c).sum(1) == n).all()  # every column of every block
    assert bool(masks.satisfies_nm(mask, n, m, axis=0))
    assert bool(masks.satisfies_nm(mask, n, m, axis=1))


def test_2_4_enumeration_equals_lp_optimum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 96)).astype(np.float32)  # 576 blocks
    x[:4, :4] = np.abs(x[:4, :4])
    x[4:8, 4:8] = 1.0  # all-tied block
    mask = np.asarray(jax.jit(lambda s: masks.nm_transposable(s, 2, 4))(jnp.asarray(x)))
    check_both_axes(mask, 2, 4)
    got = np.einsum("bij,bij->b", to_blocks(mask, 4), to_blocks(x, 4).astype(np.float64))
    np.testing.assert_allclose(got, lp_oracle(to_blocks(x, 4), 2), rtol=0, atol=1e-5)


def test_enumeration_counts_and_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 8)).astype(np.float32)
    for n in (1, 2, 3):
        # brute force over every 0/1 4x4 matrix with n per row: keep those with n per column
        feasible = [np.array(rows) for rows in itertools.product(
            [np.isin(np.arange(4), c) for c in itertools.combinations(range(4), n)], repeat=4)
            if (np.array(rows).sum(0) == n).all()]
        assert len(feasible) == {1: 24, 2: 90, 3: 24}[n]
        mask = np.asarray(masks.nm_transposable(jnp.asarray(x), n, 4))
        check_both_axes(mask, n, 4)
        for blk, keep in zip(to_blocks(x, 4), to_blocks(mask, 4)):
            best = max(float((blk * f).sum()) for f in feasible)
            assert abs(float((blk * keep).sum()) - best) < 1e-5


def test_exact_and_sinkhorn_4_8():
    rng = np.random.default_rng(2)
    s = np.abs(rng.standard_normal((64, 64))).astype(np.float32)
    opt = lp_oracle(to_blocks(s, 8), 4)
    exact = np.asarray(masks.nm_transposable(jnp.asarray(s), 4, 8, method="exact"))
    check_both_axes(exact, 4, 8)
    np.testing.assert_allclose((to_blocks(s * exact, 8)).sum((1, 2)), opt, rtol=1e-6)
    approx = np.asarray(jax.jit(lambda a: masks.nm_transposable(a, 4, 8))(jnp.asarray(s)))
    check_both_axes(approx, 4, 8)
    ratio = (s * approx).sum() / opt.sum()
    assert 0.98 <= ratio <= 1 + 1e-6, ratio
    # the exact host solver agrees with the enumeration at 2:4
    two = np.asarray(masks.nm_transposable(jnp.asarray(s), 2, 4, method="exact"))
    enum = np.asarray(masks.nm_transposable(jnp.asarray(s), 2, 4))
    np.testing.assert_allclose((s * two).sum(), (s * enum).sum(), rtol=1e-6)


@given(data=st.data(), nm=st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2)]))
def test_property_constraints(data, nm):
    n, m = nm  # one shape: one compile per (n, m)
    x = data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, np.nan, np.inf, -np.inf]),
                           min_size=64, max_size=64))
    x = np.asarray(x, np.float32).reshape(8, 8)
    mask = np.asarray(masks.nm_transposable(jnp.asarray(x), n, m))
    check_both_axes(mask, n, m)
    exact = np.asarray(masks.nm_transposable(jnp.asarray(x), n, m, method="exact"))
    s = np.clip(np.nan_to_num(x, nan=-1e30, posinf=1e30, neginf=-1e30), -1e30, 1e30)
    assert np.isclose((s * mask).astype(np.float64).sum(), (s * exact).astype(np.float64).sum(),
                      rtol=1e-6)


def test_batch_axes_and_trivial_n():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 4))
    batched = masks.nm_transposable(x, 2, 4)  # the same blocks as the [16, 4] stack
    np.testing.assert_array_equal(batched.reshape(16, 4), masks.nm_transposable(
        x.reshape(16, 4), 2, 4, method="exact"))
    assert bool(masks.nm_transposable(x, 4, 4).all())
    assert not bool(masks.nm_transposable(x, 0, 4).any())


@pytest.mark.parametrize("call, err, match", [
    (lambda x: masks.nm_transposable(x, 5, 4), ValueError, "`n` must be in"),
    (lambda x: masks.nm_transposable(x, 2, 3), ValueError, "divisible"),
    (lambda x: masks.nm_transposable(x[0], 2, 4), ValueError, "at least 2"),
    (lambda x: masks.nm_transposable(x, 2, 4, method="lp"), ValueError, "`method` must be one"),
    (lambda x: masks.nm_transposable(x, 2, 4, axis=5), ValueError, "axis"),
    (lambda x: masks.nm_transposable(jnp.tile(x, (2, 2)), 4, 8, method="enumerate"),
     ValueError, "`m` must be <= 4"),
    (lambda x: masks.nm_transposable(x.astype(jnp.int32), 2, 4), TypeError, "floating"),
    (lambda x: jax.jit(lambda s: masks.nm_transposable(s, 2, 4, method="exact"))(x), TypeError,
     "concrete"),
])
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call(jnp.ones((8, 8)))


def test_chunked_pass_matches_brute_force(monkeypatch):
    """The cache-blocked pass (`lax.map` over chunks of block rows, with a remainder chunk) keeps
    the brute-force optimum, with the documented tie rule: among equal kept sums the first
    pattern in lexicographic order of the rows' kept positions."""
    from sparsejax import _transposable as tr

    monkeypatch.setattr(tr, "_CHUNK_ELEMS", 3 * 4 * 12)  # 3 block rows per chunk
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 28, 12)).astype(np.float32)  # 14 block rows: 4 chunks + 2
    x[0, :4, :4] = 1.0  # an all-tied block
    x[1, 4:8, 4:8] = rng.integers(0, 2, (4, 4))  # many ties
    mask = np.asarray(jax.jit(tr.enumerate_mask.__wrapped__, static_argnums=(1, 2))(
        jnp.asarray(x), 2, 4))
    feasible = tr.patterns(2, 4).reshape(-1, 4, 4).astype(bool)  # lexicographic order
    for blk, keep in zip(to_blocks(x.reshape(56, 12), 4), to_blocks(mask.reshape(56, 12), 4)):
        sums = (feasible * blk).sum((1, 2), dtype=np.float64)
        first = feasible[np.flatnonzero(np.isclose(sums, sums.max(), rtol=0, atol=1e-6))[0]]
        if np.all(blk == np.round(blk)):  # exact ties: the first maximal pattern
            np.testing.assert_array_equal(keep, first)
        assert abs(float((blk * keep).sum()) - sums.max()) < 1e-5

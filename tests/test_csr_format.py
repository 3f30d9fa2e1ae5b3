"""formats.CSR against numpy, scipy.sparse and jax.experimental.sparse.BCSR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import sparse as jsparse

from sparsejax.formats import CSR

sp = pytest.importorskip("scipy.sparse")

SHAPE = (5, 7)  # every example reuses the compiled conversions


def random_sparse(rng, shape, density, dtype=np.float32):
    x = rng.standard_normal(shape).astype(dtype)
    return np.where(rng.random(shape) < density, x, 0).astype(dtype)


def check_layout(a: CSR, x: np.ndarray, keep: np.ndarray) -> None:
    """The documented layout: row-major slots, sorted columns, zero padding, indptr = counts."""
    data, idx, ptr = np.asarray(a.data), np.asarray(a.indices), np.asarray(a.indptr)
    assert a.indices.dtype == jnp.int32 and a.indptr.dtype == jnp.int32
    assert ptr.shape == (x.shape[0] + 1,) and ptr[0] == 0
    np.testing.assert_array_equal(np.diff(ptr), keep.sum(1))
    nnz = int(keep.sum())
    rows, cols = np.nonzero(keep)  # row-major, columns ascending
    np.testing.assert_array_equal(idx[:nnz], cols)
    np.testing.assert_array_equal(data[:nnz], x[rows, cols])
    assert not data[nnz:].any() and not idx[nnz:].any()
    assert int(a.nnz) == nnz and a.nse == data.shape[0]


def check_round_trips(x: np.ndarray, nse: int) -> None:
    keep = x != 0
    a = CSR.from_dense(x, nse=nse)
    check_layout(a, x, keep)
    np.testing.assert_array_equal(a.to_dense(), x)
    np.testing.assert_array_equal(a.mask(), keep)
    np.testing.assert_array_equal(a.transpose().to_dense(), x.T)
    check_layout(a.T, x.T, keep.T)
    # scipy, both ways
    s = a.to_scipy()
    assert s.shape == x.shape and s.nnz == keep.sum()
    np.testing.assert_array_equal(s.toarray(), x)
    check_layout(CSR.from_scipy(sp.csr_matrix(x), nse=nse), x, keep)
    np.testing.assert_array_equal(CSR.from_scipy(sp.coo_matrix(x), nse=nse).to_dense(), x)
    # BCSR, both ways
    bc = a.to_bcsr()
    assert bc.nse == a.nse
    np.testing.assert_array_equal(bc.todense(), x)
    np.testing.assert_array_equal(CSR.from_bcsr(bc).to_dense(), x)
    if x.size:  # BCSR.fromdense itself fails on an empty matrix
        check_layout(CSR.from_bcsr(jsparse.BCSR.fromdense(jnp.asarray(x), nse=nse)), x, keep)


@settings(max_examples=10, deadline=None)
@given(density=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_round_trips(density, seed):
    x = random_sparse(np.random.default_rng(seed), SHAPE, density)
    check_round_trips(x, nse=SHAPE[0] * SHAPE[1] + 1)  # one static capacity: compiled once


@pytest.mark.parametrize("shape", [(0, 4), (1, 1)])
def test_round_trips_tiny_and_empty(shape):
    check_round_trips(np.ones(shape, np.float32), nse=max(1, shape[0] * shape[1]))


def test_default_capacity_empty_rows_and_full_row():
    x = np.zeros((4, 6), np.float32)
    x[1] = np.arange(1, 7)
    x[3, 2] = -2.0
    a = CSR.from_dense(x)
    assert a.nse == 7 and a.shape == (4, 6)
    np.testing.assert_array_equal(a.indptr, [0, 0, 6, 6, 7])
    np.testing.assert_array_equal(a.row_counts(), [0, 6, 0, 1])
    np.testing.assert_array_equal(a.row_ids(), [1] * 6 + [3])
    zero = CSR.from_dense(np.zeros((3, 2), np.float32))
    assert zero.nse == 1 and int(zero.nnz) == 0
    np.testing.assert_array_equal(zero.row_ids(), [3])  # the padded slot has row M
    np.testing.assert_array_equal(zero.to_dense(), np.zeros((3, 2)))
    assert zero.to_scipy().nnz == 0


def test_from_mask_keeps_the_pattern_including_zeros():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    x[0, 0] = 0.0
    mask = rng.random((6, 5)) < 0.5
    mask[0, 0] = True
    a = CSR.from_mask(x, mask)
    assert int(a.nnz) == mask.sum() == a.nse
    np.testing.assert_array_equal(a.mask(), mask)
    np.testing.assert_array_equal(a.to_dense(), np.where(mask, x, 0))
    check_layout(a, np.where(mask, x, 0), mask)
    assert a.to_scipy().nnz == mask.sum()  # the explicit zero is stored
    np.testing.assert_array_equal(CSR.from_scipy(a.to_scipy()).mask(), mask)


def test_jit_pytree_and_truncation():
    x = np.array([[1.0, 0, 2], [0, 3, 0], [4, 5, 6]], np.float32)
    f = jax.jit(lambda x: CSR.from_dense(x, nse=4))
    a = f(x)
    assert len(jax.tree.leaves(a)) == 3
    # capacity 4 < nnz 6: the row-major tail is dropped, the pointers stay consistent
    np.testing.assert_array_equal(a.to_dense(), [[1, 0, 2], [0, 3, 0], [4, 0, 0]])
    np.testing.assert_array_equal(a.indptr, [0, 2, 3, 4])
    doubled = jax.jit(lambda a: a.replace(data=2 * a.data))(CSR.from_dense(x))
    np.testing.assert_array_equal(doubled.to_dense(), 2 * x)
    t = jax.jit(lambda a: a.T.to_bcsr().todense())(CSR.from_dense(x, nse=8))
    np.testing.assert_array_equal(t, x.T)


def test_scipy_duplicates_unsorted_and_dtypes():
    m = sp.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([1, 1, 0]), np.array([2, 2, 1]))),
                      shape=(2, 3))
    a = CSR.from_scipy(m)
    np.testing.assert_array_equal(a.to_dense(), [[0, 3, 0], [0, 0, 3]])
    assert a.dtype == jnp.float32 and int(a.nnz) == 2
    b = CSR.from_scipy(m, dtype=jnp.bfloat16)
    assert b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(b.to_scipy().toarray(), m.toarray())
    unsorted = sp.csr_matrix((np.array([5.0, 6.0]), np.array([2, 0]), np.array([0, 2])),
                             shape=(1, 3))
    np.testing.assert_array_equal(CSR.from_scipy(unsorted).indices, [0, 2])


def test_errors():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(TypeError, match="`x` must be a floating-point"):
        CSR.from_dense(np.eye(3, dtype=np.int32))
    with pytest.raises(ValueError, match="`x` must be a 2-D matrix"):
        CSR.from_dense(np.ones((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="`nse` must be >= the 3 stored entries; got 2"):
        CSR.from_dense(x, nse=2)
    with pytest.raises(ValueError, match="`nse` must be given under jit"):
        jax.jit(CSR.from_dense)(x)
    with pytest.raises(ValueError, match="`nse` must be >= 1; got 0"):
        CSR.from_dense(x, nse=0)
    with pytest.raises(ValueError, match="`mask` must be a bool array of x's shape"):
        CSR.from_mask(x, np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="`mask` must be a bool array"):
        CSR.from_mask(x, np.ones((3, 3), np.float32))
    with pytest.raises(TypeError, match="`m` must be a scipy.sparse"):
        CSR.from_scipy(x)
    with pytest.raises(ValueError, match="`nse` must be >= m.nnz = 3"):
        CSR.from_scipy(sp.csr_matrix(x), nse=1)
    with pytest.raises(TypeError, match="`m` must be a jax.experimental.sparse.BCSR"):
        CSR.from_bcsr(x)
    with pytest.raises(ValueError, match="`m` must be a 2-D BCSR"):
        CSR.from_bcsr(jsparse.BCSR((jnp.ones((2, 1)), jnp.zeros((2, 1), jnp.int32),
                                    jnp.array([[0, 1, 1, 1]] * 2, jnp.int32)), shape=(2, 3, 3)))
    with pytest.raises(TypeError, match="`replace` takes fields"):
        CSR.from_dense(x).replace(values=1)

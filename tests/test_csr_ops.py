"""CSR products (ops.csr_matmul, dense_csr_matmul, csr_sddmm, sparse_conv1x1) against dense
numpy, scipy.sparse and lax.conv_general_dilated, with their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import ops
from sparsejax.formats import CSR

sp = pytest.importorskip("scipy.sparse")

BACKENDS = ["reference", "xla"]
M, K, N = 6, 5, 3


def case(kind: str, seed: int = 0) -> np.ndarray:
    """``[M, K]`` float32: random with empty rows and a full row, all zero, or fully dense."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((M, K)).astype(np.float32)
    if kind == "zero":
        return np.zeros((M, K), np.float32)
    if kind == "dense":
        return w
    w = np.where(rng.random((M, K)) < 0.35, w, 0).astype(np.float32)
    w[1] = 0.0  # empty rows
    w[M - 1] = 0.0
    w[3] = rng.standard_normal(K)  # a full row
    return w


CASES = ["mixed", "zero", "dense"]


def dense_x(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed + 100).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CASES)
def test_products_equal_dense_and_scipy(backend, kind):
    w = case(kind)
    a = CSR.from_dense(w, nse=M * K + 2)  # padded slots
    x, y = dense_x(0, (K, N)), dense_x(1, (2, 4, M))
    ref = sp.csr_matrix(w) @ x.astype(np.float64)
    out = ops.csr_matmul(a, x, backend=backend)
    assert out.shape == (M, N) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, w.astype(np.float64) @ x, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ops.csr_matmul(a, x[:, 0], backend=backend), ref[:, 0],
                               atol=1e-5, rtol=1e-5)
    got = ops.dense_csr_matmul(y, a, backend=backend)
    assert got.shape == (2, 4, K)
    np.testing.assert_allclose(got, y @ w.astype(np.float64), atol=1e-5, rtol=1e-5)
    # the @ operators
    np.testing.assert_allclose(a @ x, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(y[0] @ a, y[0] @ w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sddmm_equals_dense_at_the_stored_entries(backend):
    w = case("mixed")
    mask = w != 0
    mask[0, 0] = True  # a stored zero is sampled like any other entry
    like = CSR.from_mask(w, mask, nse=int(mask.sum()) + 3)
    a, b = dense_x(2, (M, 7)), dense_x(3, (7, K))
    out = ops.csr_sddmm(a, b, like, backend=backend)
    assert isinstance(out, CSR) and out.nse == like.nse
    np.testing.assert_array_equal(out.indices, like.indices)
    np.testing.assert_allclose(out.to_dense(), np.where(mask, a @ b, 0), atol=1e-5, rtol=1e-5)
    assert not np.asarray(out.data)[int(mask.sum()):].any()  # padded slots stay zero


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_gradients_are_the_sddmm(backend):
    w = case("mixed", seed=4)
    a = CSR.from_mask(w, w != 0, nse=int((w != 0).sum()) + 2)
    x, gy = dense_x(5, (K, N)), dense_x(6, (M, N))
    xt, gyt = dense_x(7, (N, M)), dense_x(8, (N, K))

    def loss(d, x):
        return jnp.sum(ops.csr_matmul(a.replace(data=d), x, backend=backend) * gy)

    dd, dx = jax.grad(loss, argnums=(0, 1))(a.data, x)
    np.testing.assert_allclose(dd, ops.csr_sddmm(gy, x.T, a, backend="reference").data,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(dx, w.T @ gy, atol=1e-5, rtol=1e-5)

    def rloss(d, x):
        return jnp.sum(ops.dense_csr_matmul(x, a.replace(data=d), backend=backend) * gyt)

    dd, dx = jax.grad(rloss, argnums=(0, 1))(a.data, xt)
    np.testing.assert_allclose(dd, ops.csr_sddmm(xt.T, gyt, a, backend="reference").data,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(dx, gyt @ w.T, atol=1e-5, rtol=1e-5)
    # the dense model's gradient, masked to the stored entries
    dense_grad = jax.grad(lambda v: jnp.sum((v @ x) * gy))(w)
    np.testing.assert_allclose(jax.grad(loss)(a.data, x),
                               a.replace(data=jnp.asarray(dense_grad)[
                                   jnp.minimum(a.row_ids(), M - 1), a.indices]).data
                               * a.valid(), atol=1e-5, rtol=1e-5)
    # the SDDMM's own gradient (a second-order path): against the dense masked product
    sa, sb, gs = dense_x(9, (M, 4)), dense_x(10, (4, K)), dense_x(11, (a.nse,)) * a.valid()
    da, db = jax.grad(lambda p, q: jnp.sum(ops.csr_sddmm(p, q, a, backend=backend).data * gs),
                      argnums=(0, 1))(sa, sb)
    g_dense = np.asarray(a.replace(data=gs).to_dense())
    np.testing.assert_allclose(da, g_dense @ sb.T, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(db, sa.T @ g_dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_accumulates_in_f32(backend):
    w = case("mixed", seed=12)
    a = CSR.from_dense(jnp.asarray(w, jnp.bfloat16))
    x = jnp.asarray(dense_x(13, (K, N)), jnp.bfloat16)
    out = ops.csr_matmul(a, x, backend=backend)
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(a.to_dense(), np.float32) @ np.asarray(x, np.float32)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2, rtol=1e-2)
    mixed = ops.csr_matmul(a, np.asarray(x, np.float32), backend=backend)
    assert mixed.dtype == jnp.float32
    np.testing.assert_allclose(mixed, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_sparse_conv1x1_equals_lax_conv(data_format):
    w = case("mixed", seed=14)
    a = CSR.from_dense(w)
    x = dense_x(15, (2, 3, 4, K) if data_format == "NHWC" else (2, K, 3, 4))
    ref = jax.lax.conv_general_dilated(x, w[:, :, None, None], (1, 1), "VALID",
                                       dimension_numbers=(data_format, "OIHW", data_format),
                                       precision=jax.lax.Precision.HIGHEST)
    out = ops.sparse_conv1x1(x, a, data_format=data_format)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    gw = jax.grad(lambda d: jnp.sum(ops.sparse_conv1x1(x, a.replace(data=d),
                                                       data_format=data_format) ** 2))(a.data)
    gref = jax.grad(lambda v: jnp.sum(jax.lax.conv_general_dilated(
        x, v[:, :, None, None], (1, 1), "VALID",
        dimension_numbers=(data_format, "OIHW", data_format)) ** 2))(jnp.asarray(w))
    np.testing.assert_allclose(gw, gref[jnp.minimum(a.row_ids(), M - 1), a.indices] * a.valid(),
                               atol=1e-4, rtol=1e-4)


def test_jit_and_vmap():
    w = case("mixed", seed=16)
    a = CSR.from_dense(w, nse=20)
    xs = dense_x(17, (3, K, N))
    f = jax.jit(jax.vmap(lambda x, a: ops.csr_matmul(a, x), in_axes=(0, None)))
    np.testing.assert_allclose(f(xs, a), w @ xs, atol=1e-5, rtol=1e-5)


def test_errors():
    a = CSR.from_dense(case("mixed"))
    x = dense_x(0, (K, N))
    with pytest.raises(TypeError, match="`a` must be a sparsejax.formats.CSR"):
        ops.csr_matmul(np.eye(3), x)
    with pytest.raises(ValueError, match=r"`x` must be of shape \[K\] or \[K, N\] with K"):
        ops.csr_matmul(a, x.T)
    with pytest.raises(TypeError, match="`x` must be a floating-point"):
        ops.csr_matmul(a, x.astype(np.int32))
    with pytest.raises(ValueError, match=r"`x` must be of shape \[..., M\]"):
        ops.dense_csr_matmul(x, a)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        ops.csr_matmul(a, x, backend="cusparse")
    with pytest.raises(ValueError, match="`a, b` must be"):
        ops.csr_sddmm(x, x, a)
    with pytest.raises(ValueError, match="`data_format` must be one of"):
        ops.sparse_conv1x1(np.ones((1, 2, 2, K), np.float32), a, data_format="HWC")
    with pytest.raises(ValueError, match="`x` must be"):
        ops.sparse_conv1x1(np.ones((1, 2, 2, K + 1), np.float32), a)
    with pytest.raises(ValueError, match="`a` must be an unbatched CSR"):
        ops.csr_matmul(a.replace(indptr=a.indptr[:-1]), x)

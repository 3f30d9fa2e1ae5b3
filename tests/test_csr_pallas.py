"""The CSR Pallas GPU kernels: interpret mode against dense references (tiny), through the public
API with gradients, and the real Pallas -> Triton lowering (no GPU needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import ops
from sparsejax.formats import CSR
from sparsejax.ops import csr_pallas_gpu

RNG = np.random.default_rng(0)
W = np.where(RNG.random((6, 5)) < 0.4, RNG.standard_normal((6, 5)), 0).astype(np.float32)
W[1] = 0.0  # an empty row
W[3] = RNG.standard_normal(5)  # a full row (the swizzle runs it first)
X = RNG.standard_normal((5, 20)).astype(np.float32)  # N = 20: a padded column tile


def test_row_swizzle_is_longest_first():
    a = CSR.from_dense(W)
    order = np.asarray(csr_pallas_gpu.row_swizzle(a.indptr))
    counts = np.diff(np.asarray(a.indptr))
    assert sorted(order) == list(range(6)) and order[0] == 3
    assert np.all(np.diff(counts[order]) <= 0)


@pytest.mark.parametrize("zero", [False, True])
def test_kernels_equal_dense_in_interpret_mode(zero):
    w = np.zeros_like(W) if zero else W
    a = CSR.from_dense(w, nse=20)  # padded slots
    np.testing.assert_allclose(csr_pallas_gpu.csr_matmul(a, X, interpret=True), w @ X,
                               atol=1e-5, rtol=1e-5)
    p, q = RNG.standard_normal((6, 7)).astype(np.float32), RNG.standard_normal((7, 5)).astype(np.float32)
    got = csr_pallas_gpu.csr_sddmm(p, q, a, interpret=True)
    want = np.where(w != 0, p @ q, 0)
    np.testing.assert_allclose(a.replace(data=got).to_dense(), want, atol=1e-5, rtol=1e-5)
    assert not np.asarray(got)[int(a.nnz):].any()


def test_public_api_with_gradients_and_bf16():
    a = CSR.from_dense(W, nse=18)
    x = X[:, :3]
    y = ops.csr_matmul(a, x, backend="pallas_gpu", interpret=True)
    np.testing.assert_allclose(y, W @ x, atol=1e-5, rtol=1e-5)
    gy = RNG.standard_normal((6, 3)).astype(np.float32)
    dd = jax.grad(lambda d: jnp.sum(ops.csr_matmul(a.replace(data=d), x, backend="pallas_gpu",
                                                   interpret=True) * gy))(a.data)
    np.testing.assert_allclose(dd, ops.csr_sddmm(gy, x.T, a, backend="reference").data,
                               atol=1e-5, rtol=1e-5)
    ab = CSR.from_dense(jnp.asarray(W, jnp.bfloat16))
    yb = ops.csr_matmul(ab, jnp.asarray(x, jnp.bfloat16), backend="pallas_gpu", interpret=True)
    assert yb.dtype == jnp.bfloat16
    ref = np.asarray(ab.to_dense(), np.float32) @ np.asarray(jnp.asarray(x, jnp.bfloat16),
                                                            np.float32)
    np.testing.assert_allclose(np.asarray(yb, np.float32), ref, atol=2e-2, rtol=1e-2)


def _lower(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gpu_kernels_lower_to_triton(dtype):
    a = CSR.from_dense(jnp.asarray(W, dtype), nse=24)
    x, u, v = jnp.ones((5, 300), dtype), jnp.ones((6, 100), dtype), jnp.ones((100, 5), dtype)
    assert "xla.gpu.triton" in _lower(csr_pallas_gpu.csr_matmul, a, x)
    assert "xla.gpu.triton" in _lower(csr_pallas_gpu.csr_sddmm, u, v, a)


@pytest.mark.skipif(jax.default_backend() not in ("gpu", "cuda", "rocm"), reason="needs a GPU")
def test_on_device_gpu_compiled_kernels():
    rng = np.random.default_rng(7)
    w = np.where(rng.random((300, 200)) < 0.1, rng.standard_normal((300, 200)), 0)
    w[5] = rng.standard_normal(200)
    a = CSR.from_dense(jnp.asarray(w, jnp.float32), nse=int((w != 0).sum()) + 5)
    x = rng.standard_normal((200, 130)).astype(np.float32)
    y = ops.csr_matmul(a, x, backend="pallas_gpu", interpret=False)
    np.testing.assert_allclose(y, w @ x, atol=1e-4, rtol=1e-4)
    p, q = rng.standard_normal((300, 70)), rng.standard_normal((70, 200))
    got = ops.csr_sddmm(p.astype(np.float32), q.astype(np.float32), a, backend="pallas_gpu",
                        interpret=False)
    np.testing.assert_allclose(got.to_dense(), np.where(w != 0, p @ q, 0), atol=1e-4, rtol=1e-4)

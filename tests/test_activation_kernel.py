"""`sparsejax.ops.sparse_input_matmul` against the dense ``x @ W``.

Every backend (Pallas ones in interpret mode on tiny shapes) on random inputs at several input
sparsities, with empty and full inputs, bf16, ragged sizes, batch 1 and small batches; gradients
against ``jax.grad`` of the dense product; the real Pallas -> Mosaic TPU / Triton lowering.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.ops import sparse_input, sparse_input_gpu, sparse_input_matmul, sparse_input_tpu
from sparsejax.ops.sparse_input import compact_inputs


def _operands(seed, b, k, n, sparsity, dtype=jnp.float32):
    # NumPy draws: jax.random compiles a program per new shape (~0.1 s each)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, k), np.float32)
    x = jnp.asarray(np.where(rng.random((1, k)) < sparsity, 0.0, x), dtype)
    w = jnp.asarray(rng.standard_normal((k, n), np.float32), dtype)
    return x, w


def _dense(x, w):
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64)


CASES = [
    (1, 200, 136, 0.5),     # GEMV, ragged K and N
    (3, 70, 40, 0.9),       # small batch
    (1, 64, 128, 0.0),      # full input
    (2, 96, 33, 1.0),       # empty input
]


@pytest.mark.parametrize("backend,b,k,n,sparsity", [
    *[("xla", *c) for c in CASES],
    *[("pallas_gpu", *c) for c in (CASES[0], CASES[1])],
    *[("pallas_tpu", *c) for c in (CASES[0], CASES[3])],
    ("reference", *CASES[0]),
])
def test_matches_dense(backend, b, k, n, sparsity):
    x, w = _operands(b + k, b, k, n, sparsity)
    y = sparse_input_matmul(x, w, backend=backend)
    assert y.shape == (b, n) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, _dense(x, w), rtol=1e-4, atol=1e-4)
    if sparsity == 1.0:
        assert not np.any(np.asarray(y))


@pytest.mark.parametrize("backend", ["xla", "pallas_gpu", "pallas_tpu"])
def test_bf16_accumulates_in_f32(backend):
    x, w = _operands(5, 2, 256, 128, 0.6, jnp.bfloat16)
    y = sparse_input_matmul(x, w, backend=backend)
    assert y.dtype == jnp.bfloat16
    # error of one bf16 rounding of an f32-accumulated sum, not of a bf16 accumulation
    np.testing.assert_allclose(np.float32(y), _dense(x, w), rtol=1e-2, atol=0.1)


def test_per_row_zeros_use_the_union_and_leading_axes():
    x, w = _operands(6, 6, 40, 24, 0.5)
    x = x.at[::2, :10].set(0.0).reshape(2, 3, 40)   # zero in some rows only
    y = sparse_input_matmul(x, w, backend="xla")
    assert y.shape == (2, 3, 24)
    np.testing.assert_allclose(y, np.einsum("abk,kn->abn", np.float64(x), np.float64(w)),
                               rtol=1e-4, atol=1e-4)


@settings(max_examples=6)
@given(st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_xla_equals_dense_property(sparsity, seed):
    # one shape (one compilation); the chunk loop's trip count varies with the data
    x, w = _operands(seed, 3, 97, 50, sparsity)
    np.testing.assert_allclose(sparse_input_matmul(x, w, backend="xla"), _dense(x, w),
                               rtol=1e-4, atol=1e-4)


def test_xla_paths_agree_at_every_nnz_remainder():
    # the row loop reads ROW_UNROLL rows per trip: every padding length, none, one and two trips
    u = sparse_input.ROW_UNROLL
    k = 2 * u + 1
    x, w = _operands(11, 2, k, 9, 0.0)
    rows, chunks = jax.jit(sparse_input._xla_rows), jax.jit(sparse_input._xla_chunks)
    for nnz in (0, 1, u - 1, u, u + 1, k):
        xs = x.at[:, nnz:].set(0.0)
        want = _dense(xs, w)
        np.testing.assert_allclose(rows(xs, w), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(chunks(xs, w), want, rtol=1e-5, atol=1e-5)


def test_compact_inputs_lists_exactly_the_nonzero_inputs():
    x = jnp.array([[0.0, 2.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 3.0, 0.5]])
    nnz, idx, xg = compact_inputs(x, 4)
    assert int(nnz) == 3 and idx.shape == (8,)
    np.testing.assert_array_equal(idx[:3], [1, 3, 4])
    np.testing.assert_array_equal(xg[:, :3], x[:, [1, 3, 4]])
    assert not np.any(np.asarray(xg[:, 3:]))


@pytest.mark.parametrize("backend", ["xla", "pallas_gpu"])
def test_gradients_match_dense(backend):
    x, w = _operands(7, 2, 48, 32, 0.5)
    g = jax.random.normal(jax.random.key(8), (2, 32))

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * g)

    got = jax.grad(loss(lambda x, w: sparse_input_matmul(x, w, backend=backend)), (0, 1))(x, w)
    want = jax.grad(loss(lambda x, w: x @ w), (0, 1))(x, w)
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    if backend == "xla":   # under jit too
        jitted = jax.jit(jax.grad(loss(lambda x, w: sparse_input_matmul(x, w, backend=backend))))
        np.testing.assert_allclose(jitted(x, w), want[0], rtol=1e-4, atol=1e-4)


def test_jit_and_vmap():
    x, w = _operands(9, 4, 40, 24, 0.7)
    f = jax.jit(lambda x: sparse_input_matmul(x, w, backend="xla"))
    np.testing.assert_allclose(f(x), _dense(x, w), rtol=1e-4, atol=1e-4)
    v = jax.vmap(lambda r: sparse_input_matmul(r, w, backend="xla"))(x)
    np.testing.assert_allclose(v, _dense(x, w), rtol=1e-4, atol=1e-4)


def test_errors():
    w = jnp.ones((8, 4))
    with pytest.raises(ValueError, match="`x` must be"):
        sparse_input_matmul(jnp.ones((2, 7)), w)
    with pytest.raises(ValueError, match="`w` must be a 2-D"):
        sparse_input_matmul(jnp.ones((2, 8)), jnp.ones((8, 4, 1)))
    with pytest.raises(TypeError, match="`x` must be a floating-point"):
        sparse_input_matmul(jnp.ones((2, 8), jnp.int32), w)
    with pytest.raises(ValueError, match="`backend` must be"):
        sparse_input_matmul(jnp.ones((2, 8)), w, backend="cuda")
    with pytest.raises(ValueError, match="at most"):
        sparse_input_gpu.sparse_input_matmul(jnp.ones((65, 8)), w, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        sparse_input_gpu.sparse_input_matmul(jnp.ones((1, 8)), w, block_k=24, interpret=True)
    with pytest.raises(ValueError, match="divisible"):
        sparse_input_tpu.sparse_input_matmul(jnp.ones((1, 8)), jnp.ones((8, 700)),
                                             interpret=True)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        sparse_input_tpu.sparse_input_matmul(jnp.ones((1, 8), jnp.float64 if jax.config.x64_enabled
                                                      else jnp.int8), w, interpret=True)


def _lower(fn, *args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("dtype,b", [(jnp.float32, 1), (jnp.bfloat16, 5)])
def test_kernels_lower_for_tpu_and_gpu(dtype, b):
    x, w = jnp.ones((b, 512), dtype), jnp.ones((512, 1024), dtype)
    assert "tpu_custom_call" in _lower(sparse_input_tpu.sparse_input_matmul, x, w, platform="tpu")
    assert "xla.gpu.triton" in _lower(sparse_input_gpu.sparse_input_matmul, x, w,
                                      platform="cuda")


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_on_device(platform):
    # Compiled kernels (interpret=False) only on a host of the matching platform
    # (benchmarks/device_check.py runs this on a GPU).
    if jax.default_backend() != platform:
        pytest.skip(f"needs a {platform.upper()}; this host runs {jax.default_backend()}")
    mod = sparse_input_gpu if platform == "gpu" else sparse_input_tpu
    backend = f"pallas_{platform}"
    for dtype in (jnp.float32, jnp.bfloat16):
        for b, sparsity in [(1, 0.5), (1, 0.0), (1, 1.0), (8, 0.7)]:
            x, w = _operands(b, b, 1024, 512, sparsity, dtype)
            y = jax.jit(mod.sparse_input_matmul)(x, w)
            # bf16 passes / TF32 on device: compare at bf16 tolerance
            np.testing.assert_allclose(np.float32(y), _dense(x, w), rtol=2e-2, atol=0.3)
    x, w = _operands(11, 2, 256, 128, 0.5)
    g = jax.grad(lambda w: jnp.sum(sparse_input_matmul(x, w, backend=backend) ** 2))(w)
    want = jax.grad(lambda w: jnp.sum(jnp.matmul(x, w, precision="highest") ** 2))(w)
    np.testing.assert_allclose(g, want, rtol=2e-2, atol=0.3)

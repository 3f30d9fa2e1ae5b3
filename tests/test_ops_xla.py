"""sparsejax.ops: every backend against the densify-and-jnp reference, gradients, errors.

The XLA backend gets the full matrix of densities, dtypes and transforms. The Pallas backends
(``pallas_tpu``/``pallas_gpu``, tested in depth by ``tests/test_ops_pallas.py``) are checked here
through the public dispatch and its custom VJPs, in interpret mode at one small shape (interpret
mode is slow).
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sparsejax import ops
from sparsejax.formats import BlockSparse, NMSparse

M, K, N = 32, 48, 8
BS = (8, 16)  # block shape of the sparse operand: 4 x 3 blocks
R, C = M // BS[0], K // BS[1]


def _pallas_backends() -> list[str]:
    out = []
    for name in ("pallas_tpu", "pallas_gpu"):
        try:
            importlib.import_module(f"sparsejax.ops.{name}")
        except ImportError:
            continue
        out.append(name)
    return out


BACKENDS = ["xla"]
PALLAS = _pallas_backends()


def block_mask(kind: str, r: int = R, c: int = C, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "zero":
        return np.zeros((r, c), bool)
    if kind == "one":
        out = np.zeros((r, c), bool)
        out[rng.integers(r), rng.integers(c)] = True
        return out
    if kind == "full":
        return np.ones((r, c), bool)
    density = {"5%": 0.05, "50%": 0.5}[kind]
    out = rng.random((r, c)) < density
    out[1] = False  # an empty row
    return out


def random_bsr(kind: str, shape=(M, K), bs=BS, dtype=jnp.float32, seed: int = 0) -> BlockSparse:
    x = jax.random.normal(jax.random.PRNGKey(seed), shape).astype(dtype)
    mask = block_mask(kind, shape[0] // bs[0], shape[1] // bs[1], seed)
    return BlockSparse.from_dense(x, bs, jnp.asarray(mask))


def tol(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-4)


def run(fn, backend, *args):
    kw = {"interpret": True} if backend.startswith("pallas") else {}
    return fn(*args, backend=backend, **kw)


KINDS = ["zero", "one", "5%", "50%", "full"]


CASES = [(kind, jnp.float32) for kind in KINDS] + [("one", jnp.bfloat16), ("50%", jnp.bfloat16)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, dtype", CASES)
def test_products_match_reference(backend, kind, dtype):
    a = random_bsr(kind, dtype=dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (K, N)).astype(dtype)
    x = jax.random.normal(jax.random.PRNGKey(2), (N, M)).astype(dtype)
    dense = np.asarray(a.to_dense(), np.float32)

    got = jax.jit(lambda a, b: run(ops.bsr_matmul, backend, a, b))(a, b)
    assert got.shape == (M, N) and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), dense @ np.asarray(b, np.float32),
                               **tol(dtype))

    got = jax.jit(lambda x, a: run(ops.dense_bsr_matmul, backend, x, a))(x, a)
    assert got.shape == (N, K) and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(x, np.float32) @ dense,
                               **tol(dtype))

    # sddmm: (x.T [M, N]) @ (c [N, K]) sampled at a's blocks
    c = jax.random.normal(jax.random.PRNGKey(3), (N, K)).astype(dtype)
    s = jax.jit(lambda u, v, a: run(ops.sddmm, backend, u, v, a))(x.T, c, a)
    full = np.asarray(x, np.float32).T @ np.asarray(c, np.float32)
    keep = np.kron(np.asarray(a.block_mask()), np.ones(BS)).astype(bool)
    np.testing.assert_allclose(np.asarray(s.to_dense(), np.float32), full * keep, **tol(dtype))
    assert not np.asarray(s.data, np.float32)[~np.asarray(a.valid_slots())].any()
    np.testing.assert_array_equal(np.asarray(s.indices), np.asarray(a.indices))


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_matmul_operators_vector_and_batch_axes(backend):
    a = random_bsr("50%")
    dense = np.asarray(a.to_dense())
    v = jax.random.normal(jax.random.PRNGKey(4), (K,))
    np.testing.assert_allclose(run(ops.bsr_matmul, backend, a, v), dense @ np.asarray(v),
                               rtol=1e-5, atol=1e-4)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 3, M))
    np.testing.assert_allclose(run(ops.dense_bsr_matmul, backend, x, a),
                               np.asarray(x) @ dense, rtol=1e-5, atol=1e-4)
    if backend == "xla":  # operators dispatch with backend="auto" (= xla on CPU)
        np.testing.assert_allclose(x @ a, np.asarray(x) @ dense, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.asarray(x) @ a, np.asarray(x) @ dense, rtol=1e-5,
                                   atol=1e-4)
        b = jax.random.normal(jax.random.PRNGKey(6), (K, 5))
        np.testing.assert_allclose(a @ b, dense @ np.asarray(b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_dense_and_sparse_operands(backend):
    a = random_bsr("50%")
    bs = jax.random.normal(jax.random.PRNGKey(7), (3, K, N))
    got = jax.vmap(lambda b: run(ops.bsr_matmul, backend, a, b))(bs)
    np.testing.assert_allclose(got, np.asarray(a.to_dense()) @ np.asarray(bs), rtol=1e-5,
                               atol=1e-4)
    xs = jax.random.normal(jax.random.PRNGKey(8), (2, 4, M))
    stack = jnp.stack([random_bsr("50%", seed=s).to_dense() for s in (0, 1)])
    masks = jnp.stack([jnp.asarray(block_mask("50%", seed=s)) for s in (0, 1)])
    a2 = jax.vmap(lambda x, m: BlockSparse.from_dense(x, BS, m, max_blocks_per_row=C))(stack,
                                                                                      masks)
    got = jax.vmap(lambda x, a: run(ops.dense_bsr_matmul, backend, x, a))(xs, a2)
    np.testing.assert_allclose(got, np.asarray(xs) @ np.asarray(stack), rtol=1e-5, atol=1e-4)


def _masked_ref_grads(fn, dense, mask, *args):
    """Gradients of the dense reference, the weight's one restricted to the kept blocks."""
    grads = jax.grad(fn, argnums=tuple(range(1 + len(args))))(dense, *args)
    keep = np.kron(mask, np.ones(BS))
    return (np.asarray(grads[0]) * keep, *grads[1:])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("kind", ["zero", "5%", "full"])
def test_gradients_match_reference(backend, kind):
    a = random_bsr(kind)
    mask = np.asarray(a.block_mask())
    b = jax.random.normal(jax.random.PRNGKey(1), (K, N))
    x = jax.random.normal(jax.random.PRNGKey(2), (N, M))

    def loss_sd(data, b):
        return jnp.sum(jnp.tanh(run(ops.bsr_matmul, backend, a.replace(data=data), b)) ** 2)

    def loss_ds(x, data):
        return jnp.sum(jnp.tanh(run(ops.dense_bsr_matmul, backend, x, a.replace(data=data))) ** 2)

    gd, gb = jax.jit(jax.grad(loss_sd, argnums=(0, 1)))(a.data, b)
    rd, rb = _masked_ref_grads(lambda w, b: jnp.sum(jnp.tanh(w @ b) ** 2), a.to_dense(), mask, b)
    assert gd.shape == a.data.shape  # compressed: kept blocks only, never [M, K]
    np.testing.assert_allclose(a.replace(data=gd).to_dense(), rd, rtol=1e-4, atol=1e-4)
    assert not np.asarray(gd)[~np.asarray(a.valid_slots())].any()
    np.testing.assert_allclose(gb, rb, rtol=1e-4, atol=1e-4)

    gx, gd = jax.jit(jax.grad(loss_ds, argnums=(0, 1)))(x, a.data)
    rd, rx = _masked_ref_grads(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2), a.to_dense(), mask, x)
    np.testing.assert_allclose(a.replace(data=gd).to_dense(), rd, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)


def test_sddmm_gradient_and_allow_int():
    a = random_bsr("50%")
    u = jax.random.normal(jax.random.PRNGKey(1), (M, N))
    v = jax.random.normal(jax.random.PRNGKey(2), (N, K))
    keep = np.kron(np.asarray(a.block_mask()), np.ones(BS))

    def loss(u, v):
        return jnp.sum(jnp.sin(ops.sddmm(u, v, a).data))

    gu, gv = jax.grad(loss, argnums=(0, 1))(u, v)
    ru, rv = jax.grad(lambda u, v: jnp.sum(jnp.sin(u @ v) * keep), argnums=(0, 1))(u, v)
    np.testing.assert_allclose(gu, ru, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gv, rv, rtol=1e-4, atol=1e-4)
    # differentiating a whole BlockSparse: data cotangent + float0 for the integer leaves
    g = jax.grad(lambda a: jnp.sum(a @ v.T), allow_int=True)(a)
    assert isinstance(g, BlockSparse) and g.indices.dtype == jax.dtypes.float0


def test_check_grads_xla():
    a = random_bsr("50%", shape=(16, 32), bs=(8, 16))
    b = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 16))
    u = jax.random.normal(jax.random.PRNGKey(3), (16, 3))
    kw = dict(order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-2)
    # each function jitted: check_grads evaluates it at several points of one shape (one compile
    # instead of one per primitive and call); the VJP checked is the same
    check_grads(jax.jit(lambda d, b: ops.bsr_matmul(a.replace(data=d), b, backend="xla")),
                (a.data, b), **kw)
    check_grads(jax.jit(lambda x, d: ops.dense_bsr_matmul(x, a.replace(data=d), backend="xla")),
                (x, a.data), **kw)
    check_grads(jax.jit(lambda u, b: ops.sddmm(u, b.T, a, backend="xla").data), (u, b), **kw)


# ---------------------------------------------------------------------------------------------
# N:M
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["xla", "reference"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 8), (0, 4)])
def test_nm_products_match_reference(backend, dtype, n, m):
    w = jax.random.normal(jax.random.PRNGKey(0), (K, N)).astype(dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, K)).astype(dtype)
    flax_w = NMSparse.from_dense(w, n, m, axis=0)  # [in, out], grouped along the reduction
    ref = np.asarray(x, np.float32) @ np.asarray(flax_w.to_dense(), np.float32)
    got = jax.jit(lambda x, w: ops.dense_nm_matmul(x, w, backend=backend))(x, flax_w)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, **tol(dtype))
    torch_w = NMSparse.from_dense(w.T, n, m, axis=1)  # [out, in]
    xt = x.reshape(-1, K).T
    got = jax.jit(lambda w, x: ops.nm_matmul(w, x, backend=backend))(torch_w, xt)
    ref = np.asarray(torch_w.to_dense(), np.float32) @ np.asarray(xt, np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, **tol(dtype))


def test_nm_gradient_vmap_and_operators():
    w = NMSparse.from_dense(jax.random.normal(jax.random.PRNGKey(0), (K, N)), 2, 4, axis=0)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, K))

    def loss(values, x):
        return jnp.sum(jnp.tanh(ops.dense_nm_matmul(x, NMSparse(values, w.indices, 2, 4, -2, K))))

    gv, gx = jax.grad(loss, argnums=(0, 1))(w.values, x)
    rw, rx = jax.grad(lambda d, x: jnp.sum(jnp.tanh(x @ d)), argnums=(0, 1))(w.to_dense(), x)
    # values gradient = dense gradient at the kept positions
    np.testing.assert_allclose(NMSparse(gv, w.indices, 2, 4, -2, K).to_dense(),
                               np.asarray(rw) * np.asarray(w.mask()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    check_grads(lambda v: ops.dense_nm_matmul(x, NMSparse(v, w.indices, 2, 4, -2, K)),
                (w.values,), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-2)
    np.testing.assert_allclose(x @ w, np.asarray(x) @ np.asarray(w.to_dense()), rtol=1e-5,
                               atol=1e-5)
    wt = NMSparse.from_dense(jax.random.normal(jax.random.PRNGKey(2), (N, K)), 2, 4, axis=1)
    np.testing.assert_allclose(wt @ x.T, np.asarray(wt.to_dense()) @ np.asarray(x.T), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(wt @ x[0], np.asarray(wt.to_dense()) @ np.asarray(x[0]),
                               rtol=1e-5, atol=1e-5)
    # a weight grouped along its output axis is densified (same result)
    w_out = NMSparse.from_dense(jax.random.normal(jax.random.PRNGKey(3), (K, N)), 2, 4, axis=1)
    np.testing.assert_allclose(x @ w_out, np.asarray(x) @ np.asarray(w_out.to_dense()),
                               rtol=1e-5, atol=1e-5)
    xs = jax.random.normal(jax.random.PRNGKey(4), (3, 6, K))
    got = jax.vmap(lambda x: x @ w)(xs)
    np.testing.assert_allclose(got, np.asarray(xs) @ np.asarray(w.to_dense()), rtol=1e-5,
                               atol=1e-5)


# ---------------------------------------------------------------------------------------------
# dispatch and errors
# ---------------------------------------------------------------------------------------------


def test_resolve_backend_auto_on_cpu():
    assert ops.resolve_backend("auto") == {"cpu": "xla", "tpu": "pallas_tpu"}.get(
        jax.default_backend(), "pallas_gpu")
    assert ops.resolve_backend("reference") == "reference"


def test_errors():
    a = random_bsr("50%")
    b = jnp.ones((K, N))
    with pytest.raises(TypeError, match="`a` must be a sparsejax.formats.BlockSparse.*ndarray"):
        ops.bsr_matmul(np.ones((M, K)), b)
    with pytest.raises(ValueError, match=r"`b` must have shape \[K\] or \[K, N\].*K = .*48"):
        ops.bsr_matmul(a, jnp.ones((K + 1, N)))
    with pytest.raises(TypeError, match=r"`?b`? must be a floating-point array.*int32"):
        ops.bsr_matmul(a, jnp.ones((K, N), jnp.int32))
    with pytest.raises(ValueError, match="`backend` must be one of.*'cuda'"):
        ops.bsr_matmul(a, b, backend="cuda")
    with pytest.raises(ValueError, match=r"`x` must have shape \[..., M\] with M = .*32"):
        ops.dense_bsr_matmul(jnp.ones((2, K)), a)
    with pytest.raises(TypeError, match="`like` must be a sparsejax.formats.BlockSparse"):
        ops.sddmm(jnp.ones((M, 2)), jnp.ones((2, K)), jnp.ones((M, K)))
    with pytest.raises(ValueError, match=r"must chain to like.shape \(32, 48\)"):
        ops.sddmm(jnp.ones((M, 2)), jnp.ones((3, K)), a)
    w = NMSparse.from_dense(jnp.ones((K, N)), 2, 4, axis=0)
    with pytest.raises(TypeError, match="`w` must be a sparsejax.formats.NMSparse"):
        ops.dense_nm_matmul(jnp.ones((2, K)), jnp.ones((K, N)))
    with pytest.raises(ValueError, match=r"`x` must have shape \[..., K\] with K = 48"):
        ops.dense_nm_matmul(jnp.ones((2, N)), w)
    with pytest.raises(ValueError, match=r"`backend` must be one of \('auto', 'reference', 'xla', 'pallas_gpu'\).*'pallas_tpu'"):
        ops.dense_nm_matmul(jnp.ones((2, K)), w, backend="pallas_tpu")
    w3 = NMSparse.from_dense(jnp.ones((2, K, N)), 2, 4, axis=1)
    with pytest.raises(ValueError, match="`w` must be a 2-D NMSparse"):
        ops.dense_nm_matmul(jnp.ones((2, K)), w3)


@pytest.mark.parametrize("backend", PALLAS)
def test_pallas_dispatch_and_gradients(backend):
    bs = (16, 16)  # the Triton kernels need power-of-two blocks >= 16
    a = random_bsr("50%", shape=(32, 48), bs=bs)
    mask = np.kron(np.asarray(a.block_mask()), np.ones(bs))
    b = jax.random.normal(jax.random.PRNGKey(1), (48, 16))
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 32))
    dense = np.asarray(a.to_dense())
    np.testing.assert_allclose(run(ops.bsr_matmul, backend, a, b), dense @ np.asarray(b),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(ops.dense_bsr_matmul, backend, x, a), np.asarray(x) @ dense,
                               rtol=1e-4, atol=1e-4)
    s = run(ops.sddmm, backend, x.T, b.T, a)
    np.testing.assert_allclose(s.to_dense(), (np.asarray(x).T @ np.asarray(b).T) * mask,
                               rtol=1e-4, atol=1e-4)

    def loss(data, b):
        return jnp.sum(jnp.tanh(run(ops.bsr_matmul, backend, a.replace(data=data), b)) ** 2)

    gd, gb = jax.grad(loss, argnums=(0, 1))(a.data, b)
    rd, rb = jax.grad(lambda w, b: jnp.sum(jnp.tanh(w @ b) ** 2), argnums=(0, 1))(
        a.to_dense(), b)
    np.testing.assert_allclose(a.replace(data=gd).to_dense(), np.asarray(rd) * mask, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(gb, rb, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif("pallas_gpu" not in PALLAS, reason="no sparsejax.ops.pallas_gpu")
def test_nm_pallas_gpu_dispatch_and_gradient():
    w = NMSparse.from_dense(jax.random.normal(jax.random.PRNGKey(0), (64, 32)), 2, 4, axis=0)  # [in, out]
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 64))
    got = ops.dense_nm_matmul(x, w, backend="pallas_gpu", interpret=True)
    np.testing.assert_allclose(got, np.asarray(x) @ np.asarray(w.to_dense()), rtol=1e-4,
                               atol=1e-4)

    def loss(values, x, backend):
        wv = NMSparse(values, w.indices, 2, 4, -2, 64)
        kw = {"interpret": True} if backend == "pallas_gpu" else {}
        return jnp.sum(jnp.tanh(ops.dense_nm_matmul(x, wv, backend=backend, **kw)))

    got = jax.grad(loss, argnums=(0, 1))(w.values, x, "pallas_gpu")
    want = jax.grad(loss, argnums=(0, 1))(w.values, x, backend="xla")
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_xla_block_loop_and_dense_fallback_agree():
    # above xla.DENSE_FALLBACK_DENSITY the XLA backend densifies; the block loop must agree there
    from sparsejax.ops import xla

    a = random_bsr("full")
    assert float(a.density) > xla.DENSE_FALLBACK_DENSITY
    b = jax.random.normal(jax.random.PRNGKey(1), (K, N))
    x = jax.random.normal(jax.random.PRNGKey(2), (N, M))
    dense = np.asarray(a.to_dense())
    np.testing.assert_allclose(xla._bsr_matmul_loop(a, b), dense @ np.asarray(b), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(xla._dense_bsr_matmul_loop(x, a), np.asarray(x) @ dense,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(xla._sddmm_loop(x.T, b.T, a), xla._sddmm_dense(x.T, b.T, a),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.skipif("pallas_gpu" not in PALLAS, reason="no sparsejax.ops.pallas_gpu")
def test_auto_on_gpu_falls_back_to_xla_for_untileable_blocks(monkeypatch):
    # pretend to be on a GPU: 8x16 blocks are rejected by the Triton kernels -> xla
    a = random_bsr("50%")
    b = jax.random.normal(jax.random.PRNGKey(1), (K, N))
    with pytest.raises(ValueError, match="power of two"):
        ops.bsr_matmul(a, b, backend="pallas_gpu", interpret=True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ops.resolve_backend("auto") == "pallas_gpu"
    got = jax.grad(lambda d: jnp.sum(ops.bsr_matmul(a.replace(data=d), b) ** 2))(a.data)
    want = jax.grad(lambda d: jnp.sum(ops.bsr_matmul(a.replace(data=d), b, backend="xla") ** 2))(a.data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

"""Transposable N:M products: forward and gradients equal the dense masked product's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import masks, ops
from sparsejax.formats import NMSparse


def _setup(shape, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, shape)
    return w, masks.nm_transposable(jnp.abs(w), 2, 4)


def test_transpose_recompresses_along_the_other_axis():
    w, mask = _setup((8, 12))
    for axis in (0, 1):
        s = NMSparse.from_dense(w, 2, 4, axis=axis, mask=mask)
        t = s.transpose()
        assert t.axis == s.axis and t.shape == (12, 8)
        np.testing.assert_array_equal(t.to_dense(), (w * mask).T)
        np.testing.assert_array_equal(t.transpose().to_dense(), w * mask)
    plain = NMSparse.from_dense(w, 2, 4, axis=1)  # N:M along axis 1 only
    if not bool(masks.satisfies_nm(plain.mask(), 2, 4, axis=0)):
        with pytest.raises(ValueError, match="transposable"):
            plain.transpose()


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_gradients_equal_dense_masked(layout):
    w, mask = _setup((8, 16), seed=1)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 3) if layout == "out_in" else (3, 8))
    if layout == "out_in":  # W [M, K] @ x [K, N]
        s = NMSparse.from_dense(w, 2, 4, axis=1, mask=mask)
        f = lambda v, x: jnp.sum(jnp.sin(ops.transposable_nm_matmul(s.replace(values=v), x)))  # noqa: E731
        ref = lambda wd, x: jnp.sum(jnp.sin((wd * mask) @ x))  # noqa: E731
    else:  # x [B, K] @ W [K, N]
        s = NMSparse.from_dense(w, 2, 4, axis=0, mask=mask)
        f = lambda v, x: jnp.sum(jnp.sin(ops.dense_transposable_nm_matmul(x, s.replace(values=v))))  # noqa: E731
        ref = lambda wd, x: jnp.sum(jnp.sin(x @ (wd * mask)))  # noqa: E731
    gv, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(s.values, x)
    rw, rx = jax.grad(ref, argnums=(0, 1))(w, x)
    np.testing.assert_allclose(f(s.values, x), ref(w, x), rtol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.replace(values=gv).to_dense(), rw * mask, rtol=1e-5, atol=1e-5)


def test_errors():
    w, mask = _setup((8, 16))
    s = NMSparse.from_dense(w, 2, 4, axis=1, mask=mask)
    with pytest.raises(ValueError, match="axis 0"):
        ops.dense_transposable_nm_matmul(jnp.ones((2, 8)), s)
    with pytest.raises(ValueError, match="`x` must be of shape"):
        ops.transposable_nm_matmul(s, jnp.ones((8, 2)))


def test_nmlinear_transposable_option():
    nnx = pytest.importorskip("flax.nnx")
    from sparsejax.nn import NMLinear

    layer = NMLinear(8, 12, n=2, m=4, transposable=True, rngs=nnx.Rngs(0))
    w = layer.weight
    assert bool(masks.satisfies_nm(w.mask(), 2, 4, axis=1))  # N:M along out too
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 8))
    dense = w.to_dense()
    np.testing.assert_allclose(layer(x), x @ dense + layer.bias[...], rtol=1e-5, atol=1e-5)
    g = nnx.grad(lambda mdl: jnp.sum(mdl(x) ** 2))(layer)
    ref = jax.grad(lambda d: jnp.sum((x @ d + layer.bias[...]) ** 2))(dense)
    gv = [leaf for leaf in jax.tree.leaves(g) if jnp.shape(leaf) == w.values.shape]
    assert len(gv) == 1
    np.testing.assert_allclose(w.replace(values=jnp.asarray(gv[0])).to_dense(),
                               ref * w.mask(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="along out as well"):
        NMLinear(8, 12, kernel=jnp.ones((8, 12)), mask=jnp.zeros((8, 12), bool).at[:2].set(True),
                 transposable=True)  # 2:4 along in, 4:4 along out


def test_equinox_nmlinear_transposable_option():
    eqx = pytest.importorskip("equinox")
    from sparsejax.nn.eqx import NMLinear

    layer = NMLinear(8, 12, n=2, m=4, transposable=True, key=jax.random.PRNGKey(0))
    w = layer.weight
    assert bool(masks.satisfies_nm(w.mask(), 2, 4, axis=1))  # N:M along out too
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 8))
    dense = w.to_dense()
    np.testing.assert_allclose(layer(x), x @ dense + layer.bias, rtol=1e-5, atol=1e-5)
    g = eqx.filter_grad(lambda mdl: jnp.sum(mdl(x) ** 2))(layer)
    ref = jax.grad(lambda d: jnp.sum((x @ d + layer.bias) ** 2))(dense)
    np.testing.assert_allclose(w.replace(values=g.weight.values).to_dense(), ref * w.mask(),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="along out as well"):
        NMLinear(8, 12, kernel=jnp.ones((8, 12)), mask=jnp.zeros((8, 12), bool).at[:2].set(True),
                 transposable=True)

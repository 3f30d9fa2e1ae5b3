"""The Flax NNX and Equinox `ThresholdLinear` layers against sparsify + dense matmul."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _data():
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(kx, (3, 16)), jax.random.normal(kw, (16, 8)),
            jax.random.normal(kb, (8,)))


def test_nnx_threshold_linear():
    nnx = pytest.importorskip("flax.nnx")
    from sparsejax.nn import Threshold, ThresholdLinear

    x, w, b = _data()
    lin = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    lin.kernel[...] = w
    lin.bias[...] = b
    layer = ThresholdLinear.from_linear(lin, 0.7, backend="xla")
    xs = jnp.where(jnp.abs(x) > 0.7, x, 0)
    np.testing.assert_allclose(layer(x), xs @ w + b, rtol=1e-5, atol=1e-5)
    # only kernel and bias are trainable; the threshold is not a Param
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert len(jax.tree.leaves(nnx.state(layer, nnx.Param))) == 2      # kernel, bias
    assert len(jax.tree.leaves(nnx.state(layer, Threshold))) == 1      # tau, not trained
    g = jax.grad(lambda k: jnp.sum((xs @ k + b) ** 2))(w)
    np.testing.assert_allclose(grads.kernel[...], g, rtol=1e-4, atol=1e-4)


def test_eqx_threshold_linear():
    eqx = pytest.importorskip("equinox")
    from sparsejax.nn.eqx import ThresholdLinear

    x, w, b = _data()
    lin = eqx.nn.Linear(16, 8, key=jax.random.key(1))
    lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin, (w.T, b))
    layer = ThresholdLinear.from_linear(lin, 0.7, backend="xla")
    xs = jnp.where(jnp.abs(x) > 0.7, x, 0)
    np.testing.assert_allclose(jax.vmap(layer)(x), xs @ w + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x), xs @ w + b, rtol=1e-5, atol=1e-5)
    g = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    np.testing.assert_allclose(g.kernel, jax.grad(lambda k: jnp.sum((xs @ k + b) ** 2))(w),
                               rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(g.tau)) == 0.0

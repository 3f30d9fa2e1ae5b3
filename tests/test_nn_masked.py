"""`nn.Masked` / `nn.eqx.Masked`: forward equals the layer with ``where(mask, w, 0)``; checks."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import nn


def test_nnx_masked_forward_and_gradient():
    layer = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    mask = jax.random.bernoulli(jax.random.key(1), 0.5, (6, 4))
    x = jax.random.normal(jax.random.key(2), (3, 6))
    model = nn.Masked(layer, mask)
    want = x @ jnp.where(mask, layer.kernel[...], 0) + layer.bias[...]
    np.testing.assert_allclose(model(x), want, rtol=1e-6, atol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    assert np.all(np.asarray(grads["layer"]["kernel"][...])[~np.asarray(mask)] == 0)


def test_eqx_masked_forward_and_filter():
    layer = eqx.nn.Linear(6, 4, key=jax.random.key(0))
    mask = jax.random.bernoulli(jax.random.key(1), 0.5, (4, 6))
    x = jax.random.normal(jax.random.key(2), (6,))
    model = nn.eqx.Masked(layer, mask)
    np.testing.assert_allclose(model(x), jnp.where(mask, layer.weight, 0) @ x + layer.bias,
                               rtol=1e-6, atol=1e-6)
    assert not any(leaf.dtype == jnp.bool_
                   for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


@pytest.mark.parametrize("make", [
    lambda m, **kw: nn.Masked(nnx.Linear(6, 4, rngs=nnx.Rngs(0)), m, **kw),
    lambda m, **kw: nn.eqx.Masked(eqx.nn.Linear(4, 6, key=jax.random.key(0)), m.T, **kw),
], ids=["nnx", "eqx"])
def test_masked_errors_name_the_argument(make):
    ok = jnp.ones((6, 4), bool)
    with pytest.raises(TypeError, match="`mask` must be a bool array; got dtype float32"):
        make(ok.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"`mask` must be of shape \(\d, \d\); got shape \(3, 3\)"):
        make(jnp.ones((3, 3), bool).T)
    with pytest.raises(ValueError, match="`weight_name` must be the name of an array attribute "
                                         "of the Linear; got 'nope'"):
        make(ok, weight_name="nope")
    with pytest.raises(TypeError, match="`weight_name` must be a str"):
        make(ok, weight_name=3)

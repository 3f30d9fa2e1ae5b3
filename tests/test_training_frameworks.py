"""sparsejax.training inside Flax NNX and Equinox training loops; the `Masked` wrappers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import training as T

X = jax.random.normal(jax.random.PRNGKey(0), (16, 12))
Y = jnp.arange(16) % 4


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def test_nnx_optimizer_prune_masks_readable_and_exact():
    model = NNXMLP(nnx.Rngs(0))
    schedule = sj.schedules.polynomial(0.75, 0, 4, frequency=2)
    opt = nnx.Optimizer(model, T.prune(optax.adam(1e-2), schedule, update_every=2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(X), Y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    for _ in range(5):
        step(model, opt)
    masks = T.masks_of(opt.opt_state)
    assert masks["l1"]["bias"] is None
    for name, size in (("l1", 12 * 16), ("l2", 16 * 4)):
        m = np.asarray(masks[name]["kernel"])
        assert m.sum() == round(size * 0.25)
        kernel = np.asarray(getattr(model, name).kernel[...])
        assert np.all(kernel[~m] == 0) and np.all(kernel[m] != 0)
    text = sj.summary(nnx.state(model, nnx.Param), print_fn=None)
    assert "l1/kernel" in text and "0.250" in text
    text = sj.summary(nnx.as_pure(nnx.state(model, nnx.Param)), masks, print_fn=None)
    assert "0.250" in text


def test_equinox_filter_training_with_rigl():
    model = eqx.nn.MLP(12, 4, 16, 1, key=jax.random.PRNGKey(1))
    params = eqx.filter(model, eqx.is_inexact_array)
    tx = T.rigl(optax.adam(1e-2), 0.75, allocation="uniform", update_every=2, end_step=6,
                key=jax.random.key(0))
    state = tx.init(params)

    @eqx.filter_jit
    def step(model, state):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(X), Y).mean()
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    first = None
    for _ in range(6):
        model, state, loss = step(model, state)
        first = loss if first is None else first
    masks = T.masks_of(state)
    assert float(loss) < float(first)
    for layer, m in zip(model.layers, masks.layers):
        assert m.bias is None
        mk = np.asarray(m.weight)
        assert mk.sum() == round(mk.size * 0.25)
        assert np.all(np.asarray(layer.weight)[~mk] == 0)


def test_nnx_masked_wrapper():
    layer = nnx.Linear(12, 8, rngs=nnx.Rngs(2))
    mask = sj.masks.nm(jnp.abs(layer.kernel[...]), 2, 4, axis=0)
    wrapped = sj.nn.Masked(layer, mask)
    ref = X @ jnp.where(mask, layer.kernel[...], 0) + layer.bias[...]
    np.testing.assert_allclose(wrapped(X), ref, rtol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2))(wrapped)
    g = np.asarray(grads["layer"]["kernel"][...])
    assert np.all(g[~np.asarray(mask)] == 0) and np.any(g != 0)
    assert "mask" not in nnx.state(wrapped, nnx.Param)
    np.testing.assert_array_equal(layer.kernel[...], wrapped.layer.kernel[...])  # not mutated


def test_eqx_masked_wrapper():
    layer = eqx.nn.Linear(12, 8, key=jax.random.PRNGKey(3))
    mask = sj.masks.unstructured(jnp.abs(layer.weight), 0.5)
    wrapped = sj.nn.eqx.Masked(layer, mask)
    x = X[0]
    np.testing.assert_allclose(wrapped(x), jnp.where(mask, layer.weight, 0) @ x + layer.bias,
                               rtol=1e-6)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(wrapped)
    assert grads.mask is None
    assert np.all(np.asarray(grads.layer.weight)[~np.asarray(mask)] == 0)
    with pytest.raises(ValueError, match="mask"):
        sj.nn.eqx.Masked(layer, mask[:2])
    with pytest.raises(TypeError, match="mask"):
        sj.nn.Masked(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((2, 2)))

"""The Flax NNX and Equinox adapters of `sparsejax.peft` (`nn.to_delta`, `nn.eqx.to_delta`): the
wrapped model trains only the delta and ends equal to the pure-function path (`peft.train_delta`
on the same delta), and `merge_delta` gives plain Linear layers with `peft.merge`'s kernels."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import peft

STEPS = 3


def _data():
    kx = jax.random.key(9)
    x = jax.random.normal(kx, (16, 6))
    return x, jnp.argmax(x[:, :3], axis=1)


def _pure(params, delta, forward, x, y):
    """train_delta(adam) on the values, from the dense gradient at base + delta."""
    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

    tx = peft.train_delta(optax.adam(1e-1))

    @jax.jit
    def run(delta):
        state = tx.init(delta)
        for _ in range(STEPS):
            g = jax.grad(loss)(peft.apply(params, delta))
            u, state = tx.update(g, state, delta)
            delta = optax.apply_updates(delta, u)
        return delta
    return run(delta)


def test_nnx_adapter_trains_only_the_delta_like_the_pure_path():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l0 = nnx.Linear(6, 8, rngs=rngs)
            self.l1 = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.l1(jnp.tanh(self.l0(x)))

    model = MLP(nnx.Rngs(0))
    x, y = _data()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    delta = peft.sparse_delta(params, 0.25, key=jax.random.key(1))
    tuned = sj.nn.to_delta(model, delta)
    assert isinstance(tuned.l0, sj.nn.DeltaLinear) and isinstance(model.l0, nnx.Linear)
    np.testing.assert_allclose(tuned(x), model(x), rtol=1e-6)  # zero delta: same function
    opt = nnx.Optimizer(tuned, optax.adam(1e-1), wrt=nnx.Param)
    n_state = sum(a.size for a in jax.tree.leaves(nnx.state(opt, nnx.OptState)) if a.ndim)
    assert n_state == 2 * peft.delta_size(delta)  # adam's moments of the values only

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def run(model, opt):
        for _ in range(STEPS):
            opt.update(model, nnx.grad(loss)(model))

    run(tuned, opt)

    def forward(p, x):
        h = jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"])
        return h @ p["l1"]["kernel"] + p["l1"]["bias"]

    want = _pure(params, delta, forward, x, y)
    for name in ("l0", "l1"):
        layer = getattr(tuned, name)
        np.testing.assert_array_equal(layer.kernel[...], params[name]["kernel"])  # frozen
        np.testing.assert_array_equal(layer.indices[...], want[name]["kernel"].indices)
        np.testing.assert_allclose(layer.values[...], want[name]["kernel"].values, rtol=1e-5,
                                   atol=1e-6)
    merged = sj.nn.merge_delta(tuned)
    assert isinstance(merged.l0, nnx.Linear)
    pure_merged, _ = peft.merge(params, want)
    np.testing.assert_allclose(merged.l0.kernel[...], pure_merged["l0"]["kernel"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(merged(x), tuned(x), rtol=1e-5, atol=1e-6)


def test_equinox_adapter_trains_only_the_delta_like_the_pure_path():
    model = eqx.nn.MLP(6, 3, 8, depth=1, activation=jnp.tanh, key=jax.random.key(0))
    x, y = _data()
    arrays = eqx.filter(model, eqx.is_array)
    delta = peft.sparse_delta(arrays, 0.25, key=jax.random.key(1))
    tuned = sj.nn.eqx.to_delta(model, delta)
    assert isinstance(tuned.layers[0], sj.nn.eqx.DeltaLinear)
    np.testing.assert_allclose(jax.vmap(tuned)(x), jax.vmap(model)(x), rtol=1e-6)
    tx = peft.train_delta(optax.adam(1e-1))
    state = tx.init(eqx.filter(tuned, eqx.is_array))
    assert sum(a.size for a in jax.tree.leaves(state) if a.ndim) == 2 * peft.delta_size(delta)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y).mean()

    @eqx.filter_jit
    def step(tuned, state):
        grads = eqx.filter_grad(loss)(tuned)
        updates, state = tx.update(grads, state, eqx.filter(tuned, eqx.is_array))
        return eqx.apply_updates(tuned, updates), state, grads.layers[0].weight

    for _ in range(STEPS):
        tuned, state, g_frozen = step(tuned, state)
        assert not np.asarray(g_frozen).any()  # the frozen weight: zero gradient

    def forward(p, x):
        h = jnp.tanh(x @ p.layers[0].weight.T + p.layers[0].bias)
        return h @ p.layers[1].weight.T + p.layers[1].bias

    want = _pure(arrays, delta, forward, x, y)
    for i in range(2):
        layer = tuned.layers[i]
        np.testing.assert_array_equal(layer.weight, model.layers[i].weight)  # frozen
        np.testing.assert_allclose(layer.delta.values, want.layers[i].weight.values, rtol=1e-5,
                                   atol=1e-6)
    merged = sj.nn.eqx.merge_delta(tuned)
    assert isinstance(merged.layers[1], eqx.nn.Linear)
    pure_merged, _ = peft.merge(arrays, want)
    np.testing.assert_allclose(merged.layers[1].weight, pure_merged.layers[1].weight,
                               rtol=1e-5, atol=1e-6)


def test_adapters_reject_misplaced_deltas():
    lin = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    bad = {"kernel": peft.SparseDelta(jnp.zeros(1, jnp.int32), jnp.zeros(1), None, (3, 4))}
    with pytest.raises(ValueError, match="kernel's shape"):
        sj.nn.to_delta(lin, bad)
    with pytest.raises(ValueError, match="only mask the weights"):
        sj.nn.to_delta(lin, {"other": bad["kernel"]})

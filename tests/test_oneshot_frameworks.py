"""The `prune_model` hook on Flax NNX and Equinox models (the docs examples, run)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax.oneshot import LayerStats, prune_model, wanda_prune


def test_nnx_model():
    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1 = nnx.Linear(8, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x, tap=lambda name, x, where=None: x):
            h = nnx.relu(self.l1(tap("l1/kernel", x)))
            return self.l2(tap("l2/kernel", h))

    model = MLP(nnx.Rngs(0))
    batches = [jax.random.normal(jax.random.key(i), (5, 8)) for i in range(2)]
    graphdef, state = nnx.split(model)
    pruned, masks = prune_model(state, lambda s, x, tap: nnx.merge(graphdef, s)(x, tap), batches,
                                "wanda", sparsity=0.5, axis=0)
    nnx.update(model, pruned)
    want, _ = wanda_prune(state["l1"]["kernel"][...], LayerStats.from_inputs(jnp.concatenate(batches)),
                    0.5, axis=0)
    np.testing.assert_array_equal(model.l1.kernel[...], want)
    assert float(jnp.mean(model.l2.kernel[...] == 0)) == 0.5


def test_equinox_model():
    class MLP(eqx.Module):
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.l1 = eqx.nn.Linear(8, 16, key=k1)
            self.l2 = eqx.nn.Linear(16, 4, key=k2)

        def __call__(self, x, tap=lambda name, x, where=None: x):  # x: [batch, 8]
            h = jax.nn.relu(jax.vmap(self.l1)(tap("l1/weight", x)))
            return jax.vmap(self.l2)(tap("l2/weight", h))

    model = MLP(jax.random.key(0))
    batches = [jax.random.normal(jax.random.key(i), (5, 8)) for i in range(2)]
    pruned, masks = prune_model(model, lambda m, x, tap: m(x, tap), batches, "wanda",
                                n=2, m=4, axis=1)  # Equinox weights are [out, in]
    assert isinstance(pruned, MLP) and masks.l1.bias is None
    want, _ = wanda_prune(model.l1.weight, LayerStats.from_inputs(jnp.concatenate(batches)), n=2, m=4,
                    axis=1)
    np.testing.assert_array_equal(pruned.l1.weight, want)
    np.testing.assert_array_equal(masks.l2.weight, pruned.l2.weight != 0)


def _mlp_forward(mlp, x, tap):
    for i, layer in enumerate(mlp.layers):
        x = jax.vmap(layer)(tap(f"layers/{i}/weight", x))
        x = mlp.activation(x) if i < len(mlp.layers) - 1 else x
    return x


def test_stock_equinox_mlp_with_its_activation_field():
    mlp = eqx.nn.MLP(8, 4, 16, depth=2, key=jax.random.key(0))
    batches = [jax.random.normal(jax.random.key(i), (6, 8)) for i in range(2)]
    pruned, masks = prune_model(mlp, _mlp_forward, batches, "wanda", n=2, m=4, axis=1)
    assert isinstance(pruned, eqx.nn.MLP) and pruned.activation is mlp.activation
    x = jnp.concatenate(batches)
    want, want_mask = wanda_prune(mlp.layers[0].weight, LayerStats.from_inputs(x), n=2, m=4,
                                  axis=1)
    np.testing.assert_array_equal(pruned.layers[0].weight, want)
    np.testing.assert_array_equal(masks.layers[0].weight, want_mask)
    for layer in pruned.layers:  # every layer 2:4 along its input axis
        assert float(jnp.mean(layer.weight == 0)) == 0.5
    assert masks.layers[0].bias is None


def test_prune_model_axis_errors_name_axis():
    mlp = eqx.nn.MLP(8, 4, 16, depth=1, key=jax.random.key(0))  # weights [16, 8], [4, 16]
    batches = [jnp.ones((3, 8))]
    with pytest.raises(ValueError, match="`axis` must be given: the input-feature"):
        prune_model(mlp, _mlp_forward, batches, "wanda", sparsity=0.5)
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 1\] for an array of rank 2; got 2"):
        prune_model(mlp, _mlp_forward, batches, "wanda", sparsity=0.5, axis=2)
    with pytest.raises(ValueError, match=r"`axis` must be the input-feature axis of 'layers/0/weight'"
                                         r".*8 features .*\(axis=1 fits\); got 0"):
        prune_model(mlp, _mlp_forward, batches, "wanda", sparsity=0.5, axis=0)
    with pytest.raises(ValueError, match=r"`axis` must be an int or a mapping .*no entry for "
                                         "'layers/1/weight'"):
        prune_model(mlp, _mlp_forward, batches, "wanda", sparsity=0.5,
                    axis={"layers/0/weight": 1})
    with pytest.raises(ValueError, match="`axis` must be given"):
        wanda_prune(jnp.ones((4, 4)), LayerStats.from_inputs(jnp.ones((2, 4))), 0.5)


def test_zero_calibration_tokens_raise():
    w = jax.random.normal(jax.random.key(0), (8, 4))
    empty = LayerStats.from_inputs(jnp.ones((0, 8)))
    padded = LayerStats.from_inputs(jnp.ones((2, 3, 8)), where=jnp.zeros((2, 3), bool))
    for stats in (empty, padded):
        with pytest.raises(ValueError, match="`stats` must be statistics of at least one "
                                             "calibration token; got statistics of 0 tokens"):
            wanda_prune(w, stats, 0.5, axis=0)
    params = {"l1": {"kernel": w}}

    def forward(p, batch, tap):
        x, keep = batch
        return tap("l1/kernel", x, keep) @ p["l1"]["kernel"]

    batches = [(jnp.ones((2, 3, 8)), jnp.zeros((2, 3), bool))]
    with pytest.raises(ValueError, match=r"`calibration_batches` must be batches with at least one "
                                         r"counted token .*got 0 tokens for \['l1/kernel'\]"):
        prune_model(params, forward, batches, "wanda", sparsity=0.5, axis=0)
    from sparsejax import scores

    with pytest.raises(ValueError, match="`inputs` must be at least one calibration token"):
        scores.wanda(w, jnp.ones((0, 8)), axis=0)

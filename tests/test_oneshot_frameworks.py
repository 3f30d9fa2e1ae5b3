"""The `prune_model` hook on Flax NNX and Equinox models (the docs examples, run)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax.oneshot import LayerStats, prune_model, wanda


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
                                "wanda", sparsity=0.5)
    nnx.update(model, pruned)
    want, _ = wanda(state["l1"]["kernel"][...], LayerStats.from_inputs(jnp.concatenate(batches)),
                    0.5)
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
                                n=2, m=4, in_axis=1)  # Equinox weights are [out, in]
    assert isinstance(pruned, MLP) and masks.l1.bias is None
    want, _ = wanda(model.l1.weight, LayerStats.from_inputs(jnp.concatenate(batches)), n=2, m=4,
                    in_axis=1)
    np.testing.assert_array_equal(pruned.l1.weight, want)
    np.testing.assert_array_equal(masks.l2.weight, pruned.l2.weight != 0)

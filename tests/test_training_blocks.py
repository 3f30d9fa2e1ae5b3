"""Block pruning through BlockSparseLinear's kernels, and `compact_blocks`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import training as T


def test_prune_blocks_of_block_sparse_linear_then_compact():
    layer = sj.nn.BlockSparseLinear(32, 16, block_shape=(8, 8), sparsity=0.25, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32))
    tx = T.prune(optax.adam(1e-2), 0.5, pattern="block", block_shape=(8, 8), update_every=100)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state)
    params, state = step(params, state)
    mask = T.masks_of(state)["kernel"][0]
    data = np.asarray(params["kernel"][0][...])
    assert mask.shape == data.shape
    slots = np.asarray(mask).reshape(*mask.shape[:2], -1)
    assert np.all(slots.all(-1) | ~slots.any(-1))  # whole stored blocks kept or dropped
    assert np.all(data[~np.asarray(mask)] == 0)
    trained = nnx.merge(graphdef, params, rest)
    compact = T.compact_blocks(trained.weight, mask)
    np.testing.assert_array_equal(compact.to_dense(), trained.weight.to_dense())
    kept_valid = np.asarray(mask).any((2, 3)) & np.asarray(trained.weight.valid_slots())
    assert int(compact.counts.sum()) == int(kept_valid.sum()) < int(trained.weight.counts.sum())
    smaller = sj.nn.BlockSparseLinear(32, 16, block_shape=(8, 8),
                                      block_mask=compact.block_mask(), kernel=compact.to_dense(),
                                      bias=trained.bias[...])
    np.testing.assert_allclose(smaller(x), trained(x), rtol=1e-5, atol=1e-6)


def test_compact_blocks_errors():
    w = sj.BlockSparse.from_dense(jnp.ones((8, 8)), (4, 4))
    with pytest.raises(ValueError, match="mask"):
        T.compact_blocks(w, np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="mask"):
        T.compact_blocks(w, np.ones((2, 2)))
    with pytest.raises(TypeError, match="weight"):
        T.compact_blocks(jnp.ones((8, 8)), np.ones((2, 2), bool))

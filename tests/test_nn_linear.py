"""Block-sparse and N:M linear layers (Flax NNX, Equinox): forward vs dense, training keeps the
sparsity structure and reduces the loss."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import masks, nn
from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.nn import BlockSparseLinear, NMLinear

IN, OUT, BS = 32, 16, (8, 8)


def structure(w):
    """The integer (structure) leaves of a format pytree, as numpy arrays."""
    return [np.asarray(x) for x in jax.tree.leaves(w) if not jnp.issubdtype(x.dtype, jnp.inexact)]


def assert_same_structure(a, b):
    sa, sb = structure(a), structure(b)
    assert len(sa) == len(sb) > 0
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(x, y)


def data(seed=0):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (64, IN))
    return x, x @ jax.random.normal(kw, (IN, OUT)) / np.sqrt(IN)


def nnx_train(model, steps=30):
    """Adam steps on a least-squares fit; the losses and the last gradient state."""
    x, y = data()
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)
        return loss, grads

    losses = []
    for _ in range(steps):
        loss, grads = step(model, opt)
        losses.append(float(loss))
    return losses, grads


def eqx_train(model, steps=30):
    x, y = data()
    opt = optax.adam(3e-2)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(steps):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    return model, losses


def test_nnx_block_sparse_linear_forward_and_training():
    mask = masks.random_mask(jax.random.PRNGKey(1), (IN // BS[0], OUT // BS[1]), 0.5)
    layer = BlockSparseLinear(IN, OUT, block_shape=BS, block_mask=mask, rngs=nnx.Rngs(0))
    x, _ = data()
    w = np.asarray(layer.weight.to_dense())
    keep = np.kron(np.asarray(mask), np.ones(BS)).astype(bool)
    assert not w[~keep].any() and (w[keep] != 0).all()
    np.testing.assert_allclose(layer(x), np.asarray(x) @ w, rtol=1e-5, atol=1e-5)
    assert isinstance(layer.kernel, BlockSparse) and isinstance(layer.kernel.data, nnx.Param)
    before = layer.weight
    losses, grads = nnx_train(layer)
    assert losses[-1] < 0.5 * losses[0]
    assert_same_structure(layer.weight, before)
    assert not np.asarray(layer.weight.to_dense())[~keep].any()
    # the gradient state holds only the compressed blocks and the bias
    shapes = sorted(v.shape for v in jax.tree.leaves(grads))
    assert shapes == sorted([layer.kernel.data[...].shape, (OUT,)])
    # printing (NNX's repr replaces leaves by placeholders) and split / merge
    assert "BlockSparse(shape=(32, 16)" in repr(layer)
    graph, state = nnx.split(layer)
    np.testing.assert_array_equal(nnx.merge(graph, state)(x), layer(x))


def test_nnx_nm_linear_forward_and_training():
    layer = NMLinear(IN, OUT, n=2, m=4, rngs=nnx.Rngs(0))
    x, _ = data()
    w = np.asarray(layer.weight.to_dense())
    assert (np.count_nonzero(w.reshape(IN // 4, 4, OUT), axis=1) == 2).all()
    np.testing.assert_allclose(layer(x), np.asarray(x) @ w, rtol=1e-5, atol=1e-5)
    assert isinstance(layer.kernel, NMSparse) and isinstance(layer.kernel.values, nnx.Param)
    before = layer.weight
    losses, _ = nnx_train(layer)
    assert losses[-1] < 0.7 * losses[0]
    assert_same_structure(layer.weight, before)
    w2 = np.asarray(layer.weight.to_dense())
    np.testing.assert_array_equal(w2 != 0, w != 0)


def test_eqx_layers_train_and_keep_structure():
    kernel = jax.random.normal(jax.random.PRNGKey(3), (IN, OUT))
    mask = np.zeros((IN // BS[0], OUT // BS[1]), bool)
    mask[0] = mask[2, 1] = True  # block rows 1 and 3 empty
    bsl = nn.eqx.BlockSparseLinear(IN, OUT, block_shape=BS, block_mask=mask, kernel=kernel)
    keep = np.kron(mask, np.ones(BS)).astype(bool)
    np.testing.assert_array_equal(bsl.weight.to_dense(), np.asarray(kernel) * keep)
    trained, losses = eqx_train(bsl)
    assert losses[-1] < losses[0]
    assert isinstance(trained.weight, BlockSparse)
    assert_same_structure(trained.weight, bsl.weight)
    assert not np.asarray(trained.weight.to_dense())[~keep].any()

    nml = nn.eqx.NMLinear(IN, OUT, n=1, m=4, key=jax.random.PRNGKey(4), use_bias=False)
    assert nml.bias is None
    trained, losses = eqx_train(nml)
    assert losses[-1] < losses[0]
    assert isinstance(trained.weight, NMSparse)
    assert_same_structure(trained.weight, nml.weight)
    x, _ = data()
    np.testing.assert_allclose(trained(x), np.asarray(x) @ np.asarray(trained.weight.to_dense()),
                               rtol=1e-5, atol=1e-5)


def test_layer_errors():
    with pytest.raises(ValueError, match=r"must be divisible by `block_shape` \(8, 8\)"):
        BlockSparseLinear(30, 16, block_shape=(8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`sparsity` must be < 1.0; got 1.5"):
        BlockSparseLinear(32, 16, block_shape=(8, 8), sparsity=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`sparsity` must be >= 0.0; got -0.5"):
        nn.eqx.BlockSparseLinear(32, 16, block_shape=(8, 8), sparsity=-0.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        nn.eqx.BlockSparseLinear(32, 16, block_shape=(8, 8))
    with pytest.raises(ValueError, match=r"`kernel` must have shape \[in, out\] = \(32, 16\)"):
        NMLinear(32, 16, kernel=jnp.ones((16, 32)))
    with pytest.raises(ValueError, match="in_features.* 0"):
        nn.eqx.NMLinear(0, 16, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="divisible by m=4"):
        NMLinear(30, 16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`bias` must have shape \[out\]"):
        NMLinear(32, 16, bias=jnp.ones(32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`mask` must have the kernel's shape"):
        nn.eqx.NMLinear(32, 16, kernel=jnp.ones((32, 16)), mask=jnp.ones((16, 32), bool))


@pytest.mark.parametrize("layer_cls", [NMLinear, nn.eqx.NMLinear])
def test_nm_linear_explicit_mask(layer_cls):
    """A given mask (here 1 kept of 4, the smallest |w| of each group) decides the kept entries."""
    kernel = jax.random.normal(jax.random.PRNGKey(5), (IN, OUT))
    mask = masks.nm(-jnp.abs(kernel), 1, 4, axis=0)
    kw = {"rngs": nnx.Rngs(0)} if layer_cls is NMLinear else {}
    layer = layer_cls(IN, OUT, n=2, m=4, kernel=kernel, mask=mask, use_bias=False, **kw)
    np.testing.assert_array_equal(layer.weight.to_dense(), np.where(mask, kernel, 0))
    with pytest.raises(ValueError, match="at most n=2"):
        layer_cls(IN, OUT, n=2, m=4, kernel=kernel, mask=jnp.ones((IN, OUT), bool), **kw)

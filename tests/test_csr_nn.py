"""CSR layers (NNX and Equinox SparseLinear / SparseConv1x1) and to_sparse(format="csr"): a pruned
model deploys on them with the masked dense model's predictions, trains only its stored values,
and converts back."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import nn


class Block(nnx.Module):
    """A MobileNet-style tail: pointwise conv, depthwise 3x3, pointwise conv, pooled linear."""

    def __init__(self, rngs):
        self.expand = nnx.Conv(4, 8, (1, 1), rngs=rngs)
        self.depthwise = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
        self.project = nnx.Conv(8, 6, (1, 1), use_bias=False, rngs=rngs)
        self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.expand(x))
        x = jax.nn.relu(self.depthwise(x))
        return self.head(jnp.mean(self.project(x), axis=(1, 2)))


X = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 4))


@pytest.fixture(scope="module")
def block():
    return Block(nnx.Rngs(0))


def test_nnx_to_sparse_matches_the_masked_dense_model(block):
    model = block
    params = nnx.state(model, nnx.Param)
    masks = sj.compute_masks(params, "unstructured", 0.7, exclude="depthwise/*")
    dense = nnx.clone(model)
    nnx.update(dense, sj.apply_masks(params, masks))
    sparse = nn.to_sparse(model, masks, "csr")
    assert isinstance(sparse.expand, nn.SparseConv1x1) and isinstance(sparse.head,
                                                                      nn.SparseLinear)
    assert isinstance(sparse.depthwise, nnx.Conv)  # no mask: stays dense
    assert int(sparse.head.weight.nnz) == int(np.sum(masks["head"]["kernel"][...]))
    np.testing.assert_allclose(sparse(X), dense(X), atol=1e-5, rtol=1e-5)
    back = nn.to_dense(sparse)
    assert type(back.expand) is nnx.Conv and type(back.head) is nnx.Linear
    np.testing.assert_allclose(back(X), dense(X), atol=1e-5, rtol=1e-5)


def test_nnx_layers_train_only_the_stored_values_and_errors(block):
    lin = nn.SparseLinear(8, 5, density=0.3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 8))
    np.testing.assert_allclose(lin(x), x @ lin.dense_kernel() + lin.bias[...], atol=1e-5)
    assert lin.weight.shape == (5, 8) and (lin.in_features, lin.out_features) == (8, 5)
    # only the stored values and the bias train; an optimizer step keeps the pattern
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(lin)
    assert grads["kernel"][0][...].shape == (lin.weight.nse,)
    before = lin.weight
    nnx.Optimizer(lin, optax.sgd(0.1), wrt=nnx.Param).update(lin, grads)
    np.testing.assert_array_equal(lin.weight.indices, before.indices)
    np.testing.assert_array_equal(lin.weight.indptr, before.indptr)
    assert not np.array_equal(lin.weight.data, before.data)
    conv = nn.SparseConv1x1(8, 5, data_format="NCHW", kernel=lin.dense_kernel(),
                            bias=jnp.arange(5.0))
    xc = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 3, 3))
    ref = jnp.einsum("bchw,co->bohw", xc, lin.dense_kernel()) + jnp.arange(5.0)[:, None, None]
    np.testing.assert_allclose(conv(xc), ref, atol=1e-5)
    with pytest.raises(ValueError, match="`data_format` must be one of"):
        nn.SparseConv1x1(8, 5, data_format="HWC", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`mask` must be of the kernel's shape"):
        nn.SparseLinear(8, 5, mask=jnp.ones((5, 8), bool))
    bad = {"depthwise/kernel": jnp.ones((3, 3, 1, 8), bool)}
    with pytest.raises(ValueError, match="pointwise nnx.Conv"):
        nn.to_sparse(block, bad, "csr")


def test_eqx_to_sparse_matches_the_masked_dense_model():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    model = [eqx.nn.Conv2d(4, 6, 1, key=k1), eqx.nn.Conv2d(6, 6, 3, padding=1, key=k2),
             eqx.nn.Linear(6, 3, key=k3)]

    def run(m, x):  # x: [C, H, W] (Equinox layers are unbatched)
        h = m[1](jax.nn.relu(m[0](x)))
        return m[2](jnp.mean(h, axis=(1, 2)))

    masks = sj.compute_masks(model, "unstructured", 0.6,
                             where=lambda _, x: (x.ndim == 4 and x.shape[-1] == 1) or x.ndim == 2)
    assert masks[1].weight is None and masks[0].weight is not None
    dense = sj.apply_masks(model, masks)
    sparse = nn.eqx.to_sparse(model, masks, "csr")
    assert isinstance(sparse[0], nn.eqx.SparseConv1x1) and isinstance(sparse[2],
                                                                      nn.eqx.SparseLinear)
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 5, 5))
    np.testing.assert_allclose(run(sparse, x), run(dense, x), atol=1e-5, rtol=1e-5)
    xb = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(sparse[0](xb)[1], dense[0](2 * x), atol=1e-5, rtol=1e-5)
    back = nn.eqx.to_dense(sparse)
    assert type(back[0]) is eqx.nn.Conv2d and type(back[2]) is eqx.nn.Linear
    np.testing.assert_allclose(run(back, x), run(dense, x), atol=1e-5, rtol=1e-5)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.ones(6)) ** 2))(sparse[2])
    assert grads.weight.data.shape == (sparse[2].weight.nse,)

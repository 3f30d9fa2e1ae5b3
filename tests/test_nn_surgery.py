"""Model surgery: a masked Flax NNX / Equinox model's Linear layers to N:M / block-sparse layers and
back. The converted model computes what the masked dense model computes; the round trip recovers
the masked weights; masks that do not fit the format are rejected."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsejax as sj
from sparsejax import nn

BLOCK = (8, 8)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(16, 32, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(32, 32, rngs=rngs),
                                nnx.Linear(32, 8, use_bias=False, rngs=rngs)])

    def __call__(self, x):
        x = jax.nn.relu(self.l1(x))
        x = jax.nn.relu(self.layers[0](x))
        return self.layers[1](x)


X = jax.random.normal(jax.random.PRNGKey(1), (5, 16))
RNG = np.random.default_rng(0)


def block_mask(shape):
    """A random mask keeping whole BLOCK tiles (as sparsejax.masks.block would)."""
    tiles = RNG.random((shape[0] // BLOCK[0], shape[1] // BLOCK[1])) < 0.5
    return jnp.asarray(np.kron(tiles, np.ones(BLOCK, bool)))


def random_mask(shape):
    return jnp.asarray(RNG.random(shape) < 0.5)


def masks_like(tree, fn):
    """A mask tree with ``fn(shape)`` on the 2-D float leaves (kernels / weights), None elsewhere."""
    return jax.tree.map(lambda x: fn(x.shape) if eqx.is_inexact_array(x) and x.ndim == 2 else None,
                        tree)


@pytest.fixture(scope="module")
def nnx_model():
    return MLP(nnx.Rngs(0))


@pytest.fixture(scope="module")
def eqx_model():
    return eqx.nn.MLP(16, 8, width_size=32, depth=2, key=jax.random.PRNGKey(0))


def nnx_masks(model, fmt):
    params = nnx.state(model, nnx.Param)
    if fmt == "nm":
        return sj.compute_masks(params, "nm", n=2, m=4, axis=0)
    return masks_like(params, block_mask)


def kwargs(fmt):
    return {"n": 2, "m": 4} if fmt == "nm" else {"block_shape": BLOCK}


@pytest.mark.parametrize("fmt", ["nm", "block"])
def test_nnx_to_sparse_matches_masked_and_round_trips(fmt, nnx_model):
    model = nnx_model
    masks = nnx_masks(model, fmt)
    masked = nnx.clone(model)
    nnx.update(masked, sj.apply_masks(nnx.state(masked, nnx.Param), masks))

    sparse = nn.to_sparse(model, masks, fmt, **kwargs(fmt))
    cls = nn.NMLinear if fmt == "nm" else nn.BlockSparseLinear
    assert all(isinstance(lay, cls) for lay in (sparse.l1, *sparse.layers))
    assert sparse.layers[1].bias is None and isinstance(model.l1, nnx.Linear)  # input untouched
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sparse, X), masked(X), atol=1e-5)

    dense = nn.to_dense(sparse)
    assert all(type(lay) is nnx.Linear for lay in (dense.l1, *dense.layers))
    got, want = nnx.state(dense, nnx.Param), nnx.state(masked, nnx.Param)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(dense(X), masked(X), atol=1e-5)


def test_nnx_unmasked_layers_stay_dense_and_root_linear(nnx_model):
    model = nnx_model
    masks = sj.compute_masks(nnx.state(model, nnx.Param), "nm", n=2, m=4, axis=0,
                             where="l1/kernel")
    sparse = nn.to_sparse(model, masks, "nm")
    assert isinstance(sparse.l1, nn.NMLinear)
    assert all(type(lay) is nnx.Linear for lay in sparse.layers)
    # a bare nnx.Linear and a flat {path: mask} dict
    lin = nnx.Linear(16, 8, rngs=nnx.Rngs(2))
    mask = sj.masks.nm(jnp.abs(lin.kernel[...]), 2, 4, axis=0)
    out = nn.to_sparse(lin, {"kernel": mask}, "nm")
    assert isinstance(out, nn.NMLinear)
    np.testing.assert_allclose(out(X), X @ jnp.where(mask, lin.kernel[...], 0) + lin.bias[...],
                               atol=1e-5)
    assert type(nn.to_dense(out)) is nnx.Linear


@pytest.mark.parametrize("fmt", ["nm", "block"])
def test_eqx_to_sparse_matches_masked_and_round_trips(fmt, eqx_model):
    model = eqx_model
    if fmt == "nm":  # eqx.nn.Linear weight is [out, in]: N:M groups along in = axis -1
        masks = sj.compute_masks(model, "nm", n=2, m=4, axis=-1)
    else:
        masks = masks_like(model, block_mask)
    masked = sj.apply_masks(model, masks)

    sparse = nn.eqx.to_sparse(model, masks, fmt, **kwargs(fmt))
    cls = nn.eqx.NMLinear if fmt == "nm" else nn.eqx.BlockSparseLinear
    assert all(isinstance(lay, cls) for lay in sparse.layers)
    np.testing.assert_allclose(eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(sparse, X), jax.vmap(masked)(X),
                               atol=1e-5)

    dense = nn.eqx.to_dense(sparse)
    assert all(type(lay) is eqx.nn.Linear for lay in dense.layers)
    for a, b in zip(dense.layers, masked.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_allclose(jax.vmap(dense)(X), jax.vmap(masked)(X), atol=1e-5)


def test_masks_that_do_not_fit_the_format_raise(nnx_model, eqx_model):
    model = nnx_model
    params = nnx.state(model, nnx.Param)
    unstructured = masks_like(params, random_mask)
    with pytest.raises(ValueError, match=r"`masks\['l1/kernel'\]` must keep at most n=2 of every "
                                         r"m=4 entries along the input axis"):
        nn.to_sparse(model, unstructured, "nm", n=2, m=4)
    with pytest.raises(ValueError, match=r"must keep whole 8x8 blocks for format='block'"):
        nn.to_sparse(model, unstructured, "block", block_shape=BLOCK)
    nm = nnx_masks(model, "nm")
    with pytest.raises(ValueError, match=r"must keep whole 8x8 blocks"):
        nn.to_sparse(model, nm, "block", block_shape=BLOCK)
    with pytest.raises(ValueError, match=r"divisible by m=3"):
        nn.to_sparse(model, sj.compute_masks(params, "nm", n=1, m=2, axis=0), "nm", n=1, m=3)
    with pytest.raises(ValueError,
                       match=r"`format` must be one of \('nm', 'block', 'csr'\); got 'coo'"):
        nn.to_sparse(model, nm, "coo")
    with pytest.raises(ValueError, match="`block_shape` must be given"):
        nn.to_sparse(model, nm, "block")
    with pytest.raises(TypeError, match=r"must be a bool array; got dtype float32"):
        nn.to_sparse(model, {"l1/kernel": jnp.ones((16, 32))}, "nm")
    with pytest.raises(ValueError, match=r"must have the weight's shape \(16, 32\)"):
        nn.to_sparse(model, {"l1/kernel": jnp.ones((32, 16), bool)}, "nm", n=4, m=4)
    with pytest.raises(ValueError, match=r"must only mask the weights of nnx.Linear layers.*"
                                         r"'l1/bias'"):
        nn.to_sparse(model, {"l1/bias": jnp.ones(32, bool)}, "nm")

    with pytest.raises(ValueError, match=r"`masks\['layers/0/weight'\]` must keep at most n=2 .*"
                                         r"axis=-1"):
        nn.eqx.to_sparse(eqx_model, masks_like(eqx_model, random_mask), "nm")
    conv = [eqx.nn.Conv1d(2, 4, 3, key=jax.random.PRNGKey(0))]
    with pytest.raises(ValueError, match=r"eqx.nn.Linear layers.*'0/weight'"):
        nn.eqx.to_sparse(conv, {"0/weight": jnp.ones((4, 2, 3), bool)}, "nm")


LIN = nnx.Linear(8, 8, rngs=nnx.Rngs(3))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fit=st.booleans(), fmt=st.sampled_from(["nm", "block"]))
def test_to_sparse_stores_kernel_times_mask_or_rejects(seed, fit, fmt):
    """Property: a fitting mask gives a layer whose dense kernel is kernel * mask exactly; a mask
    that does not fit (checked here by a per-group / per-tile count) raises."""
    rng = np.random.default_rng(seed)
    if fmt == "nm":  # groups of 4 along in (axis 0 of [in, out]), at most 2 kept
        if fit:
            mask = np.zeros((2, 4, 8), bool)
            for g in range(2):
                for j in range(8):
                    mask[g, rng.choice(4, rng.integers(0, 3), replace=False), j] = True
            mask = mask.reshape(8, 8)
        else:
            mask = rng.random((8, 8)) < 0.6
        counts = mask.reshape(2, 4, 8).sum(1)
        fits, kw = counts.max() <= 2, {"n": 2, "m": 4}
    else:  # 4x4 tiles
        tiles = rng.random((2, 2)) < 0.5
        mask = np.kron(tiles, np.ones((4, 4), bool)) if fit else rng.random((8, 8)) < 0.5
        counts = mask.reshape(2, 4, 2, 4).sum((1, 3))
        fits, kw = ((counts == 0) | (counts == 16)).all(), {"block_shape": (4, 4)}
    if not fits:
        with pytest.raises(ValueError, match=r"masks\['kernel'\]"):
            nn.to_sparse(LIN, {"kernel": jnp.asarray(mask)}, fmt, **kw)
        return
    out = nn.to_sparse(LIN, {"kernel": jnp.asarray(mask)}, fmt, **kw)
    np.testing.assert_array_equal(out.weight.to_dense(), np.where(mask, LIN.kernel[...], 0))
    np.testing.assert_array_equal(out.bias[...], LIN.bias[...])

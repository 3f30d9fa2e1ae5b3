"""The BDWP layers (NNX and Equinox) against BDWP's definition, in float64 NumPy: forward through
the N:M-along-``in`` mask, input gradient through the N:M-along-``out`` mask, dense weight
gradient, masks re-selected from the current ``|W|``."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import nn as snn
from sparsejax.nn import eqx as seqx


def nm_mask_np(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """The ``n`` largest ``|w|`` of each group of ``m`` along ``axis`` (ties: lower index)."""
    moved = np.moveaxis(np.abs(w), axis, -1)
    g = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def definition(w, b, x, g, n, m):
    """``(y, dx, dw, db)`` of ``sum(g * layer(x))`` by BDWP's definition, float64."""
    w, b, x, g = (np.asarray(a, np.float64) for a in (w, b, x, g))
    fwd, bwd = nm_mask_np(w, n, m, 0), nm_mask_np(w, n, m, 1)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    y = x @ (w * fwd) + b
    return y, g @ (w * bwd).T, x2.T @ g2, g2.sum(0)


@pytest.mark.parametrize("framework", ["nnx", "eqx"])
def test_bdwp_layer_matches_definition(framework):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    w = jax.random.normal(k1, (8, 12))
    b = jax.random.normal(k2, (12,))
    x = jax.random.normal(k3, (2, 3, 8))  # leading axes
    g = jax.random.normal(k4, (2, 3, 12))
    if framework == "nnx":
        layer = snn.BDWPLinear(8, 12, kernel=w, bias=b)
        graphdef, params = nnx.split(layer)

        def loss(p, x):
            return jnp.sum(g * nnx.merge(graphdef, p)(x))

        y = layer(x)
        dp, dx = jax.grad(loss, argnums=(0, 1))(params, x)
        dw, db = dp["kernel"][...], dp["bias"][...]
        fwd, bwd = layer.masks()
    else:
        layer = seqx.BDWPLinear(8, 12, kernel=w, bias=b)
        y = layer(x)
        dl, dx = jax.grad(lambda lay, x: jnp.sum(g * lay(x)), argnums=(0, 1))(layer, x)
        dw, db = dl.weight, dl.bias
        fwd, bwd = layer.masks()
        assert (layer.in_features, layer.out_features) == (8, 12)
    want = definition(w, b, x, g, 2, 4)
    for got, ref in zip((y, dx, dw, db), want):
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fwd, nm_mask_np(np.asarray(w), 2, 4, 0))
    np.testing.assert_array_equal(bwd, nm_mask_np(np.asarray(w), 2, 4, 1))


def test_bdwp_layer_masks_follow_the_kernel_and_errors():
    layer = seqx.BDWPLinear(4, 4, key=jax.random.PRNGKey(1), use_bias=False)
    assert layer.bias is None
    w = layer.weight
    moved = eqx.tree_at(lambda lay: lay.weight, layer, w[::-1])  # new |W|: new masks
    np.testing.assert_array_equal(moved.masks()[0], nm_mask_np(np.asarray(w[::-1]), 2, 4, 0))
    with pytest.raises(ValueError, match="`out_features` must be divisible by `m`=4"):
        snn.BDWPLinear(8, 6, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`in_features` must be divisible by `m`=4"):
        seqx.BDWPLinear(6, 8, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`n` must be"):
        seqx.BDWPLinear(8, 8, n=5, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        snn.BDWPLinear(8, 8)

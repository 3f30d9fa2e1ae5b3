"""Every public entry point that takes a params tree, given an Equinox model (issue 18).

An Equinox module is callable *and* a pytree: a score, sparsity or mask tree mirroring it must be
taken for a tree, never for a function (trees and functions are told apart by structure).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import allocation, training


@pytest.fixture(scope="module")
def params():
    mlp = eqx.nn.MLP(8, 4, 16, 2, key=jax.random.key(0))
    return eqx.filter(mlp, eqx.is_inexact_array)


def _kernels(tree):
    return [x for x in jax.tree.leaves(tree) if getattr(x, "ndim", 0) == 2]


def test_compute_masks_takes_equinox_score_and_sparsity_trees(params):
    scores = jax.tree.map(lambda x: -jnp.abs(x), params)  # keep the smallest: not magnitude's mask
    m = sj.compute_masks(params, sparsity=0.5, scores=scores)
    for w, k in zip(_kernels(params), _kernels(m)):
        want = sj.masks.unstructured(-jnp.abs(w), 0.5)
        np.testing.assert_array_equal(k, want)
    per_leaf = jax.tree.map(lambda x: 0.25 if x.ndim == 2 else None, params)
    m2 = sj.compute_masks(params, sparsity=per_leaf)
    assert [float(jnp.mean(k)) for k in _kernels(m2)] == [0.75] * 3
    glob = sj.compute_masks(params, sparsity=0.5, scores=scores, allocation="global")
    assert sum(int(k.sum()) for k in _kernels(glob)) == sum(w.size for w in _kernels(params)) // 2
    assert isinstance(m, eqx.nn.MLP)
    # a tree of another structure is reported as a tree, never called
    other = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="`scores` must be a tree mirroring params"):
        sj.compute_masks(params, sparsity=0.5, scores=other)


def test_tree_statistics_apply_and_allocations_take_equinox_modules(params):
    m = sj.compute_masks(params, sparsity=0.5)
    pruned = sj.apply_masks(params, m)
    assert float(sj.sparsity(pruned).overall) == pytest.approx(0.5)
    assert float(sj.sparsity(params, m).overall) == pytest.approx(0.5)
    assert "layers/0/weight" in sj.summary(params, m, print_fn=None)
    dense, sparse = sj.nbytes(params, m)
    assert sparse < dense
    per_leaf = allocation.erk(params, 0.5)
    assert isinstance(per_leaf, eqx.nn.MLP)
    glob = allocation.global_topk(params, 0.5, scores=jax.tree.map(jnp.abs, params))
    assert isinstance(glob, eqx.nn.MLP)


@pytest.mark.parametrize("make", [
    lambda: training.prune(optax.sgd(0.1), 0.5, update_every=1),
    lambda: training.prune(optax.sgd(0.1), 0.5, scores="saliency", allocation="erk",
                           update_every=1),
    lambda: training.rigl(optax.sgd(0.1), 0.5, allocation="uniform", update_every=1,
                          end_step=4, key=jax.random.key(1)),
    lambda: training.static_sparse(optax.sgd(0.1), 0.5, key=jax.random.key(1)),
])
def test_sparse_training_transforms_on_equinox_params(params, make):
    tx = make()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    masks = training.masks_of(state)
    assert isinstance(masks, eqx.nn.MLP)
    for w, k in zip(_kernels(new), _kernels(masks)):
        assert np.all(np.asarray(w)[~np.asarray(k)] == 0)


def test_ste_takes_an_equinox_mask_tree(params):
    masks = sj.compute_masks(params, "nm", n=2, m=4, axis=1)
    out = training.ste(params, masks)
    for w, k in zip(_kernels(out), _kernels(masks)):
        np.testing.assert_array_equal(np.asarray(w) != 0, np.asarray(k))
    out_fn = training.ste(params, lambda p: sj.compute_masks(p, "nm", n=2, m=4, axis=1))
    jax.tree.map(np.testing.assert_array_equal, out, out_fn)

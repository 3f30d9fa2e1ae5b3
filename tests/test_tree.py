"""Mask trees: compute/apply/sparsity/summary over pytrees, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import masks


def params(key=0):
    k = jax.random.split(jax.random.PRNGKey(key), 2)
    return {"dense_0": {"kernel": jax.random.normal(k[0], (16, 32)), "bias": jnp.zeros(32)},
            "dense_1": {"kernel": jax.random.normal(k[1], (32, 8)), "bias": jnp.zeros(8)}}


def test_compute_masks_mirrors_params_and_matches_patterns():
    p = params()
    m = sj.compute_masks(p, sparsity=0.75)
    assert m["dense_0"]["bias"] is None and m["dense_1"]["bias"] is None
    np.testing.assert_array_equal(m["dense_0"]["kernel"], masks.magnitude(p["dense_0"]["kernel"], 0.75))
    nm = sj.compute_masks(p, "nm", n=2, m=4, axis=0)
    np.testing.assert_array_equal(nm["dense_1"]["kernel"], masks.nm(jnp.abs(p["dense_1"]["kernel"]), 2, 4, 0))
    blk = sj.compute_masks(p, "block", sparsity=0.5, block_shape=(8, 8))
    np.testing.assert_array_equal(blk["dense_0"]["kernel"],
                                  masks.block(jnp.abs(p["dense_0"]["kernel"]), (8, 8), 0.5))
    ch = sj.compute_masks(p, "channel", sparsity=0.5, axis=-1)
    assert int(ch["dense_1"]["kernel"].any(0).sum()) == 4


def test_scores_tree_callable_random_and_sparsity_tree():
    p = params()
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 2.0, p)
    sal = jax.tree.map(lambda w, g: sj.scores.saliency(w, g), p, grads)
    m1 = sj.compute_masks(p, sparsity=0.5, scores=sal)
    m2 = sj.compute_masks(p, sparsity=0.5)  # same order as magnitude since grads are constant
    jax.tree.map(np.testing.assert_array_equal, m1, m2)
    m3 = sj.compute_masks(p, sparsity=0.5, scores=lambda path, w: -jnp.abs(w))
    assert not bool(jnp.any(m3["dense_0"]["kernel"] & m2["dense_0"]["kernel"]))
    r = sj.compute_masks(p, sparsity=0.5, scores="random", key=jax.random.PRNGKey(0))
    assert int(r["dense_0"]["kernel"].sum()) == 256
    tree = sj.allocation.erk(p, 0.8)
    m4 = sj.compute_masks(p, sparsity=tree)
    assert int(m4["dense_1"]["kernel"].sum()) == round(256 * (1 - tree["dense_1"]["kernel"]))


def test_jit_with_traced_sparsity_equals_eager():
    p = params()
    f = jax.jit(lambda p, s: sj.compute_masks(p, sparsity=s))
    for s in [0.1, 0.5, 0.93]:
        jax.tree.map(np.testing.assert_array_equal, f(p, s), sj.compute_masks(p, sparsity=s))


def test_apply_masks_and_sparsity():
    p = params()
    m = sj.compute_masks(p, sparsity=0.5)
    q = sj.apply_masks(p, m)
    assert q["dense_0"]["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(q["dense_0"]["kernel"] != 0, m["dense_0"]["kernel"])
    np.testing.assert_array_equal(q["dense_0"]["bias"], p["dense_0"]["bias"])
    stats = sj.sparsity(m)
    assert float(stats.overall) == pytest.approx(0.5)
    assert stats.per_leaf["dense_0"]["bias"] is None
    stats_p = sj.sparsity(q)  # counts exact zeros, biases (all zero) included
    expected = (256 + 128 + 40) / (512 + 256 + 40)
    assert float(stats_p.overall) == pytest.approx(expected)
    assert float(stats_p.per_leaf["dense_1"]["kernel"]) == pytest.approx(0.5)
    bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
    assert sj.apply_masks(bf, m)["dense_0"]["kernel"].dtype == jnp.bfloat16


def test_masked_training_loop_keeps_mask():
    p = params()
    m = sj.compute_masks(p, "nm", n=2, m=4, axis=0)
    p = sj.apply_masks(p, m)
    opt = optax.adam(1e-2)
    state = opt.init(p)
    x = jax.random.normal(jax.random.PRNGKey(9), (64, 16))

    @jax.jit
    def step(p, state):
        loss = lambda p: jnp.mean((jax.nn.relu(x @ p["dense_0"]["kernel"]) @ p["dense_1"]["kernel"]) ** 2)
        g = sj.apply_masks(jax.grad(loss)(p), m)
        u, state = opt.update(g, state, p)
        return sj.apply_masks(optax.apply_updates(p, u), m), state

    for _ in range(5):
        p, state = step(p, state)
    assert bool(masks.satisfies_nm(p["dense_0"]["kernel"], 2, 4, axis=0))
    assert not bool(masks.satisfies_nm(p["dense_0"]["kernel"], 1, 4, axis=0))


def test_summary_and_nbytes():
    p = params()
    m = sj.compute_masks(p, "nm", n=2, m=4, axis=0)
    text = sj.summary(p, m, print_fn=None)
    assert "dense_0/kernel" in text and "2:4 (axis 0)" in text and "total" in text
    dense, sparse = sj.nbytes(p, m)
    assert dense == 4 * (512 + 32 + 256 + 8)
    assert sparse == 256 * 5 + 128 * 5 + 4 * 40  # N:M leaves: kept values + one uint8 index each
    mu = sj.compute_masks(p, sparsity=0.9)
    _, sparse_u = sj.nbytes(p, mu)
    assert sparse_u == 51 * 4 + 64 + 26 * 4 + 32 + 4 * 40  # kept values + bitmap, dense biases
    assert "unstructured" in sj.summary(p, mu, print_fn=None)


@pytest.mark.parametrize("call, err, match", [
    (lambda p: sj.apply_masks(p, {"dense_0": None}), ValueError,
     "`masks` must be a tree mirroring params .*; got params has 'dense_0/bias' where masks has nothing"),
    (lambda p: sj.apply_masks(p, {**p, "extra": None}), ValueError, "masks has 'extra' where params has nothing"),
    (lambda p: sj.apply_masks(p, jax.tree.map(lambda x: None if x.ndim == 1 else jnp.ones((2, 2), bool), p)),
     ValueError, r"`masks\['dense_0/kernel'\]` must be of the leaf's shape \(16, 32\); got shape \(2, 2\)"),
    # a float mask would leave the weight unchanged: rejected, naming the leaf
    (lambda p: sj.apply_masks(p, jax.tree.map(lambda x: None if x.ndim == 1 else jnp.full(x.shape, 0.3), p)),
     TypeError, r"`masks\['dense_0/kernel'\]` must be a bool array .*; got dtype float32"),
    (lambda p: sj.compute_masks(p, "diagonal", sparsity=0.5), ValueError, "`pattern` must be one of"),
    (lambda p: sj.compute_masks(p, 3, sparsity=0.5), TypeError, "`pattern` must be one of"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, allocation="magic"), ValueError, "`allocation` must be one of"),
    (lambda p: sj.compute_masks(p, "nm", n=2, axis=0), TypeError, "n= and m= for pattern 'nm'.*; got no m"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, scores="random"), ValueError, "`key` must be a jax.random key"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, key=jax.random.PRNGKey(0)), ValueError, "`key` must be None unless"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, allocation="global", axis=0), ValueError,
     "`allocation` must be 'global' only with pattern='unstructured'"),
    (lambda p: sj.compute_masks(p, "block", sparsity=0.5, block_shape=(0, 5)), ValueError,
     r"leaf dense_0/kernel \(shape \(16, 32\)\)"),
    (lambda p: sj.compute_masks(p, sparsity=1.5), ValueError, r"`sparsity` must be in \[0, 1\]; got 1.5"),
    (lambda p: sj.compute_masks(p), ValueError, "`sparsity` must be given for pattern 'unstructured'"),
    (lambda p: sj.compute_masks(p, sparsity={"dense_0": 0.5}), ValueError,
     "no glob of \\['dense_0'\\] matching 'dense_0/kernel'"),
    (lambda p: sj.compute_masks(p, sparsity={"dense_0": {"kernel": 0.5}}), ValueError,
     "params has 'dense_0/bias' where sparsity has nothing"),
    (lambda p: sj.compute_masks(p, sparsity={"*/kernel": 1.2}), ValueError, "`sparsity for 'dense_0/kernel'` must be in"),
    # N:M: axis required, sparsity / allocation would be ignored
    (lambda p: sj.compute_masks(p, "nm", n=2, m=4), ValueError, "`axis` must be given for pattern 'nm'"),
    (lambda p: sj.compute_masks(p, sj.masks.nm, n=2, m=4), ValueError, "`axis` must be given for pattern 'nm'"),
    (lambda p: sj.compute_masks(p, "nm", 0.5, n=2, m=4, axis=0), ValueError, "`sparsity` must be None for pattern 'nm'"),
    (lambda p: sj.compute_masks(p, "nm", allocation="erk", n=2, m=4, axis=0), ValueError,
     "`allocation` must be None for pattern 'nm'"),
    (lambda p: sj.compute_masks(p, "nm", n=2, m=4, axis={"dense_0/*": 0}), ValueError,
     "no glob of \\['dense_0/\\*'\\] matching 'dense_1/kernel'"),
    # where selecting nothing (a typo), exclude matching nothing, allocation with per-leaf sparsity
    (lambda p: sj.compute_masks(p, sparsity=0.5, where="*/kernal"), ValueError,
     "`where` must be a selector matching at least one float leaf.*; got '\\*/kernal'"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, exclude="dense_2/*"), ValueError,
     "`exclude` must be globs each matching at least one leaf; got 'dense_2/\\*'"),
    (lambda p: sj.compute_masks(p, sparsity={"*": 0.5}, allocation="erk"), ValueError,
     "`allocation` must be None when sparsity is per-leaf"),
    (lambda p: sj.compute_masks(p, sparsity=0.5, score_kwargs={"in_axis": 0}), ValueError,
     "`score_kwargs` must be None unless"),
    (lambda p: sj.compute_masks(p, lambda s, sp: s * sp, 0.5), TypeError,
     "`pattern` must be a callable returning a bool mask"),
])
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call(params())


def test_nnx_paths_and_topk_k_type():
    from flax import nnx

    model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    m = sj.compute_masks(state, sparsity=0.5, where="kernel")  # not "kernel/value"
    text = sj.summary(state, m, print_fn=None)
    assert "kernel " in text and "value" not in text
    assert sum(int(x.sum()) for x in jax.tree.leaves(m)) == 16
    with pytest.raises(TypeError, match="`k` must be a Python int"):
        masks.topk(jnp.ones(4), jnp.float32(2.7))

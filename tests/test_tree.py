"""Mask trees: compute/apply/sparsity/summary over pytrees, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import masks
from sparsejax.tree import pattern_mask


def params(key=0):
    k = jax.random.split(jax.random.PRNGKey(key), 2)
    return {"dense_0": {"kernel": jax.random.normal(k[0], (16, 32)), "bias": jnp.zeros(32)},
            "dense_1": {"kernel": jax.random.normal(k[1], (32, 8)), "bias": jnp.zeros(8)}}


def test_compute_masks_mirrors_params_and_matches_patterns():
    p = params()
    m = sj.compute_masks(p, sparsity=0.75)
    assert m["dense_0"]["bias"] is None and m["dense_1"]["bias"] is None
    np.testing.assert_array_equal(m["dense_0"]["kernel"], masks.magnitude_mask(p["dense_0"]["kernel"], 0.75))
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
    assert set(stats.per_leaf) == {"dense_0/kernel", "dense_1/kernel"} and stats.whole_model is None
    # one meaning of overall: the selected (kernel) leaves, whether from masks or params
    stats_p = sj.sparsity(q)  # counts exact zeros of the kernels
    assert float(stats_p.overall) == pytest.approx(0.5)
    assert float(stats_p.per_leaf["dense_1/kernel"]) == pytest.approx(0.5)
    # the whole-model figure, labelled separately: biases (all zero here) included
    assert float(stats_p.whole_model) == pytest.approx((256 + 128 + 40) / (512 + 256 + 40))
    stats_pm = sj.sparsity(p, m)  # params + masks: dropped entries; biases kept
    assert float(stats_pm.overall) == pytest.approx(0.5)
    assert float(stats_pm.whole_model) == pytest.approx((256 + 128) / (512 + 256 + 40))
    assert float(sj.sparsity(q, where="dense_0/*").overall) == pytest.approx((256 + 32) / (512 + 32))
    assert float(jax.jit(lambda m: sj.sparsity(m).overall)(m)) == pytest.approx(0.5)
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
    assert "dense_0/kernel" in text and "2:4 (axis 0)" in text and "all float leaves" in text
    dense, sparse = sj.nbytes(p, m)
    assert dense == 4 * (512 + 32 + 256 + 8)
    assert sparse == 256 * 5 + 128 * 5 + 4 * 40  # N:M leaves: kept values + one uint8 index each
    mu = sj.compute_masks(p, sparsity=0.9)
    _, sparse_u = sj.nbytes(p, mu)
    assert sparse_u == 51 * 4 + 64 + 26 * 4 + 32 + 4 * 40  # kept values + bitmap, dense biases
    assert "unstructured" in sj.summary(p, mu, print_fn=None)


def test_summary_labels_block_and_channel_masks_and_sizes_their_compressed_form():
    p = params()
    blk = sj.compute_masks(p, "block", 0.5, block_shape=(8, 8))
    text = sj.summary(p, blk, print_fn=None)
    assert "block (8, 8)" in text and "unstructured" not in text
    # dense_0 [16, 32]: 4 of 8 tiles of 64 kept, one int32 index per kept tile, one count per tile row
    _, sparse = sj.nbytes({"k": p["dense_0"]["kernel"]}, {"k": blk["dense_0"]["kernel"]})
    assert sparse == 4 * 64 * 4 + 4 * 4 + 2 * 4
    ch = sj.compute_masks(p, "channel", 0.5, axis=-1)
    text = sj.summary(p, ch, print_fn=None)
    assert "channel (axis 1)" in text
    _, sparse = sj.nbytes({"k": p["dense_1"]["kernel"]}, {"k": ch["dense_1"]["kernel"]})
    assert sparse == 4 * 32 * 4 + 4 * 4  # 4 kept output channels of 32 + their int32 indices
    # a block mask with partial edge tiles is still a block mask
    odd = {"w": jax.random.normal(jax.random.PRNGKey(1), (12, 20))}
    mo = sj.compute_masks(odd, "block", 0.5, block_shape=(8, 8))
    assert "block (8, 8)" in sj.summary(odd, mo, print_fn=None)
    text = sj.summary(p, sj.compute_masks(p, sparsity=0.5), print_fn=None)
    assert "selected" in text and "all float leaves" in text


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


def test_traced_sparsity_out_of_range_clamps_and_checkify_reports_it():
    from jax.experimental import checkify

    p = params()
    f = jax.jit(lambda p, s: sj.compute_masks(p, sparsity=s))
    # without checkify: clamped into [0, 1]; NaN counts as 0 (nothing pruned)
    assert int(f(p, 1.5)["dense_0"]["kernel"].sum()) == 1
    assert bool(f(p, -0.5)["dense_0"]["kernel"].all())
    assert bool(f(p, jnp.nan)["dense_0"]["kernel"].all())
    checked = jax.jit(checkify.checkify(lambda p, s: sj.compute_masks(p, sparsity=s),
                                        errors=checkify.user_checks))
    for bad in (1.5, -0.5, jnp.nan):
        err, _ = checked(p, bad)
        with pytest.raises(checkify.JaxRuntimeError, match=r"`sparsity` must be in \[0, 1\]"):
            err.throw()
    err, out = checked(p, 0.5)
    assert err.get() is None
    jax.tree.map(np.testing.assert_array_equal, out, sj.compute_masks(p, sparsity=0.5))
    # the check lives in the pattern functions too (vmap over sparsities)
    err, _ = checkify.checkify(jax.vmap(lambda s: masks.unstructured(jnp.arange(8.0), s)),
                               errors=checkify.user_checks)(jnp.array([0.2, 1.2]))
    assert "got 1.2" in err.get()


class _Mixed:
    """A mixed NNX model: embedding, conv, dense, dropout (RNG keys in its state)."""

    @staticmethod
    def make():
        from flax import nnx

        class Model(nnx.Module):
            def __init__(self, rngs):
                self.embed = nnx.Embed(16, 8, rngs=rngs)
                self.conv = nnx.Conv(8, 8, kernel_size=(3,), rngs=rngs)
                self.dense = nnx.Linear(8, 12, rngs=rngs)
                self.head = nnx.Linear(12, 4, rngs=rngs)
                self.drop = nnx.Dropout(0.1, rngs=rngs)

            def __call__(self, ids):
                h = self.drop(self.conv(self.embed(ids)))
                return self.head(nnx.relu(self.dense(h)))

        return Model(nnx.Rngs(0, dropout=1))


def test_mixed_nnx_model_per_leaf_axis_rule_summary_and_sparsity():
    from flax import nnx

    model = _Mixed.make()
    state = nnx.state(model)  # Params + the Dropout's RNG key and counter
    axis = {"conv/*": -2, "*": 0}  # reduction axis: in of [k, in, out] conv and of [in, out] dense
    m = sj.compute_masks(state, "nm", n=2, m=4, axis=axis)
    flat = {sj.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
        m, is_leaf=lambda x: x is None)[0]}
    assert flat["embed/embedding"] is None  # the default where skips embedding tables
    assert flat["dense/bias"] is None and flat["drop/rngs/key"] is None
    assert bool(masks.satisfies_nm(flat["conv/kernel"], 2, 4, axis=-2))
    assert bool(masks.satisfies_nm(flat["dense/kernel"], 2, 4, axis=0))
    assert bool(masks.satisfies_nm(flat["head/kernel"], 2, 4, axis=0))
    text = sj.summary(state, m, print_fn=None)
    assert "2:4 (axis 1)" in text and "2:4 (axis 0)" in text and "rngs" not in text
    assert "2 non-float leaves" in text
    stats = sj.sparsity(state, m)
    assert set(stats.per_leaf) == {"conv/kernel", "dense/kernel", "head/kernel"}
    assert float(stats.overall) == pytest.approx(0.5)
    assert 0 < float(stats.whole_model) < 0.5
    # plain params: the RNG key is skipped (no crash); the zero-initialised biases are the zeros
    assert float(sj.sparsity(state).whole_model) == pytest.approx((8 + 12 + 4) / 488)
    sj.summary(state, print_fn=None)
    sj.nbytes(state, m)
    pruned = sj.apply_masks(state, m)
    nnx.update(model, pruned)
    assert model(jnp.arange(6)[None]).shape == (1, 6, 4)
    # exclude= and the embedding opt-in
    m2 = sj.compute_masks(state, sparsity=0.5, exclude="head/*")
    assert jax.tree.leaves(m2, is_leaf=lambda x: x is None).count(None) > 0
    m3 = sj.compute_masks(state, sparsity=0.5, where="embed/embedding")
    assert int(sj.sparsity(m3).per_leaf["embed/embedding"] * 128) == 64


def test_equinox_embedding_skipped_by_default():
    import equinox as eqx

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    model = [eqx.nn.Embedding(10, 8, key=keys[0]), eqx.nn.Linear(8, 4, key=keys[1])]
    params = eqx.filter(model, eqx.is_array)
    m = sj.compute_masks(params, sparsity=0.5)
    assert m[0].weight is None and m[1].weight is not None
    assert sj.allocation.uniform(params, 0.5)[0].weight is None


def test_functions_and_rules_compose():
    import functools

    p = params()
    # pattern / score / allocation given as functions equal the names
    jax.tree.map(np.testing.assert_array_equal,
                 sj.compute_masks(p, masks.nm, n=2, m=4, axis=0, scores=sj.scores.magnitude),
                 sj.compute_masks(p, "nm", n=2, m=4, axis=0))
    jax.tree.map(np.testing.assert_array_equal,
                 sj.compute_masks(p, masks.unstructured, 0.8, allocation=sj.allocation.erk),
                 sj.compute_masks(p, "unstructured", 0.8, allocation="erk"))
    rigl = sj.compute_masks(p, sparsity=0.8, allocation=functools.partial(sj.allocation.erk, rounding="rigl"))
    tree = sj.allocation.erk(p, 0.8, rounding="rigl")
    jax.tree.map(np.testing.assert_array_equal, rigl, sj.compute_masks(p, sparsity=tree))
    # a user pattern: (scores, sparsity, **kwargs) -> bool
    half = sj.compute_masks(p, lambda s, sp, offset=0.0: s > offset, 0.5, offset={"dense_0/*": 10.0, "*": 0.0})
    assert not bool(half["dense_0"]["kernel"].any()) and bool(half["dense_1"]["kernel"].all())
    # per-leaf sparsity as a callable and as globs (None = leave dense)
    by_fn = sj.compute_masks(p, sparsity=lambda path, x: 0.75 if x.shape[0] == 16 else None)
    assert by_fn["dense_1"]["kernel"] is None and int(by_fn["dense_0"]["kernel"].sum()) == 128
    by_glob = sj.compute_masks(p, sparsity={"dense_1/*": 0.5, "*": 0.75})
    assert int(by_glob["dense_1"]["kernel"].sum()) == 128 and int(by_glob["dense_0"]["kernel"].sum()) == 128
    # wanda with per-leaf norms
    norms = {"dense_0/kernel": jnp.arange(16.0), "dense_1/kernel": jnp.ones(32)}
    w = sj.compute_masks(p, sparsity=0.5, scores=sj.scores.wanda, score_kwargs={"norms": norms, "axis": 0}, axis=0)
    ref = masks.unstructured(sj.scores.wanda(p["dense_0"]["kernel"], norms=norms["dense_0/kernel"], axis=0), 0.5, axis=0)
    np.testing.assert_array_equal(w["dense_0"]["kernel"], ref)
    # precomputed scores tree under jit with a traced per-leaf sparsity tree (sparse-training use)
    sc = jax.tree.map(lambda x: -jnp.abs(x), p)
    f = jax.jit(lambda p, sc, s: sj.compute_masks(p, sparsity={"*": s}, scores=sc))
    out = f(p, sc, 0.25)
    np.testing.assert_array_equal(out["dense_0"]["kernel"],
                                  pattern_mask(sc["dense_0"]["kernel"], "unstructured", 0.25))

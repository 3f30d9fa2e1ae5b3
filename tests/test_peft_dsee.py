"""DSEE (`sparsejax.peft.dsee`): the GreBsmo split against a float64 numpy transcription of
VITA-Group/DSEE ``run_glue.py`` step by step, apply / merge against the factored forward, and
`dsee.train` training only ``A``, ``B`` and the sparse values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax.peft import dsee


def _reference_grebsmo(w, v0, steps, num_sparse, inner=2, inc=5, q=0.01):
    """run_glue.py's loop for one weight (torch.qr -> numpy.qr, both LAPACK Householder)."""
    v = v0.copy()
    for _ in range(steps):
        s = np.zeros_like(w)
        for _ in range(inner):
            u = np.linalg.qr((w - s) @ v.T)[0]
            v = u.T @ (w - s)
            s = w - u @ v
            s[np.abs(s) < q] = 0
        e = w - u @ v - s
        fit_v = v
        v = np.concatenate([v, np.linalg.qr(e)[1][:inc]], 0)
    kth = np.sort(np.abs(s).ravel())[s.size - num_sparse]  # torch.kthvalue(numel - k + 1)
    return u, fit_v, s, np.abs(s) >= kth


def test_grebsmo_matches_float64_transcription(shape=(24, 18), steps=3, q=0.01):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape) * 0.5
    key = jax.random.key(3)
    with jax.enable_x64(True):
        v0 = np.asarray(jax.random.normal(key, (1, shape[1]), jnp.float64))
        u, v, s = dsee.grebsmo(jnp.asarray(w), key, rank_steps=steps, threshold=q)
        mask = dsee.support(jnp.asarray(w), 40, key, rank_steps=steps, threshold=q)
    ru, rv, rs, rmask = _reference_grebsmo(w, v0, steps, 40, q=q)
    assert u.shape == ru.shape and v.shape == rv.shape  # rank 1 + 5 (steps - 1)
    np.testing.assert_allclose(u, ru, atol=1e-9)
    np.testing.assert_allclose(v, rv, atol=1e-9)
    np.testing.assert_allclose(s, rs, atol=1e-9)
    assert 0 < np.count_nonzero(rs) < rs.size  # the threshold did act
    np.testing.assert_array_equal(mask, rmask)
    assert int(mask.sum()) == 40


def _base(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"l1": {"kernel": jax.random.normal(k1, (12, 10)), "bias": jnp.zeros(10)},
            "l2": {"kernel": jax.random.normal(k2, (10, 4)), "bias": jnp.zeros(4)}}


_WHERE = "l1/kernel"  # one fine-tuned kernel: few shapes, few compiles


def _randomised(delta, seed):
    keys = iter(jax.random.split(jax.random.key(seed), 16))

    def one(d):
        if not dsee.is_dsee(d):
            return d
        sp = d.sparse
        return dsee.DseeDelta(jax.random.normal(next(keys), d.a.shape),
                              jax.random.normal(next(keys), d.b.shape),
                              type(sp)(sp.indices, jax.random.normal(next(keys), sp.values.shape),
                                       None, sp.shape), d.scale)
    return jax.tree.map(one, delta, is_leaf=lambda x: x is None or dsee.is_dsee(x))


def test_init_support_apply_and_merge_against_factored_forward():
    base = _base()
    delta = dsee.init(base, rank=2, num_sparse=6, key=jax.random.key(1), alpha=4.0,
                      where=_WHERE, rank_steps=1)
    d = delta["l1"]["kernel"]
    assert delta["l1"]["bias"] is None and delta["l2"]["kernel"] is None and d.scale == 2.0
    assert d.a.shape == (12, 2) and d.b.shape == (2, 10) and not d.b.any()
    assert d.sparse.indices.shape == (6,) and not d.sparse.values.any()
    k_init = jax.random.split(jax.random.key(1), 8)
    want = dsee.support(base["l1"]["kernel"].T, 6, k_init[2], rank_steps=1).T
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(want)), d.sparse.indices)
    assert dsee.trainable_count(delta) == 12 * 2 + 2 * 10 + 6

    delta = _randomised(delta, 2)
    d = delta["l1"]["kernel"]
    s_dense = np.zeros(120)
    s_dense[np.asarray(d.sparse.indices)] = np.asarray(d.sparse.values)
    w = np.asarray(base["l1"]["kernel"], np.float64)
    want = w + 2.0 * (np.asarray(d.a, np.float64) @ np.asarray(d.b, np.float64)
                      + s_dense.reshape(12, 10))
    out, merged, pruned = jax.jit(lambda d: (dsee.apply(base, d), dsee.merge(base, d),
                                             dsee.merge(base, d, sparsity=0.75)))(delta)
    np.testing.assert_allclose(out["l1"]["kernel"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["l1"]["bias"], base["l1"]["bias"])
    np.testing.assert_array_equal(merged["l1"]["kernel"], out["l1"]["kernel"])
    # the reference's unmerged forward: x W + scale (B(A x) + S x)
    x = np.random.default_rng(1).normal(size=(5, 12))
    factored = x @ w + 2.0 * ((x @ np.asarray(d.a)) @ np.asarray(d.b) + x @ s_dense.reshape(12, 10))
    np.testing.assert_allclose(x @ np.asarray(merged["l1"]["kernel"], np.float64), factored,
                               rtol=1e-5, atol=1e-4)
    assert int((pruned["l1"]["kernel"] != 0).sum()) == 30
    kept = np.asarray(pruned["l1"]["kernel"]) != 0
    assert np.abs(want[kept]).min() >= np.abs(want[~kept]).max() - 1e-5


def test_train_updates_only_the_delta_and_both_gradient_forms_agree():
    base = _base()
    x = jax.random.normal(jax.random.key(5), (32, 12))
    y = jnp.argmax(x[:, :4], axis=1)

    def loss(p):
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return optax.softmax_cross_entropy_with_integer_labels(
            h @ p["l2"]["kernel"] + p["l2"]["bias"], y).mean()

    delta = _randomised(dsee.init(base, rank=2, num_sparse=6, key=jax.random.key(1),
                                  where=_WHERE, rank_steps=1), 7)
    tx = dsee.train(optax.sgd(0.1))
    state = tx.init(delta)
    assert sum(a.size for a in jax.tree.leaves(state)) == 0  # sgd: no state

    @jax.jit
    def both(delta):  # the dense kernel gradient and the delta's own gradient
        dense_g = jax.grad(loss)(dsee.apply(base, delta))
        own_g = jax.grad(lambda d: loss(dsee.apply(base, d)), allow_int=True)(delta)
        return dense_g, tx.update(dense_g, state, delta)[0], tx.update(own_g, state, delta)[0]

    dense_g, u1, u2 = both(delta)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    d, ud = delta["l1"]["kernel"], u1["l1"]["kernel"]
    np.testing.assert_array_equal(ud.sparse.indices, 0)
    np.testing.assert_allclose(ud.sparse.values,
                               -0.1 * d.scale * np.ravel(dense_g["l1"]["kernel"])[d.sparse.indices],
                               rtol=1e-5)

    tx = dsee.train(optax.adam(1e-2))
    state = tx.init(delta)
    n_state = sum(a.size for a in jax.tree.leaves(state) if a.ndim)
    assert n_state == 2 * dsee.trainable_count(delta)

    @jax.jit
    def step(delta, state):
        g = jax.grad(loss)(dsee.apply(base, delta))
        u, state = tx.update(g, state, delta)
        return optax.apply_updates(delta, u), state

    l0 = float(loss(dsee.apply(base, delta)))
    new = delta
    for _ in range(5):
        new, state = step(new, state)
    assert float(loss(dsee.apply(base, new))) < l0
    np.testing.assert_array_equal(new["l1"]["kernel"].sparse.indices, d.sparse.indices)
    assert not np.allclose(new["l1"]["kernel"].b, d.b)


def test_bad_input():
    base = _base()
    with pytest.raises(ValueError, match="`rank` must"):
        dsee.init(base, rank=0, num_sparse=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="2-D"):
        dsee.init({"w": jnp.ones((2, 3, 4))}, rank=1, num_sparse=2, key=jax.random.key(0),
                  where=lambda p, x: True)
    with pytest.raises(ValueError, match="`num_sparse` must"):
        dsee.support(jnp.ones((3, 3)), 10, jax.random.key(0))
    delta = {"l1": {"kernel": None}}
    with pytest.raises(ValueError, match="`params` must be passed"):
        dsee.train(optax.sgd(0.1)).update(delta, dsee.train(optax.sgd(0.1)).init(delta))

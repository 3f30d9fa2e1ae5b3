"""Sparse deltas (`sparsejax.peft.delta`): apply against a dense numpy reference, exact merge /
unmerge round trips (hypothesis), and `train_delta` training only the delta's values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsejax import peft


def _params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"l1": {"kernel": jax.random.normal(k1, (8, 6)), "bias": jnp.zeros(6)},
            "l2": {"kernel": jax.random.normal(k2, (6, 5)), "bias": jnp.ones(5)}}


def _with_values(delta, seed):
    leaves = [d for d in jax.tree.leaves(delta, is_leaf=peft.is_delta) if peft.is_delta(d)]
    keys = iter(jax.random.split(jax.random.key(seed), len(leaves)))
    return jax.tree.map(lambda d: peft.SparseDelta(d.indices, jax.random.normal(next(keys),
                        d.values.shape), None, d.shape) if peft.is_delta(d) else d, delta,
                        is_leaf=lambda x: x is None or peft.is_delta(x))


def test_sparse_delta_support_and_apply_against_numpy():
    params = _params()
    delta = _with_values(peft.sparse_delta(params, 0.25, key=jax.random.key(1)), 2)
    assert delta["l1"]["bias"] is None and delta["l2"]["bias"] is None  # kernels only (default)
    d = delta["l1"]["kernel"]
    assert d.indices.shape == (12,) and len(set(np.asarray(d.indices).tolist())) == 12
    assert peft.delta_size(delta) == 12 + round(30 * 0.25)
    out = peft.apply(params, delta)
    want = np.asarray(params["l1"]["kernel"]).copy().reshape(-1)
    want[np.asarray(d.indices)] += np.asarray(d.values)
    np.testing.assert_allclose(out["l1"]["kernel"], want.reshape(8, 6), rtol=1e-6)
    np.testing.assert_array_equal(out["l1"]["bias"], params["l1"]["bias"])
    dense = peft.dense(delta, params)["l1"]["kernel"]
    assert int(jnp.sum(dense != 0)) == 12


def test_scores_pick_the_top_entries_and_masks_round_trip():
    params = {"w": jnp.arange(20.0).reshape(4, 5)}
    delta = peft.sparse_delta(params, 0.2, where="w", scores={"w": params["w"]})
    assert np.asarray(delta["w"].indices).tolist() == [16, 17, 18, 19]
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = mask[3, 0] = True
    d2 = peft.delta_from_masks(params, {"w": jnp.asarray(mask)})
    assert np.asarray(d2["w"].indices).tolist() == [7, 15]


@given(seed=st.integers(0, 2**16), density=st.sampled_from([0.1, 0.5, 1.0]),
       scale=st.sampled_from([1e-8, 1.0, 1e8]))
def test_merge_unmerge_exact_round_trip(seed, density, scale):
    rng = np.random.default_rng(seed)
    params = {"a": jnp.asarray(rng.normal(size=(8, 6)) * scale, jnp.float32),
              "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    # exactly round(density * 48) entries, at random positions: one delta shape per density
    # (a random count would recompile every eager op of merge/unmerge at each new size)
    mask = np.zeros(48, bool)
    mask[rng.permutation(48)[:round(density * 48)]] = True
    mask = mask.reshape(8, 6)
    delta = peft.delta_from_masks(params, {"a": jnp.asarray(mask), "b": None})
    d = delta["a"]
    delta = {"a": peft.SparseDelta(d.indices, jnp.asarray(rng.normal(size=d.values.shape),
                                                          jnp.float32), None, d.shape),
             "b": None}
    merged, mdelta = peft.merge(params, delta)
    jax.tree.map(np.testing.assert_array_equal, merged, peft.apply(params, delta))
    base, back = peft.unmerge(merged, mdelta)
    jax.tree.map(np.testing.assert_array_equal, base, params)  # bit for bit
    jax.tree.map(np.testing.assert_array_equal, back, delta)
    merged2, _ = peft.merge(base, back)
    jax.tree.map(np.testing.assert_array_equal, merged2, merged)


def test_merge_unmerge_refuse_the_wrong_state():
    params = _params()
    delta = peft.sparse_delta(params, 0.5, key=jax.random.key(0))
    merged, mdelta = peft.merge(params, delta)
    with pytest.raises(ValueError, match="unmerged"):
        peft.merge(merged, mdelta)
    with pytest.raises(ValueError, match="merged delta"):
        peft.unmerge(merged, delta)


def test_bad_input_is_named():
    params = _params()
    with pytest.raises(ValueError, match="density"):
        peft.sparse_delta(params, 0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        peft.sparse_delta(params, 0.1)
    delta = peft.sparse_delta(params, 0.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="delta"):
        peft.apply({"l1": params["l1"]}, delta)
    swapped = {"l1": {**params["l1"], "kernel": params["l2"]["kernel"]}, "l2": params["l2"]}
    with pytest.raises(ValueError, match="shape"):
        peft.apply(swapped, delta)
    with pytest.raises(ValueError, match="masks"):
        peft.delta_from_masks(params, {"l1": {"kernel": jnp.ones((2, 2), bool), "bias": None},
                                       "l2": {"kernel": None, "bias": None}})


def test_train_delta_updates_only_the_values_and_allocates_state_for_them_only():
    params = _params()
    delta = _with_values(peft.sparse_delta(params, 0.25, key=jax.random.key(1)), 3)
    k = peft.delta_size(delta)
    tx = peft.train_delta(optax.adam(1e-2))
    state = tx.init((params, delta))  # the frozen base rides along
    assert sum(x.size for x in jax.tree.leaves(state)) == 2 * k + 1  # mu, nu over k; count
    x = jax.random.normal(jax.random.key(5), (4, 8))

    def loss(p):
        return jnp.sum((jnp.tanh(x @ p["l1"]["kernel"]) @ p["l2"]["kernel"]) ** 2)

    dense_g = jax.grad(loss)(peft.apply(params, delta))
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update((zeros, dense_g), state, (params, delta))
    new_params, new_delta = optax.apply_updates((params, delta), upd)
    jax.tree.map(np.testing.assert_array_equal, new_params, params)  # the base never moves
    for nd, d in ((new_delta["l1"]["kernel"], delta["l1"]["kernel"]),
                  (new_delta["l2"]["kernel"], delta["l2"]["kernel"])):
        np.testing.assert_array_equal(nd.indices, d.indices)
        assert np.all(np.asarray(nd.values) != np.asarray(d.values))
    # the same update from the gradient of the values themselves, and a plain adam reference
    g_vals = jax.grad(lambda d: loss(peft.apply(params, d)), allow_int=True)(delta)
    upd2, _ = tx.update((zeros, g_vals), state, (params, delta))
    ref = optax.adam(1e-2)
    vals = [delta["l1"]["kernel"].values, delta["l2"]["kernel"].values]
    gref = [jnp.ravel(dense_g["l1"]["kernel"])[delta["l1"]["kernel"].indices],
            jnp.ravel(dense_g["l2"]["kernel"])[delta["l2"]["kernel"].indices]]
    uref, _ = ref.update(gref, ref.init(vals), vals)
    np.testing.assert_allclose(upd[1]["l1"]["kernel"].values, uref[0], rtol=1e-6)
    np.testing.assert_allclose(upd2[1]["l2"]["kernel"].values, uref[1], rtol=1e-6)

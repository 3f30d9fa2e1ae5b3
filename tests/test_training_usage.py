"""The training transforms used as optax / Equinox users do (issue 18): unusual inputs give a
clear error naming the right argument, or the right result."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import sparsejax as sj
from sparsejax import training as T

KEY = jax.random.key(0)
PARAMS = {"a": jax.random.normal(jax.random.key(1), (8, 6)),
          "b": jax.random.normal(jax.random.key(2), (6, 4))}
GRADS = jax.tree.map(lambda x: jnp.sin(3 * x) + 0.1, PARAMS)


def run(tx, params, steps, grads=GRADS):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(steps):
        upd, state = step(grads, state, params)
        params = optax.apply_updates(params, upd)
    return params, state


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.2])
def test_callable_schedule_out_of_range_is_an_error_like_a_float(value):
    with pytest.raises(ValueError, match=r"`schedule` must be in \[0, 1\]"):
        T.prune(optax.sgd(0.1), value)
    with pytest.raises(ValueError, match=r"`schedule\(0\)` must be in \[0, 1\]"):
        T.prune(optax.sgd(0.1), lambda t: jnp.float32(value))
    with pytest.raises(ValueError, match=r"`schedule\(1073741824\)` must be in \[0, 1\]"):
        T.prune(optax.sgd(0.1), lambda t: jnp.where(t > 100, jnp.float32(value), 0.5))

    # only traced (a value that depends on a traced argument): a checkify error
    def one_step(s):
        tx = T.prune(optax.sgd(0.1), lambda t: s)
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]

    err, _ = jax.jit(checkify.checkify(one_step, errors=checkify.user_checks))(jnp.float32(value))
    with pytest.raises(checkify.JaxRuntimeError, match="schedule"):
        err.throw()

    # a traced float (optax.inject_hyperparams) is checked where it enters
    def traced_float(s):
        tx = T.prune(optax.sgd(0.1), s)
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]

    err, _ = jax.jit(checkify.checkify(traced_float, errors=checkify.user_checks))(jnp.float32(value))
    with pytest.raises(checkify.JaxRuntimeError, match="schedule"):
        err.throw()


@pytest.mark.parametrize("schedule", [0.5, sj.schedules.polynomial(0.5, 0, 10),
                                      sj.schedules.constant(0.5), sj.schedules.one_shot(0.5, 2)])
def test_a_step_with_a_checked_schedule_carries_no_effect(schedule):
    # the schedule's value is in [0, 1] by construction: no checkify check under jit (an effect
    # takes every jitted step off JAX's fast dispatch path), in prune or the mask functions below it
    tx = T.prune(optax.sgd(0.1), schedule, update_every=1)
    jaxpr = jax.make_jaxpr(tx.update)(GRADS, tx.init(PARAMS), PARAMS)
    assert not jaxpr.effects
    # a user callable's value is checked (where it enters)
    tx = T.prune(optax.sgd(0.1), lambda t: jnp.float32(0.5) * (t > 0), update_every=1)
    assert jax.make_jaxpr(tx.update)(GRADS, tx.init(PARAMS), PARAMS).effects


def test_a_transform_after_the_sparse_one_is_detected_and_keep_masked_fixes_it():
    chain = optax.chain(T.static_sparse(optax.adam(0.1), 0.5, key=KEY),
                        optax.clip_by_global_norm(0.01))
    state = chain.init(PARAMS)
    params = PARAMS
    upd, state = chain.update(GRADS, state, params)  # eager: step 0 leaves pruned entries drifted
    params = optax.apply_updates(params, upd)
    with pytest.raises(ValueError, match="keep_masked"):
        chain.update(GRADS, state, params)

    chain = optax.chain(T.rigl(optax.adam(0.1), 0.5, end_step=4, update_every=2, key=KEY),
                        optax.clip_by_global_norm(0.01))
    params, state = run(T.keep_masked(chain), PARAMS, 5)
    for p, m in masked_pairs(params, T.masks_of(state)):
        assert np.all(p[~m] == 0) and np.count_nonzero(p) == int(m.sum())


def test_errors_name_the_right_argument():
    tx = T.prune(optax.adam(0.1), 0.5)
    state = tx.init(PARAMS)
    bad = {"a": jnp.ones((8, 5)), "b": GRADS["b"]}
    with pytest.raises(ValueError, match=r"`updates\['a'\]` must be of the shape"):
        tx.update(bad, state, PARAMS)
    with pytest.raises(TypeError, match=r"`schedule` must be a float in \[0, 1\]; got '0.5'"):
        T.prune(optax.adam(0.1), "0.5")
    with pytest.raises(TypeError, match=r"`sparsity` must be a float in \[0, 1\]; got '0.5'"):
        T.rigl(optax.adam(0.1), "0.5", end_step=10, key=KEY)


def test_inject_hyperparams():
    # static pattern arguments are named parameters
    tx = optax.inject_hyperparams(T.prune, static_args=("pattern", "n", "m", "axis"))(
        inner=optax.adam(0.1), schedule=0.5, pattern="nm", n=1, m=2, axis=0)
    _, state = run(tx, PARAMS, 1)
    assert bool(sj.masks.satisfies_nm(T.masks_of(state)["a"], 1, 2, axis=0))
    # the sparsity target as a hyperparameter (a schedule evaluated by inject_hyperparams)
    sched = sj.schedules.polynomial(0.75, 0, 4)
    tx = optax.inject_hyperparams(T.prune, static_args=("end_step",))(
        inner=optax.adam(0.1), schedule=sched, update_every=2, end_step=4)
    _, state = run(tx, PARAMS, 5)
    _, ref = run(T.prune(optax.adam(0.1), sched, update_every=2, end_step=4), PARAMS, 5)
    jax.tree.map(np.testing.assert_array_equal, T.masks_of(state), T.masks_of(ref))
    assert int(T.masks_of(state)["a"].sum()) == 12
    # an injectable learning rate of the inner optimizer, changed mid-training
    tx = T.rigl(optax.inject_hyperparams(optax.adam)(learning_rate=0.1), 0.5, end_step=4,
                update_every=2, key=KEY)
    state = tx.init(PARAMS)
    inner = state.inner_state
    state = state._replace(inner_state=inner._replace(
        hyperparams={**inner.hyperparams, "learning_rate": jnp.float32(0.0)}))
    upd, _ = tx.update(GRADS, state, PARAMS)
    m = T.masks_of(state)
    assert all(np.all(np.asarray(u)[np.asarray(mm)] == 0) for u, mm in
               zip(jax.tree.leaves(upd), jax.tree.leaves(m)))


def test_masks_of_under_multi_transform_is_accepted_by_summary_and_apply_masks():
    tx = optax.multi_transform({"sparse": T.prune(optax.adam(0.1), 0.5), "dense": optax.sgd(0.1)},
                               {"a": "sparse", "b": "dense"})
    params, state = run(tx, PARAMS, 1)
    masks = T.masks_of(state)
    assert masks["b"] is None and masks["a"].dtype == jnp.bool_
    np.testing.assert_array_equal(sj.apply_masks(params, masks)["a"], params["a"])
    assert "a" in sj.summary(params, masks, print_fn=None)


def test_sparsify_at_init():
    tx = T.rigl(optax.adam(0.1), 0.75, end_step=10, update_every=2, key=KEY,
                allocation="uniform")
    state = tx.init(PARAMS)
    params = T.sparsify(PARAMS, state)
    for p, m in masked_pairs(params, T.masks_of(state)):
        np.testing.assert_array_equal(p != 0, m)
    # under MultiSteps the masks hold from the first micro-step on
    ms = optax.MultiSteps(T.static_sparse(optax.sgd(0.1), 0.5, key=KEY), every_k_schedule=3)
    state = ms.init(PARAMS)
    params = T.sparsify(PARAMS, state)
    assert sum(int(np.count_nonzero(p)) for p in jax.tree.leaves(params)) == 36


def test_rigl_leaves_a_frozen_layer_alone():
    """Layer ``b`` frozen (zero learning rate via multi_transform): its mask is held, so its
    real nonzeros stay equal to the mask count; layer ``a`` still drops and grows."""
    inner = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.sgd(0.0)},
                                  {"a": "train", "b": "frozen"})
    tx = T.rigl(inner, 0.5, end_step=6, update_every=2, key=KEY, allocation="uniform")
    state0 = tx.init(PARAMS)
    params, state = run(tx, PARAMS, 7)
    m0, m = T.masks_of(state0), T.masks_of(state)
    np.testing.assert_array_equal(m["b"], m0["b"])
    assert np.count_nonzero(np.asarray(params["b"])) == int(m["b"].sum())
    assert bool((m["a"] != m0["a"]).any())


def masked_pairs(params, masks):
    out = []
    jax.tree.map(lambda m, p: None if m is None else out.append((np.asarray(p), np.asarray(m))),
                 masks, params, is_leaf=lambda x: x is None)
    return out


def test_every_entry_point_takes_an_equinox_model():
    model = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    grads = jax.tree.map(jnp.ones_like, params)
    txs = [T.prune(optax.adam(1e-2), 0.5, allocation="erk"),
           T.keep_masked(T.rigl(optax.adam(1e-2), 0.5, end_step=1, update_every=1, key=KEY)),
           T.static_sparse(optax.adam(1e-2), 0.5, key=KEY)]
    for tx in txs:
        state = tx.init(params)
        p = T.sparsify(params, state)
        p, state = run(tx, p, 2, grads)
        pairs = masked_pairs(p, T.masks_of(state))
        assert len(pairs) == 3
        for w, m in pairs:
            assert np.all(w[~m] == 0)
        kept = sum(int(m.sum()) for _, m in pairs) / sum(m.size for _, m in pairs)
        assert 0.4 < kept < 0.6

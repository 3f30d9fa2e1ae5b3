"""sparsejax.training: prune / rigl / SET / static as optax transforms, against hand-computed masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsejax as sj
from sparsejax import training as T


def make_params(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"l1": {"kernel": jax.random.normal(k[0], (16, 12)), "bias": jnp.zeros(12)},
            "l2": {"kernel": jax.random.normal(k[1], (12, 8)), "bias": jnp.zeros(8)}}


def grads_at(params, t):
    return jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(100 + t), x.shape), params)


def stepper(tx):
    """A jitted optax step and the list its Python body appends to on every trace."""
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(None)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    step.traces = traces
    return step


def run(tx, steps, params=None, record=None):
    params = make_params() if params is None else params
    state = tx.init(params)
    step = stepper(tx)
    for t in range(steps):
        before = (params, state)
        g = grads_at(params, t)
        params, state = step(params, state, g)
        if record is not None:
            record.append((t, before[0], g, before[1], params, state))
    return params, state, step


def kept_np(size, s):
    return max(1, int(np.round(np.float32(size) * (np.float32(1) - np.float32(s)))))


def topk_np(scores, k):
    """Reference top-k: stable order by (score desc, index asc)."""
    flat = np.asarray(scores, np.float64).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(np.shape(scores))


# ----------------------------------------------------------------------------- prune

SCHED = sj.schedules.polynomial(0.8, 0, 12, frequency=3)


@pytest.fixture(scope="module")
def prune_run():
    record = []
    tx = T.prune(optax.adam(1e-2), SCHED, update_every=3)
    params, state, step = run(tx, 16, record=record)
    return record, step


def test_prune_sparsity_follows_schedule_exactly(prune_run):
    record, _ = prune_run
    for t, _, _, _, _, state in record:
        if t % 3:
            continue
        s = float(SCHED(t))
        for m in jax.tree.leaves(T.masks_of(state)):
            assert int(m.sum()) == kept_np(m.size, s), (t, s)


def test_prune_masks_are_magnitude_topk_among_kept(prune_run):
    record, _ = prune_run
    for t, p_before, _, s_before, _, state in record:
        if t % 3:
            continue
        old = T.masks_of(s_before)
        new = T.masks_of(state)
        for name in ("l1", "l2"):
            w = np.asarray(p_before[name]["kernel"])
            o = np.asarray(old[name]["kernel"])
            score = np.where(o, np.abs(w), -np.inf)
            expect = topk_np(score, kept_np(w.size, float(SCHED(t))))
            np.testing.assert_array_equal(new[name]["kernel"], expect)


def test_prune_params_exactly_masked_and_masks_never_regrow(prune_run):
    record, _ = prune_run
    for _, _, _, s_before, params, state in record:
        old, new = T.masks_of(s_before), T.masks_of(state)
        for name in ("l1", "l2"):
            m = np.asarray(new[name]["kernel"])
            assert np.all(np.asarray(params[name]["kernel"])[~m] == 0)
            assert not np.any(m & ~np.asarray(old[name]["kernel"]))  # only shrinks
            assert new[name]["bias"] is None


def test_prune_one_compilation(prune_run):
    _, step = prune_run
    assert len(step.traces) == 1  # traced (and compiled) once for every step


def test_prune_kept_entries_move_by_inner_update():
    params = make_params()
    tx = T.prune(optax.sgd(0.5), 0.5, update_every=4)
    state = tx.init(params)
    g = grads_at(params, 0)
    updates, state = tx.update(g, state, params)
    m = T.masks_of(state)["l1"]["kernel"]
    w, u, gg = params["l1"]["kernel"], updates["l1"]["kernel"], g["l1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(u)[np.asarray(m)], -0.5 * np.asarray(gg)[np.asarray(m)])
    np.testing.assert_array_equal(np.asarray(w + u)[~np.asarray(m)], 0.0)
    np.testing.assert_array_equal(updates["l1"]["bias"], -0.5 * g["l1"]["bias"])  # dense leaf


def test_prune_saliency_uses_the_gradients():
    params = make_params()
    tx = T.prune(optax.sgd(0.0), 0.75, scores="saliency")
    state = tx.init(params)
    g = grads_at(params, 3)
    _, state = tx.update(g, state, params)
    w, gg = np.asarray(params["l2"]["kernel"]), np.asarray(g["l2"]["kernel"])
    expect = topk_np(np.abs(w * gg), kept_np(w.size, 0.75))
    np.testing.assert_array_equal(T.masks_of(state)["l2"]["kernel"], expect)


def test_prune_global_and_erk_allocations():
    params = make_params()
    g = grads_at(params, 0)
    tx = T.prune(optax.sgd(0.0), 0.7, allocation="global")
    _, state = tx.update(g, tx.init(params), params)
    expect = sj.compute_masks(params, sparsity=0.7, allocation="global")
    jax.tree.map(np.testing.assert_array_equal, T.masks_of(state), expect)
    tx = T.prune(optax.sgd(0.0), 0.7, allocation="erk")
    fresh = T.prune(optax.sgd(0.0), 0.7, allocation="erk")  # as after a restore: no init call
    _, state = jax.jit(fresh.update)(g, tx.init(params), params)
    budget = sj.allocation.erk(params, 0.7)
    for name in ("l1", "l2"):
        m = T.masks_of(state)[name]["kernel"]
        assert int(m.sum()) == kept_np(m.size, budget[name]["kernel"])


def test_prune_nm_pattern_and_random_scores():
    params = make_params()
    tx = T.prune(optax.adam(1e-2), 0.5, pattern="nm", n=2, m=4, axis=0, update_every=2)
    p, state, _ = run(tx, 3, params)
    for w in (p["l1"]["kernel"], p["l2"]["kernel"]):
        assert bool(sj.masks.satisfies_nm(w, 2, 4, axis=0))
    tx = T.prune(optax.adam(1e-2), 0.5, scores="random", key=jax.random.key(1))
    p, state, _ = run(tx, 2, params)
    assert int(T.masks_of(state)["l1"]["kernel"].sum()) == 96


def test_prune_user_score_callable():
    params = make_params()
    tx = T.prune(optax.sgd(0.0), 0.5, grad_scores=lambda w, g: -jnp.abs(w))  # keep the smallest
    _, state = tx.update(grads_at(params, 0), tx.init(params), params)
    w = np.asarray(params["l1"]["kernel"])
    np.testing.assert_array_equal(T.masks_of(state)["l1"]["kernel"], topk_np(-np.abs(w), 96))


# ----------------------------------------------------------------------------- RigL / SET

def chain_adam():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))


@pytest.fixture(scope="module", params=["gradient"])  # SET ("random"): test_training_checkpoint
def dynamic_run(request):
    record = []
    tx = T.dynamic_sparse(chain_adam(), 0.8, grow=request.param, update_every=2, end_step=9,
                          key=jax.random.key(0))
    _, _, step = run(tx, 10, record=record)
    return request.param, record, step


def test_dynamic_counts_constant_and_exact_masking(dynamic_run):
    _, record, step = dynamic_run
    counts = [int(m.sum()) for m in jax.tree.leaves(T.masks_of(record[0][3]))]
    budget = sj.allocation.erk(make_params(), 0.8)
    assert counts == [kept_np(m.size, s) for m, s in zip(
        jax.tree.leaves(T.masks_of(record[0][3])), jax.tree.leaves(budget))]
    changed = 0
    for _t, _, _, s_before, params, state in record:
        masks = T.masks_of(state)
        assert [int(m.sum()) for m in jax.tree.leaves(masks)] == counts
        for name in ("l1", "l2"):
            m = np.asarray(masks[name]["kernel"])
            assert np.all(np.asarray(params[name]["kernel"])[~m] == 0)
        changed += sum(int(np.sum(a != b)) for a, b in zip(
            jax.tree.leaves(T.masks_of(s_before)), jax.tree.leaves(masks)))
    assert changed > 0
    assert len(step.traces) == 1  # traced (and compiled) once for every step


def test_rigl_drop_lowest_weight_grow_highest_gradient_zero_moments(dynamic_run):
    grow, record, _ = dynamic_run
    for t, p_before, g, s_before, params, state in record:
        if t == 0 or t % 2 or t >= 9:
            continue
        f = float(T.DropGrowSchedule.create(update_every=1, end_step=9, drop_fraction=0.3, begin_step=0).fraction(t))
        old, new = T.masks_of(s_before), T.masks_of(state)
        adam = state.inner_state[1][0]
        for name in ("l1", "l2"):
            o, n = np.asarray(old[name]["kernel"]), np.asarray(new[name]["kernel"])
            w, gg = np.asarray(p_before[name]["kernel"]), np.asarray(g[name]["kernel"])
            nnz = int(o.sum())
            n_drop = int(np.floor(np.float32(nnz) * np.float32(f)))
            kept = topk_np(np.where(o, np.abs(w), -np.inf), nnz - n_drop)
            grown = n & ~kept
            assert int(grown.sum()) == n_drop and np.all(kept <= n)
            if grow == "gradient":
                np.testing.assert_array_equal(n, kept | topk_np(np.where(kept, -np.inf, np.abs(gg)),
                                                                 n_drop))
            new_entries = n & ~o
            assert np.all(np.asarray(params[name]["kernel"])[new_entries] == 0)
            for moment in (adam.mu, adam.nu):
                assert np.all(np.asarray(moment[name]["kernel"])[n != o] == 0)


def test_drop_fraction_cosine():
    np.testing.assert_allclose(T.DropGrowSchedule.create(update_every=1, end_step=100, drop_fraction=0.3, begin_step=0).fraction(0), 0.3)
    np.testing.assert_allclose(T.DropGrowSchedule.create(update_every=1, end_step=100, drop_fraction=0.3, begin_step=0).fraction(50), 0.15, rtol=1e-6)
    np.testing.assert_allclose(T.DropGrowSchedule.create(update_every=1, end_step=100, drop_fraction=0.3, begin_step=0).fraction(100), 0.0, atol=1e-7)


def test_static_sparse_mask_fixed():
    tx = T.static_sparse(optax.adam(1e-2), 0.9, allocation="uniform", key=jax.random.key(3))
    params, state, _ = run(tx, 3)
    m0 = T.masks_of(tx.init(make_params()))
    jax.tree.map(np.testing.assert_array_equal, m0, T.masks_of(state))
    assert int(m0["l1"]["kernel"].sum()) == kept_np(192, 0.9)
    assert np.all(np.asarray(params["l1"]["kernel"])[~np.asarray(m0["l1"]["kernel"])] == 0)


# ----------------------------------------------------------------------------- masks_of

def test_masks_of_nested_states():
    params = make_params()
    inner = T.prune(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), 0.5)
    tx = optax.chain(optax.clip_by_global_norm(1.0), inner)
    state = tx.init(params)
    assert T.masks_of(state)["l1"]["bias"] is None
    assert T.masks_of(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1).init(params) and
                      state)["l2"]["kernel"].dtype == bool
    with pytest.raises(ValueError, match="opt_state"):
        T.masks_of(optax.adam(1e-3).init(params))


@jax.jit
def _one_prune_step(params, s):
    tx = T.prune(optax.sgd(0.1), lambda t: s)  # a traced schedule value: one compilation
    updates, state = tx.update(params, tx.init(params), params)
    return optax.apply_updates(params, updates), T.masks_of(state)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2 ** 16))
def test_prune_exact_count_property(s, seed):
    params = {"w": jnp.asarray(np.random.default_rng(seed).normal(size=(6, 5)), jnp.float32)}
    new, masks = _one_prune_step(params, jnp.float32(s))
    m = np.asarray(masks["w"])
    assert int(m.sum()) == kept_np(30, s)
    np.testing.assert_array_equal(m, topk_np(np.abs(np.asarray(params["w"])), kept_np(30, s)))
    assert np.all(np.asarray(new["w"])[~m] == 0)


# ----------------------------------------------------------------------------- bad input

def test_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="schedule"):
        T.prune(optax.sgd(0.1), 1.5)
    with pytest.raises(ValueError, match="update_every"):
        T.prune(optax.sgd(0.1), 0.5, update_every=0)
    with pytest.raises(ValueError, match="end_step"):  # inclusive: 10 is the first update
        T.rigl(optax.sgd(0.1), 0.5, update_every=10, end_step=9, key=key)
    with pytest.raises(TypeError, match="key"):  # required in the signature
        T.rigl(optax.sgd(0.1), 0.5, end_step=1000)
    with pytest.raises(ValueError, match="key"):
        T.rigl(optax.sgd(0.1), 0.5, end_step=1000, key=None)
    with pytest.raises(ValueError, match="sparsity"):
        T.rigl(optax.sgd(0.1), -0.1, end_step=1000, key=key)
    with pytest.raises(ValueError, match="allocation"):
        T.prune(optax.sgd(0.1), 0.5, pattern="nm", n=2, m=4, axis=0, allocation="erk")
    with pytest.raises(ValueError, match="allocation"):
        T.prune(optax.sgd(0.1), 0.5, pattern="block", block_shape=(4, 4), allocation="global")
    with pytest.raises(ValueError, match="key"):
        T.prune(optax.sgd(0.1), 0.5, scores="random")
    with pytest.raises(ValueError, match="scores"):
        T.prune(optax.sgd(0.1), 0.5, scores="wanda")
    with pytest.raises(ValueError, match="grow"):
        T.dynamic_sparse(optax.sgd(0.1), 0.5, grow="x", end_step=1000, key=key)
    tx = T.rigl(optax.adafactor(1e-3, min_dim_size_to_factor=2), 0.5, end_step=1000, key=key)
    with pytest.raises(ValueError, match="inner_state"):
        tx.init(make_params())
    tx = T.prune(optax.sgd(0.1), 0.5)
    state = tx.init(make_params())
    with pytest.raises(ValueError, match="masks"):
        tx.update({"l1": make_params()["l1"]}, state, {"l1": make_params()["l1"]})
    with pytest.raises(ValueError, match="params"):
        tx.update(make_params(), state)
    tx = T.prune(optax.sgd(0.1), 0.5, pattern="nm", n=2, m=4)  # N:M needs its axis
    with pytest.raises(ValueError, match="axis"):
        tx.init(make_params())

"""The drop-and-grow core: `drop_and_grow`, `DropGrowSchedule`, `masked_transform`'s hook and
skip rule, each against a plain numpy transcription of the reference code."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import training as T


def ref_drop_and_grow(mask, drop, grow, fraction, regrow_dropped):
    """rigl ``sparse_optimizers_base.py::_get_update_op`` (noise-free), in numpy; with
    ``regrow_dropped=False`` the candidates are the entries outside the old mask (SSVI)."""
    mask, drop, grow = mask.ravel(), drop.ravel().astype(np.float64), grow.ravel()
    n_ones = int(mask.sum())
    n_prune = int(np.float32(n_ones) * np.float32(fraction))
    if not regrow_dropped:
        n_prune = min(n_prune, mask.size - n_ones)
    drop = np.where(mask, drop, -np.inf)
    order = np.argsort(-drop, kind="stable")
    mask1 = np.zeros(mask.size, bool)
    mask1[order[:n_ones - n_prune]] = True
    blocked = mask1 if regrow_dropped else mask
    lifted = np.where(blocked, -np.inf, grow.astype(np.float64))
    order = np.argsort(-lifted, kind="stable")
    mask2 = np.zeros(mask.size, bool)
    mask2[order[:n_prune]] = True
    assert not (mask1 & mask2).any()
    return mask1 | mask2


# one compiled program per (size, regrow_dropped), the fraction traced (eager calls compiled every
# primitive at every new size); the eager path runs in the tests below
_drop_and_grow = jax.jit(T.drop_and_grow, static_argnames="regrow_dropped")


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 16), st.floats(0.0, 1.0), st.booleans(),
       st.sampled_from([1, 2, 7, 16, 37]))  # sizes: single, tiny, ragged, even, largest
def test_drop_and_grow_matches_rigl_reference(seed, fraction, regrow, size):
    rng = np.random.default_rng(seed)
    mask = rng.random(size) < rng.random()
    drop, grow = rng.normal(size=size), rng.normal(size=size)
    got = np.asarray(_drop_and_grow(jnp.asarray(mask), jnp.asarray(drop, jnp.float32),
                                    jnp.asarray(grow, jnp.float32), fraction,
                                    regrow_dropped=regrow))
    np.testing.assert_array_equal(got, ref_drop_and_grow(mask, drop.astype(np.float32),
                                                         grow.astype(np.float32), fraction, regrow))
    assert got.sum() == mask.sum()  # nnz constant


def test_drop_and_grow_regrowth_and_nan_scores():
    mask = jnp.array([True, True, False, False])
    drop = jnp.array([1.0, 0.5, 0.0, 0.0])
    grow = jnp.array([0.0, 9.0, 1.0, 2.0])  # the dropped entry 1 has the largest grow score
    np.testing.assert_array_equal(T.drop_and_grow(mask, drop, grow, 0.5, regrow_dropped=True),
                                  [True, True, False, False])
    np.testing.assert_array_equal(T.drop_and_grow(mask, drop, grow, 0.5, regrow_dropped=False),
                                  [True, False, False, True])
    nan = jnp.array([jnp.nan, 1.0, 0.0, 0.0])  # NaN ranks last, a candidate still beats -inf
    np.testing.assert_array_equal(T.drop_and_grow(mask, nan, jnp.array([0, 0, jnp.nan, 1.0]),
                                                  0.5, regrow_dropped=False),
                                  [False, True, False, True])
    jitted = jax.jit(T.drop_and_grow, static_argnames="regrow_dropped")
    assert int(jitted(mask, drop, grow, jnp.float32(0.5), regrow_dropped=False).sum()) == 2


def test_drop_and_grow_errors():
    m = jnp.ones(4, bool)
    with pytest.raises(TypeError, match="`mask` must be a bool array"):
        T.drop_and_grow(jnp.ones(4), jnp.ones(4), jnp.ones(4), 0.1, regrow_dropped=True)
    with pytest.raises(ValueError, match="`grow_score` must be of shape"):
        T.drop_and_grow(m, jnp.ones(4), jnp.ones(3), 0.1, regrow_dropped=True)
    with pytest.raises(ValueError, match="`fraction` must be in"):
        T.drop_and_grow(m, jnp.ones(4), jnp.ones(4), 1.5, regrow_dropped=True)
    with pytest.raises(TypeError, match="regrow_dropped"):
        T.drop_and_grow(m, jnp.ones(4), jnp.ones(4), 0.1, regrow_dropped=None)


def test_schedule_matches_jaxpruner_and_rigl():
    s = T.DropGrowSchedule.create(update_every=10, end_step=50, drop_fraction=0.3)
    steps = np.arange(70)
    # jaxpruner PeriodicSchedule(update_freq=10, update_start_step=10, update_end_step=50)
    ref_active = (steps % 10 == 0) & (steps >= 10) & (steps <= 50)
    np.testing.assert_array_equal(jax.vmap(s.active)(steps), ref_active)
    ref_f = np.asarray(jax.vmap(optax.cosine_decay_schedule(0.3, 50))(steps))
    np.testing.assert_allclose(jax.vmap(s.fraction)(steps), ref_f, atol=1e-7)
    assert float(s.fraction(50)) == pytest.approx(0.0, abs=1e-8)  # end_step inclusive, f = 0
    c = T.DropGrowSchedule.create(update_every=5, end_step=20, drop_fraction=0.2,
                                  begin_step=3, anneal="constant")
    np.testing.assert_array_equal(np.flatnonzero(jax.vmap(c.active)(steps)), [3, 8, 13, 18])
    assert float(c.fraction(17)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="`end_step` must be >= begin_step"):
        T.DropGrowSchedule.create(update_every=10, end_step=9)
    with pytest.raises(ValueError, match="`anneal` must be one of"):
        T.DropGrowSchedule.create(end_step=200, anneal="linear")
    with pytest.raises(ValueError, match="`drop_fraction` must be in"):
        T.DropGrowSchedule.create(end_step=200, drop_fraction=2.0)


def _toy_transform(update_at_mask_step, value=7.0):
    """Every 2nd step: move the kept entry to the next index, grown entry starts at ``value``
    (a scalar or a per-entry array)."""
    def init_masks(params, key):
        return {"w": jnp.arange(4) == 0, "b": None}

    def update_masks(params, grads, masks, step, key):
        new = jnp.roll(masks["w"], 1)
        return T.MaskUpdate({"w": new, "b": None}, {"w": jnp.asarray(value, jnp.float32),
                                                    "b": None})

    sched = T.DropGrowSchedule.create(update_every=2, end_step=4, drop_fraction=0.5)
    return T.masked_transform(optax.sgd(1.0, momentum=0.5), init_masks, update_masks, sched,
                              reset=True, update_at_mask_step=update_at_mask_step)


def test_masked_transform_per_entry_values_and_bad_value_shape():
    """A per-entry values array: the grown entry starts from its own value; values that do not
    broadcast to the leaf raise, naming them."""
    params = {"w": jnp.zeros(4), "b": jnp.zeros(1)}
    grads = {"w": jnp.ones(4), "b": jnp.ones(1)}
    tx = _toy_transform(False, value=[10.0, 20.0, 30.0, 40.0])
    state = tx.init(params)
    for _ in range(3):
        upd, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(params["w"], [0, 20, 0, 0])  # entry 1 grown at step 2
    tx = _toy_transform(False, value=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"`MaskUpdate.values` must be arrays broadcastable"):
        tx.update(grads, tx.init(params), params)


def test_masked_transform_hook_values_and_skipped_step():
    params = {"w": jnp.array([1.0, 2.0, 3.0, 4.0]), "b": jnp.array([1.0])}
    grads = {"w": jnp.ones(4), "b": jnp.ones(1)}
    tx = _toy_transform(False)
    state = tx.init(params)
    step = jax.jit(tx.update)
    history = []
    for _ in range(5):
        upd, state = step(grads, state, params)
        params = optax.apply_updates(params, upd)
        history.append((np.asarray(params["w"]), float(params["b"][0])))
    # step 0: sgd on the kept entry (1 - 1 = 0), the rest zeroed; b: 1 - 1 = 0
    np.testing.assert_allclose(history[0][0], [0, 0, 0, 0])
    assert history[0][1] == pytest.approx(0.0)
    # step 1: momentum 0.5: 0 - 1.5
    np.testing.assert_allclose(history[1][0], [-1.5, 0, 0, 0])
    # step 2 (update): only the masks change: entry 0 dropped, entry 1 grown at 7; b frozen
    np.testing.assert_allclose(history[2][0], [0, 7, 0, 0])
    assert history[2][1] == pytest.approx(history[1][1])
    # step 3: the grown entry's momentum was reset: 7 - 1; b resumes its own momentum
    np.testing.assert_allclose(history[3][0], [0, 6, 0, 0])
    assert history[3][1] == pytest.approx(history[1][1] - (1 + 0.5 * 1.5))
    assert np.asarray(T.masks_of(state)["w"]).tolist() == [False, False, True, False]

    tx = _toy_transform(True)  # the inner step also runs at the update step (entries in both)
    p = {"w": jnp.array([1.0, 2.0, 3.0, 4.0]), "b": jnp.array([1.0])}
    state = tx.init(p)
    for _ in range(3):
        upd, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, upd)
    np.testing.assert_allclose(p["w"], [0, 7, 0, 0])
    assert float(p["b"][0]) == pytest.approx(-1.5 - 1.75)


def test_masked_transform_blames_the_right_argument():
    tx = _toy_transform(False)
    params = {"w": jnp.ones(4), "b": jnp.ones(1)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"`updates\['w'\]` must be of the shape"):
        tx.update({"w": jnp.ones(5), "b": jnp.ones(1)}, state, params)
    with pytest.raises(TypeError, match="`schedule` must be"):
        T.masked_transform(optax.sgd(1.0), lambda p, k: p, lambda *a: a[2], 3)

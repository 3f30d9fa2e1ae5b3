"""prune, rigl and SET against float64 numpy transcriptions of their reference code, step by step
over several update periods (issue 17 items 1-3).

* prune: TF-MOT ``PolynomialDecay`` + ``pruning_impl._update_mask`` (k = max(round(size * (1 -
  s)), 1) largest ``|w|``; updates at ``begin <= t <= end`` with ``(t - begin) % freq == 0``;
  dense before ``begin``), with the convention TF-MOT and sparsejax share on a separable loss:
  the optimizer step at a pruning step moves the kept weights by their gradient.
* rigl: jaxpruner ``BaseUpdater.wrap_optax`` with ``RigL`` (``skip_gradients=True``,
  ``is_sparse_gradients``, ``restart_inner_state`` on activated entries, params masked after each
  step), the mask update of rigl ``_get_update_op`` (floor(nnz * f) dropped by ``|w|``, as many
  grown by ``|grad|`` among the entries not kept), ``optax.cosine_decay_schedule(f0, end)``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import training as T


def topk_ref(score, k):
    out = np.zeros(score.size, bool)
    out[np.argsort(-score.ravel(), kind="stable")[:k]] = True
    return out.reshape(score.shape)


def tfmot_sparsity(t, final, initial, begin, end, power=3):
    p = min(1.0, max(0.0, (t - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


@pytest.mark.parametrize("initial", [0.0, 0.3])
def test_prune_matches_tfmot_polynomial_decay(initial):
    """begin_step=5 (not a multiple of the period), end_step=45, frequency 10: TF-MOT prunes at
    5, 15, 25, 35, 45 and reaches 0.80 exactly; with initial 0.3 the weights stay dense before 5."""
    begin, end, freq, final, lr, steps = 5, 45, 10, 0.8, 0.05, 52
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(10, 12)).astype(np.float32)
    target = rng.normal(size=(10, 12)).astype(np.float32)
    schedule = sj.schedules.polynomial(final, begin, end, initial=initial, frequency=freq)
    tx = T.prune(optax.sgd(lr), schedule, update_every=freq)  # begin / end from the schedule
    params, state = {"w": jnp.asarray(w0)}, None
    state = tx.init(params)
    step = jax.jit(tx.update)

    w, mask = w0.astype(np.float64), np.ones(w0.shape, bool)
    t_ref = target.astype(np.float64)
    for t in range(steps):
        g = {"w": params["w"] - target}  # separable loss 0.5 * ||w - target||^2
        upd, state = step(g, state, params)
        params = optax.apply_updates(params, upd)

        g_ref = w - t_ref
        if begin <= t <= end and (t - begin) % freq == 0:
            s = tfmot_sparsity(t, final, initial, begin, end)
            k = max(int(round(w.size * (1 - s))), 1)
            mask = topk_ref(np.where(mask, np.abs(w), -np.inf), k)
        w = np.where(mask, w - lr * g_ref, 0.0)

        np.testing.assert_array_equal(T.masks_of(state)["w"], mask, err_msg=f"step {t}")
        np.testing.assert_allclose(params["w"], w, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
        if t < begin:
            assert mask.all()  # dense until begin_step, whatever the initial sparsity
    assert (~mask).sum() == round(0.8 * w.size)  # the target is reached exactly


def rigl_ref_mask(mask, drop, grow, f):
    """rigl ``_get_update_op``, noise-free (regrowth of just-dropped entries allowed)."""
    n_ones = int(mask.sum())
    n_prune = int(np.float32(n_ones) * np.float32(f))
    mask1 = topk_ref(np.where(mask, drop, -np.inf), n_ones - n_prune)
    mask2 = topk_ref(np.where(mask1, -np.inf, grow), n_prune)
    return mask1 | mask2


@pytest.mark.parametrize("update_at_mask_step", [False, True])
def test_rigl_matches_jaxpruner_over_several_updates(update_at_mask_step):
    every, end, f0, lr, mom, steps = 4, 16, 0.3, 0.05, 0.9, 19
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(12, 10)).astype(np.float32)
    x = rng.normal(size=(16, 12)).astype(np.float32)
    y = rng.normal(size=(16, 10)).astype(np.float32)
    tx = T.rigl(optax.sgd(lr, momentum=mom), 0.7, end_step=end, update_every=every,
                drop_fraction=f0, key=jax.random.key(3), allocation="uniform",
                update_at_mask_step=update_at_mask_step)
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    grad = jax.jit(jax.grad(lambda p: 0.5 * jnp.sum((x @ p["w"] - y) ** 2)))

    w, mask = w0.astype(np.float64), np.asarray(T.masks_of(state)["w"])
    trace = np.zeros_like(w)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    changed_any = False
    for t in range(steps):
        g = grad(params)
        upd, state = step(g, state, params)
        params = optax.apply_updates(params, upd)

        g_ref = x64.T @ (x64 @ w - y64)
        if t % every == 0 and every <= t <= end:  # jaxpruner PeriodicSchedule (end inclusive)
            f = f0 * 0.5 * (1 + math.cos(math.pi * min(t, end) / end))
            new = rigl_ref_mask(mask, np.abs(w), np.abs(g_ref), f)
            changed_any |= bool((new != mask).any())
            trace[new & ~mask] = 0.0  # restart_inner_state on activated connections
            trace[mask & ~new] = 0.0  # sparsejax also zeroes dropped ones: never read again
            keep = new & mask
            mask = new
            if update_at_mask_step:  # the option: the inner step also runs on entries kept
                trace = mom * trace + np.where(keep, g_ref, 0.0)
                w = np.where(keep, w - lr * trace, 0.0)
            else:  # skip_gradients=True: only the masks change
                w = np.where(mask, w, 0.0)
        else:
            trace = mom * trace + np.where(mask, g_ref, 0.0)
            w = np.where(mask, w - lr * trace, 0.0)

        np.testing.assert_array_equal(T.masks_of(state)["w"], mask, err_msg=f"step {t}")
        np.testing.assert_allclose(params["w"], w, rtol=2e-4, atol=2e-5, err_msg=f"step {t}")
    assert changed_any
    assert mask.sum() == round(0.3 * w.size)


def test_set_constant_anneal_and_kept_weights_frozen_at_update():
    """SET: at an update step kept weights do not move; ``anneal='constant'`` (Mocanu's constant
    fraction) still swaps entries at ``end_step``, where the cosine fraction would be 0."""
    params0 = {"w": jax.random.normal(jax.random.key(1), (8, 8))}
    g = {"w": jnp.ones((8, 8))}
    changes = {}
    for anneal in ("constant",):
        tx = T.sparse_evolutionary(optax.adam(0.1), 0.5, end_step=9, update_every=3,
                                   drop_fraction=0.25, anneal=anneal, key=jax.random.key(0),
                                   allocation="uniform")
        params, state = params0, tx.init(params0)
        step = jax.jit(tx.update)
        for t in range(10):
            before, m_before = params["w"], T.masks_of(state)["w"]
            upd, state = step(g, state, params)
            params = optax.apply_updates(params, upd)
            m = T.masks_of(state)["w"]
            assert int(m.sum()) == 32
            changes[anneal, t] = int((m & ~m_before).sum())
            if t in (3, 6, 9):
                kept = np.asarray(m & m_before)
                np.testing.assert_array_equal(np.asarray(params["w"])[kept],
                                              np.asarray(before)[kept])
                assert changes[anneal, t] <= 32 // 4  # floor(nnz * f) dropped, some regrown
            else:
                assert changes[anneal, t] == 0
    assert changes["constant", 9] > 0

"""AdamS (CAST) against a float64 NumPy transcription of the reference optimizer step, and BDWP's
custom gradients against their definition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import masks, training

LR, B1, B2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.1


def nm_mask_np(w, n, m):
    """2:4 magnitude mask along axis 0 of a [K, N] kernel: the n largest |w| of each group of m
    (ties by lower index), by a stable argsort per group."""
    k, cols = w.shape
    g = np.abs(w).reshape(k // m, m, cols)
    order = np.argsort(-g, axis=1, kind="stable")
    keep = np.zeros_like(g, bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return keep.reshape(k, cols)


def reference_steps(w, b, grads, decays, mask_every):
    """The reference ``AdamW.step`` (adamw.py, masked branch for the kernel, plain branch and no
    weight decay for the bias), float64, one step per gradient pair."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    st = {"w": [np.zeros_like(w), np.zeros_like(w)], "b": [np.zeros_like(b), np.zeros_like(b)]}
    mask = None
    out = []
    for step, ((gw, gb), decay) in enumerate(zip(grads, decays)):
        if step % mask_every == 0:
            mask = nm_mask_np(w, 2, 4)
        t = step + 1
        bc1, bc2 = 1 - B1 ** t, 1 - B2 ** t
        # kernel: masked branch, weight-decay group
        w = w * (1 - LR * WD)
        exp_avg_loss_grad, exp_avg_sq = st["w"]
        exp_avg_loss_grad = exp_avg_loss_grad * B1 + (1 - B1) * gw
        decay_term = w * (~mask) * decay
        actual_update = exp_avg_loss_grad + decay_term
        exp_avg_sq = exp_avg_sq * B2 + (1 - B2) * actual_update * actual_update
        denom = np.sqrt(exp_avg_sq) / np.sqrt(bc2) + EPS
        w = w - LR / bc1 * actual_update / denom
        st["w"] = [exp_avg_loss_grad, exp_avg_sq]
        # bias: plain branch, no-decay group
        exp_avg, exp_avg_sq = st["b"]
        exp_avg = exp_avg * B1 + (1 - B1) * gb
        exp_avg_sq = exp_avg_sq * B2 + (1 - B2) * gb * gb
        b = b - LR / bc1 * exp_avg / (np.sqrt(exp_avg_sq) / np.sqrt(bc2) + EPS)
        st["b"] = [exp_avg, exp_avg_sq]
        out.append((w.copy(), b.copy(), mask.copy()))
    return out


def test_adams_matches_reference_step_by_step():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((8, 4)).astype(np.float32)
    b0 = rng.standard_normal(4).astype(np.float32)
    steps = 6
    grads = [(rng.standard_normal((8, 4)).astype(np.float32),
              rng.standard_normal(4).astype(np.float32)) for _ in range(steps)]
    schedule = training.cast_decay(0.5, increase_steps=3)  # large, to make the pull visible
    decays = [float(schedule(t)) for t in range(steps)]
    assert decays[:4] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
    ref = reference_steps(w0, b0, grads, decays, mask_every=2)
    tx = training.adams(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD, decay=schedule,
                        mask_every=2, where="kernel")
    params = {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for (gw, gb), (rw, rb, rmask) in zip(grads, ref):
        updates, state = step({"kernel": jnp.asarray(gw), "bias": jnp.asarray(gb)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_array_equal(state.masks["kernel"], rmask)
        assert state.masks["bias"] is None
        np.testing.assert_allclose(params["kernel"], rw, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(params["bias"], rb, rtol=2e-5, atol=2e-6)
    projected, pm = training.project(params, where="kernel")
    np.testing.assert_array_equal(pm["kernel"], nm_mask_np(np.asarray(params["kernel"]), 2, 4))
    np.testing.assert_array_equal(projected["kernel"], np.where(pm["kernel"], params["kernel"], 0))
    np.testing.assert_array_equal(projected["bias"], params["bias"])


def test_adams_errors():
    with pytest.raises(ValueError, match="`pattern` must be one of"):
        training.adams(1e-3, pattern="block")
    with pytest.raises(ValueError, match="`mask_every` must be >= 1"):
        training.adams(1e-3, mask_every=0)
    with pytest.raises(ValueError, match="`b2` must be"):
        training.adams(1e-3, b2=1.0)
    tx = training.adams(1e-3)
    with pytest.raises(ValueError, match="`params` must be given"):
        tx.update({"w": jnp.ones((4, 4))}, tx.init({"w": jnp.ones((4, 4))}))


def test_bdwp_gradients():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    w = jax.random.normal(k1, (8, 12))
    x = jax.random.normal(k2, (5, 8))
    g = jax.random.normal(k3, (5, 12))
    fwd, bwd = training.bdwp_masks(w, 2, 4)
    assert bool(masks.satisfies_nm(fwd, 2, 4, axis=0)) and bool(masks.satisfies_nm(bwd, 2, 4, axis=1))
    np.testing.assert_array_equal(fwd, masks.nm(jnp.abs(w), 2, 4, axis=0))
    y, vjp = jax.vjp(lambda x, w: training.bdwp_matmul(x, w), x, w)
    dx, dw = vjp(g)
    np.testing.assert_allclose(y, x @ (w * fwd), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g @ (w * bwd).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, x.T @ g, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`backward_mask` must be given together"):
        training.bdwp_matmul(x, w, fwd)
    with pytest.raises(ValueError, match="`x` must be of shape"):
        training.bdwp_matmul(x.T, w)

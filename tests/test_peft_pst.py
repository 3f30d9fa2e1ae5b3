"""PST (`sparsejax.peft.pst`): forward and straight-through gradients against a float64 numpy
transcription of alibaba/AliceMind ``S4/PST/pst/sparse.py`` (torch layout, then transposed), and
the cubic schedule against ``pst/utils.py`` ``schedule_sparsity_ratio``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsejax.peft import pst


def _reference(W, U, V, A, B, R, C, x, gy, sparsity, beta, a1, a2):
    """SparseLinear.forward and its backward (SparseBinarizer: identity), torch [out, in]."""
    weight = W + beta * U @ V
    scores = np.abs(weight) + a1 * A @ B + a2 * (R[:, None] + C[None, :])
    num_prune = int(scores.size * sparsity)
    mask = np.ones(scores.size)
    mask[np.argsort(scores.reshape(-1), kind="stable")[:num_prune]] = 0.0
    mask = mask.reshape(scores.shape)
    y = x @ (mask * weight).T
    g_mw = gy.T @ x                      # dL/d(masked weight), L = sum(y * gy)
    g_s = g_mw * weight                  # straight through the binariser
    g_w = g_mw * mask + g_s * np.sign(weight)
    grads = dict(u=beta * g_w @ V.T, v=beta * U.T @ g_w, a=a1 * g_s @ B.T, b=a1 * A.T @ g_s,
                 row=a2 * g_s.sum(1), col=a2 * g_s.sum(0))
    return y, mask, grads


def test_forward_mask_and_ste_gradients_match_float64_transcription():
    rng = np.random.default_rng(0)
    din, dout, r, rm = 9, 7, 3, 2
    W, U, V = rng.normal(size=(dout, din)), rng.normal(size=(dout, r)), rng.normal(size=(r, din))
    A, B = rng.normal(size=(dout, rm)), rng.normal(size=(rm, din))
    R, C = rng.normal(size=dout), rng.normal(size=din)
    x, gy = rng.normal(size=(4, din)), rng.normal(size=(4, dout))
    beta, a1, a2, sparsity = 0.5, 0.7, 0.3, 0.6
    y_ref, mask_ref, g_ref = _reference(W, U, V, A, B, R, C, x, gy, sparsity, beta, a1, a2)
    with jax.enable_x64(True):
        params = {"k": jnp.asarray(W.T)}
        f = pst.PstFactors(*(jnp.asarray(t) for t in (U.T, V.T, A.T, B.T, R, C)),
                           beta=beta, alpha1=a1, alpha2=a2)
        factors = {"k": f}

        def loss(fs):
            return jnp.sum(x @ pst.apply(params, fs, sparsity)["k"] * gy)

        @jax.jit
        def run(fs):  # one compile
            return (x @ pst.apply(params, fs, sparsity)["k"],
                    pst.masks(params, fs, sparsity)["k"], jax.grad(loss)(fs)["k"])

        y, m, g = run(factors)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m, mask_ref.T > 0)
    assert int(m.sum()) == 63 - int(63 * 0.6)
    for name, want in g_ref.items():
        np.testing.assert_allclose(getattr(g, name), want.T, rtol=1e-10, atol=1e-10,
                                   err_msg=name)


_SCORES = np.random.default_rng(4).permutation(35).reshape(5, 7).astype(np.float32)


@given(st.floats(0.0, 1.0))
def test_binarize_prunes_the_floor_of_size_times_sparsity_smallest(sparsity):
    m = np.asarray(pst.binarize(jnp.asarray(_SCORES), sparsity))
    pruned = int(np.floor(np.float32(35) * np.float32(sparsity)))
    assert set(np.unique(m)) <= {0.0, 1.0} and int(m.sum()) == 35 - pruned
    assert (m == (_SCORES >= pruned)).all()  # scores are 0..34: the `pruned` smallest go


def _schedule_reference(step, total_step, initial_warmup, final_warmup, initial, final):
    if step <= initial_warmup * total_step:
        return initial
    if step > (total_step - final_warmup * total_step):
        return final
    w0 = initial_warmup * total_step
    sched = (final_warmup + initial_warmup) * total_step
    mul = 1 - (step - w0) / (total_step - sched)
    return final + (initial - final) * mul ** 3


@pytest.mark.parametrize("warm", [(0.1, 0.2), (0.0, 0.0)])
def test_schedule_matches_reference(warm):
    s = pst.schedule(50, 0.9, initial=0.1, initial_warmup=warm[0], final_warmup=warm[1])
    got = jax.vmap(s)(jnp.arange(56))
    want = [_schedule_reference(t, 50, *warm, 0.1, 0.9) for t in range(56)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_training_moves_only_factors_and_merge_is_sparse():
    k1, kx = jax.random.split(jax.random.key(0))
    params = {"w": jax.random.normal(k1, (8, 6)), "b": jnp.zeros(6)}
    factors = pst.init(params, key=jax.random.key(1), where="w", weight_rank=2, mask_rank=2)
    assert factors["b"] is None and factors["w"].v.shape == (8, 2)
    assert pst.trainable_count(factors) == 2 * 6 + 8 * 2 + 2 * 6 + 8 * 2 + 6 + 8
    # at init the update is zero and the mask is |W|'s top-(1 - s)
    np.testing.assert_array_equal(pst.apply(params, factors, 0.0)["w"], params["w"])
    x = jax.random.normal(kx, (16, 8))
    y = x @ jax.random.normal(jax.random.key(2), (8, 6))
    sched = pst.schedule(20, 0.5)
    tx = optax.adam(1e-2)
    state = tx.init(factors)
    assert sum(a.size for a in jax.tree.leaves(state) if a.ndim) == 2 * pst.trainable_count(
        factors)

    @jax.jit
    def step(t, factors, state):
        loss = lambda f: jnp.mean((x @ pst.apply(params, f, sched(t))["w"] - y) ** 2)  # noqa: E731
        g = jax.grad(loss)(factors)
        u, state = tx.update(g, state, factors)
        return optax.apply_updates(factors, u), state

    for t in range(20):
        factors, state = step(t, factors, state)
    merged = pst.merge(params, factors, sched(20))
    assert int((merged["w"] != 0).sum()) == 48 - 24
    np.testing.assert_array_equal(merged["b"], params["b"])
    assert float(jnp.abs(factors["w"].v).max()) > 0


def test_bad_input():
    params = {"w": jnp.ones((4, 3))}
    with pytest.raises(ValueError, match="`weight_rank` must"):
        pst.init(params, key=jax.random.key(0), weight_rank=0)
    with pytest.raises(ValueError, match="`sparsity` must"):
        pst.binarize(jnp.ones(4), 1.5)
    with pytest.raises(ValueError, match="`initial_warmup` must"):
        pst.schedule(10, 0.5, initial_warmup=0.15)
    with pytest.raises(ValueError, match="factors"):
        pst.apply(params, {"w": None, "v": None}, 0.5)

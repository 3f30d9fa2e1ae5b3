"""Schedules against the Zhu & Gupta formula; scores against plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import masks, schedules, scores


def test_polynomial_formula_and_convention():
    sched = schedules.polynomial(0.9, begin_step=10, end_step=110, initial=0.1, power=3)
    for t in [0, 10, 11, 50, 109, 110, 500]:
        p = min(max((t - 10) / 100, 0), 1)
        assert float(sched(t)) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - p) ** 3, abs=1e-6)
    assert float(sched(10)) == pytest.approx(0.1)
    np.testing.assert_allclose(jax.jit(sched)(jnp.arange(0, 200, 7)),
                               [float(sched(int(t))) for t in range(0, 200, 7)], atol=1e-6)


def test_polynomial_frequency_holds_steps():
    sched = schedules.polynomial(0.8, 0, 100, frequency=10)
    assert float(sched(13)) == float(sched(10)) == float(sched(19))
    assert float(sched(20)) > float(sched(19))


def test_constant_one_shot():
    assert float(schedules.constant(0.3)(123)) == pytest.approx(0.3)
    s = schedules.one_shot(0.7, step=5)
    assert float(s(4)) == 0.0 and float(s(5)) == pytest.approx(0.7)


@pytest.mark.parametrize("call, match", [
    (lambda: schedules.polynomial(0.9, 10, 10), "`end_step` must be > begin_step=10; got 10"),
    (lambda: schedules.polynomial(1.1, 0, 10), r"`final` must be in \[0, 1\]"),
    (lambda: schedules.polynomial(0.5, 0, 10, frequency=0), "`frequency` must be >= 1"),
    (lambda: schedules.polynomial(0.5, 0, 10, power=0), "`power` must be > 0"),
    (lambda: schedules.one_shot(0.5, step=-1), "`step` must be >= 0"),
])
def test_schedule_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_scores_reference():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    g = rng.normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(scores.magnitude(w), np.abs(w))
    np.testing.assert_allclose(scores.saliency(w, g), np.abs(w * g), rtol=1e-6)
    x = rng.normal(size=(3, 5, 6)).astype(np.float32)  # [batch, tokens, in]
    norms = np.sqrt((x.reshape(-1, 6) ** 2).sum(0))
    np.testing.assert_allclose(scores.wanda(w, x, axis=0), np.abs(w) * norms[:, None], rtol=1e-5)
    np.testing.assert_allclose(scores.wanda(w.T, norms=jnp.asarray(norms), axis=1),
                               np.abs(w.T) * norms[None, :], rtol=1e-5)
    r = scores.random(jax.random.PRNGKey(0), jnp.asarray(w, jnp.bfloat16))
    assert r.shape == w.shape and r.dtype == jnp.float32


def test_wanda_per_output_mask_matches_reference_rule():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 4)).astype(np.float32)  # Flax [in, out]
    x = rng.normal(size=(32, 16)).astype(np.float32)
    s = np.asarray(scores.wanda(w, x, axis=0))
    m = np.asarray(masks.unstructured(jnp.asarray(s), 0.5, axis=0))
    for j in range(4):  # reference: per output, drop the half with the smallest metric
        order = np.argsort(s[:, j])
        expect = np.ones(16, bool)
        expect[order[:8]] = False
        np.testing.assert_array_equal(m[:, j], expect)


@pytest.mark.parametrize("call, err, match", [
    (lambda: scores.saliency(jnp.ones((2, 2)), jnp.ones((2, 3))), ValueError, r"`grad` must be of the shape of w \(2, 2\); got shape \(2, 3\)"),
    (lambda: scores.wanda(jnp.ones((4, 2)), jnp.ones((3, 5)), axis=0), ValueError, r"`norms` must be of shape \(4,\).*; got shape \(5,\)"),
    (lambda: scores.wanda(jnp.ones((4, 2)), axis=0), ValueError, "exactly one of them.*; got neither"),
    (lambda: scores.magnitude(jnp.ones(3, jnp.int32)), TypeError, "`w` must be a floating-point"),
])
def test_score_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_polynomial_reproduces_jaxpruner_with_update_frequency():
    # jaxpruner PolynomialSchedule: target * (1 - (1 - clip((t + 1 - start) / (end - start)))**3),
    # masks recomputed when t % freq == 0 and start <= t <= end (the recipe in the docstring)
    start, end, freq, target = 10, 110, 20, 0.8
    ours = schedules.polynomial(target, start, end)

    def reference(t):
        progress = min(max(t + 1 - start, 0), end - start) / (end - start)
        return target * (1 - (1 - progress) ** 3)

    held, held_ref = None, None
    for t in range(0, 130):
        if t % freq == 0 and start <= t <= end:
            held, held_ref = float(ours(t + 1)), reference(t)
        if held is not None:
            assert held == pytest.approx(held_ref, abs=1e-6)
    stepped = schedules.polynomial(target, start, end, frequency=freq)
    assert float(stepped(41)) != pytest.approx(reference(40))  # the naive step + 1 is not it

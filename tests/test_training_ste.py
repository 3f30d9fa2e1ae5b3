"""ste / sr_ste / mask_decay / structure decay, soup, iso_flop_width: against plain-jnp references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from sparsejax import training as T

P = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 4)), "b": jnp.linspace(-1, 1, 4)}
M = sj.compute_masks(P, "nm", n=2, m=4, axis=0)
X = jax.random.normal(jax.random.PRNGKey(1), (5, 8))


def loss(q):
    return jnp.sum(jnp.tanh(X @ q["w"] + q["b"]) ** 2)


def test_ste_gradient_is_dense_gradient_of_masked_forward():
    g = jax.grad(lambda q: loss(T.ste(q, M)))(P)
    ref = jax.grad(loss)(sj.apply_masks(P, M))
    jax.tree.map(np.testing.assert_array_equal, g, ref)
    assert np.any(np.asarray(g["w"])[~np.asarray(M["w"])] != 0)  # reaches the pruned weights
    np.testing.assert_array_equal(T.ste(P, M)["w"], sj.apply_masks(P, M)["w"])


@pytest.mark.parametrize("decay", [2e-4, 0.5])
def test_sr_ste_adds_decay_times_pruned_weights(decay):
    g = jax.grad(lambda q: loss(T.sr_ste(q, M, decay)))(P)
    ref = jax.grad(loss)(sj.apply_masks(P, M))
    pull = jnp.where(M["w"], 0.0, jnp.float32(decay) * P["w"])
    np.testing.assert_array_equal(g["w"], ref["w"] + pull)
    np.testing.assert_array_equal(g["b"], ref["b"])
    g_jit = jax.jit(jax.grad(lambda q: loss(T.sr_ste(q, M, decay))))(P)
    np.testing.assert_allclose(g_jit["w"], ref["w"] + pull, rtol=1e-5, atol=1e-7)


def test_sr_ste_mask_function_reselects_from_dense_weights():
    fn = lambda q: sj.compute_masks(q, "nm", n=2, m=4, axis=0)
    q = {"w": -P["w"] * jnp.arange(1.0, 33.0).reshape(8, 4), "b": P["b"]}
    out = jax.jit(lambda q: T.sr_ste(q, fn))(q)
    np.testing.assert_array_equal(out["w"], sj.apply_masks(q, fn(q))["w"])
    assert bool(sj.masks.satisfies_nm(out["w"], 2, 4, axis=0))
    batched = jax.vmap(lambda q: T.ste(q, M))(jax.tree.map(lambda x: jnp.stack([x, 2 * x]), P))
    np.testing.assert_array_equal(batched["w"][1], 2 * sj.apply_masks(P, M)["w"])


def test_mask_decay_forward_and_gradient():
    """Reference (progressive_gradient_flow ``LinearDecay``): forward ``W * (M + (1 - M) * f)``,
    backward ``grad_output`` unchanged (the decayed weights get the full gradient)."""
    for f in (0.25, 0.0):
        out = T.mask_decay(P, M, f)
        np.testing.assert_array_equal(out["w"], jnp.where(M["w"], P["w"], f * P["w"]))
        g = jax.grad(lambda q, f=f: loss(T.mask_decay(q, M, f)))(P)
        inner = jax.grad(loss)(out)  # grad_output: the gradient at the decayed weights
        np.testing.assert_allclose(g["w"], inner["w"], rtol=1e-6)
        assert np.all(np.asarray(g["w"])[~np.asarray(M["w"])] != 0)  # flows at f = 0 too
        # the option: differentiate the forward as written (f times the gradient)
        g = jax.grad(lambda q, f=f: loss(T.mask_decay(q, M, f, scale_gradient=True)))(P)
        np.testing.assert_allclose(g["w"], jnp.where(M["w"], inner["w"], f * inner["w"]),
                                   rtol=1e-6)


def test_ste_family_rejects_float_masks_and_bad_decay():
    fm = jax.tree.map(lambda m: None if m is None else m.astype(jnp.float32), M)
    for fn in (T.ste, lambda p, m: T.sr_ste(p, m), lambda p, m: T.mask_decay(p, m, 0.5)):
        with pytest.raises(TypeError, match=r"`masks\['w'\]` must be a bool array"):
            fn(P, fm)
    with pytest.raises(ValueError, match="`decay` must be >= 0"):
        T.sr_ste(P, M, -1.0)
    with pytest.raises(ValueError, match="`decay` must be >= 0"):
        T.sr_ste(P, M, jnp.float32(-1.0))
    with pytest.raises(ValueError, match="`factor` must be in"):
        T.mask_decay(P, M, 1.5)


def test_decay_factor():
    np.testing.assert_allclose(T.decay_factor(1000, 2e-4), 0.8, rtol=1e-6)
    assert float(T.decay_factor(10 ** 6, 2e-4)) == 0.0
    np.testing.assert_allclose(T.decay_factor(1000, 2e-4, "exponential"), np.exp(-0.2), rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        T.decay_factor(0, kind="cosine")


def test_structure_decay_ladder_and_masks():
    assert T.structure_decay_ladder(2, 4) == (3, 2)
    assert T.structure_decay_ladder(1, 8) == (7, 4, 2, 1)
    assert T.structure_decay_ladder(2, 16) == (15, 8, 4, 2)
    with pytest.raises(ValueError, match="n"):
        T.structure_decay_ladder(4, 4)
    traces = []

    def masks_at(q, s):
        traces.append(None)
        return T.structure_decay_masks(q, s, n=1, m=4, axis=0, interval=10)

    fn = jax.jit(masks_at)
    for step, n in ((0, 3), (9, 3), (10, 2), (25, 1), (999, 1)):
        m = fn(P, step)
        ref = sj.masks.nm(jnp.abs(P["w"]), n, 4, axis=0)
        np.testing.assert_array_equal(m["w"], ref)
        assert m["b"] is None
    assert len(traces) == 1  # the step is traced, not a static argument


def test_mask_structure_mismatch():
    with pytest.raises(ValueError, match="masks"):
        T.ste(P, {"w": M["w"]})


def test_soup_keeps_mask_exactly():
    models = [sj.apply_masks(jax.tree.map(lambda x, i=i: x * (i + 1) + i, P), M) for i in range(3)]
    out = T.soup(models, M)
    ref = jax.tree.map(lambda *xs: sum(xs) / 3, *models)
    np.testing.assert_allclose(out["w"], ref["w"], rtol=1e-6)
    np.testing.assert_allclose(out["b"], ref["b"], rtol=1e-6)
    assert np.all(np.asarray(out["w"])[~np.asarray(M["w"])] == 0)
    out2 = T.soup(models, [M, M, M])
    jax.tree.map(np.testing.assert_array_equal, out, out2)
    other = sj.compute_masks(P, sparsity=0.5)
    with pytest.raises(ValueError, match="masks"):
        T.soup(models, [M, other, M])
    with pytest.raises(ValueError, match="models"):
        T.soup([], M)


def test_iso_flop_width():
    assert T.iso_flop_width(256, 0.0) == 256
    assert T.iso_flop_width(256, 0.75) == 512
    assert T.iso_flop_width(100, 0.5) == round(100 * 2 ** 0.5)
    assert T.iso_flop_width(100, 0.5, multiple_of=32) == 128
    # Sparse-IFT truncates int(width * k): 256 * sqrt(10) = 809.56
    assert T.iso_flop_width(256, 0.9) == 809
    assert T.iso_flop_width(256, 0.9, rounding="nearest") == 810
    assert T.iso_flop_width(100, 0.5, multiple_of=32, rounding="nearest") == 128
    assert T.iso_flop_width(130, 0.5, multiple_of=32) == 160  # 183.8 = 5.74 * 32
    assert T.iso_flop_width(130, 0.5, multiple_of=32, rounding="nearest") == 192
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        T.iso_flop_width(130, 0.5, rounding="up")
    w = T.iso_flop_width(1000, 0.9)
    assert abs(w * w * 0.1 - 1000 * 1000) / 1e6 < 1e-2  # FLOPs match the dense layer's
    with pytest.raises(ValueError, match="sparsity"):
        T.iso_flop_width(100, 1.0)
    with pytest.raises(ValueError, match="width"):
        T.iso_flop_width(0, 0.5)

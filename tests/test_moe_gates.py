"""COMET tree gating and MoE-X sparsity-aware routing logits against direct references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import moe


def np_smooth_step(z, gamma):
    return np.where(z <= -gamma / 2, 0.0, np.where(z >= gamma / 2, 1.0,
                    -2 * z ** 3 / gamma ** 3 + 3 * z / (2 * gamma) + 0.5))


def tree_reference(params, x, gamma):
    """Recursive walk of each heap-numbered tree (the COMET layer's recursion), float64."""
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    x = np.asarray(x, np.float64)
    k, e, _ = p["leaf_w"].shape
    t = x.shape[0]
    reach = np.zeros((t, k, e))

    def walk(j, node, prob):
        if node >= e - 1:
            reach[:, j, node - (e - 1)] = prob
            return
        left = np_smooth_step(x @ p["split_w"][j, node] + p["split_b"][j, node], gamma)
        walk(j, 2 * node + 1, prob * left)
        walk(j, 2 * node + 2, prob * (1 - left))

    for j in range(k):
        walk(j, 0, np.ones(t))
    a = np.einsum("td,kld->tkl", x, p["leaf_w"]) + p["leaf_b"]
    w = reach * np.exp(a - a.max())
    g = w / w.sum(axis=(1, 2), keepdims=True)
    return g.sum(1), reach


def test_smooth_step_formula():
    z = jnp.linspace(-1.5, 1.5, 31)
    np.testing.assert_allclose(moe.smooth_step(z, 2.0), np_smooth_step(np.asarray(z), 2.0),
                               atol=1e-6)


@pytest.mark.parametrize("e, k", [(5, 2), (1, 1)])
def test_comet_gates_match_tree_walk(e, k):
    kp, kx = jax.random.split(jax.random.key(e))
    params = moe.comet_init(kp, 6, e, k)
    params["split_w"] = params["split_w"] * 100  # a mix of hard and soft splits
    x = jax.random.normal(kx, (16, 6))
    g, reach = moe.comet_gates(params, x, gamma=1.0)
    g_ref, reach_ref = tree_reference(params, x, 1.0)
    np.testing.assert_allclose(reach, reach_ref, atol=1e-5)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(reach, -1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(g, -1), 1.0, atol=1e-5)


def test_comet_hard_trees_select_exactly_k():
    e, k = 8, 2
    kp, kx = jax.random.split(jax.random.key(3))
    params = moe.comet_init(kp, 6, e, k)
    params["split_w"] = params["split_w"] * 1e4  # every split outside the smooth band
    x = jax.random.normal(kx, (32, 6))
    g, reach = moe.comet_gates(params, x)
    assert set(np.unique(np.asarray(reach))) <= {0.0, 1.0}
    assert int(jnp.max(jnp.sum(g > 0, -1))) <= k  # cardinality constraint ||g||_0 <= k
    r = moe.comet_routing(params, x)
    assert r.slots == k
    assert all(len(set(row)) == k for row in np.asarray(r.expert_index))  # exactly k experts
    np.testing.assert_allclose(r.gates(), g, atol=1e-6)  # routing reproduces the hard gate
    np.testing.assert_allclose(jnp.sum(r.combine_weights, -1), 1.0, atol=1e-6)


def test_comet_gates_are_differentiable():
    params = moe.comet_init(jax.random.key(5), 6, 4, 2)
    x = jax.random.normal(jax.random.key(6), (12, 6))
    c = jax.random.normal(jax.random.key(7), (12, 4))
    grads = jax.grad(lambda p: jnp.sum(moe.comet_gates(p, x)[0] * c))(params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in grads.values())
    assert float(jnp.abs(grads["leaf_w"]).max()) > 0 and float(jnp.abs(grads["split_w"]).max()) > 0


def test_comet_errors():
    with pytest.raises(ValueError, match="`k` must be <="):
        moe.comet_init(jax.random.key(0), 4, 2, 3)
    params = moe.comet_init(jax.random.key(0), 4, 4, 2)
    with pytest.raises(ValueError, match="d_model"):
        moe.comet_gates(params, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="gamma"):
        moe.comet_gates(params, jnp.zeros((3, 4)), gamma=0.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.comet_routing(params, jnp.zeros((3, 4)), capacity_factor=0)
    with pytest.raises(TypeError, match="comet_init"):
        moe.comet_gates({"w": 1}, jnp.zeros((3, 4)))

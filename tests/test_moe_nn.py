"""The NNX and Equinox MoE layers are thin over `sparsejax.moe.moe_apply`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import moe
from sparsejax.nn import MoE
from sparsejax.nn import eqx as sjeqx


@pytest.mark.parametrize("router, extra", [
    ("top_k", {}), ("expert_choice", {}), ("comet", {}),
    ("top_k", dict(gated=True, num_shared_experts=2, shared_gate=True, expert_bias=True)),
])
def test_nnx_and_equinox_match_moe_apply(router, extra):
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=2, router=router,
                        capacity_factor=1.5, tile=8, **extra)
    x = jax.random.normal(jax.random.key(1), (2, 6, 8))
    layer = MoE(cfg, rngs=nnx.Rngs(0))
    y, aux = layer(x)
    y_ref, aux_ref = moe.moe_apply(layer.params(), x, cfg)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    assert y.shape == x.shape
    np.testing.assert_allclose(aux.load_balancing_loss, aux_ref.load_balancing_loss)
    e = sjeqx.MoE(cfg, key=jax.random.key(0))
    y2, aux2 = e(x)
    y2_ref, _ = moe.moe_apply(e.params, x, cfg)
    np.testing.assert_allclose(y2, y2_ref, atol=1e-6)
    assert int(jnp.sum(aux2.expert_load)) > 0


def test_nnx_training_step_updates_router_and_experts():
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=2, tile=8)
    layer = MoE(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(2), (32, 8))
    target = jnp.sin(x)

    @nnx.jit
    def step(layer, opt):
        def loss_fn(layer):
            y, aux = layer(x)
            return jnp.mean((y - target) ** 2) + 1e-2 * aux.load_balancing_loss

        loss, grads = nnx.value_and_grad(loss_fn)(layer)
        opt.update(layer, grads)
        return loss

    before = layer.router[...].copy()
    n_leaves = len(jax.tree.leaves(nnx.state(layer)))
    losses = [float(step(layer, opt)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert float(jnp.abs(layer.router[...] - before).max()) > 0
    assert len(jax.tree.leaves(nnx.state(layer))) == n_leaves  # nothing sown, nothing grows


def test_nnx_jit_traces_once_and_sows_nothing():
    """Issue 18.8: calling the layer as the docs show under nnx.jit neither retraces nor grows
    the module state."""
    layer = MoE(moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=2, tile=8),
                rngs=nnx.Rngs(0))
    traces = []

    @nnx.jit
    def fwd(layer, x):
        traces.append(1)
        y, aux = layer(x)
        return y, aux.load_balancing_loss

    x = jnp.ones((4, 8))
    for _ in range(4):
        fwd(layer, x)
    assert len(traces) == 1
    assert not jax.tree.leaves(nnx.state(layer, nnx.Intermediate))


def test_nnx_expert_bias_is_not_trained_and_updates():
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=1, expert_bias=True,
                        score="sigmoid")
    layer = MoE(cfg, rngs=nnx.Rngs(0))
    assert "expert_bias" not in nnx.state(layer, nnx.Param)  # a BatchStat: not trained
    _, aux = layer(jax.random.normal(jax.random.key(5), (16, 8)))
    layer.update_bias(aux.expert_load, 0.1)
    load = np.asarray(aux.expert_load)
    np.testing.assert_allclose(layer.expert_bias[...], -0.1 * np.sign(load - load.mean()))


def test_equinox_grad():
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=1, backend="einsum",
                        capacity_factor=2.0)
    layer = sjeqx.MoE(cfg, key=jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (16, 8))

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(layer):
        y, aux = layer(x)
        return jnp.sum(y ** 2) + aux.router_z_loss

    g = grads(layer)
    assert float(jnp.abs(g.params["router"]).max()) > 0
    assert float(jnp.abs(g.params["w1"]).max()) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=5), "`k` must be <="),
    (dict(router="hash"), "router"),
    (dict(activation="tanh"), "activation"),
    (dict(backend="dense"), "backend"),
    (dict(num_groups=3), "num_groups"),
    (dict(renormalize="yes"), "renormalize"),
    (dict(score="relu"), "score"),
    (dict(capacity_factor=0.0), "capacity_factor"),
    (dict(d_model=0), "d_model"),
])
def test_config_errors(kwargs, match):
    base = dict(d_model=8, d_ff=16, num_experts=4)
    with pytest.raises(ValueError, match=match):
        moe.MoEConfig(**{**base, **kwargs})


def test_moe_apply_rejects_wrong_width():
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4)
    params = moe.init_moe(jax.random.key(0), cfg)
    with pytest.raises(ValueError, match="d_model"):
        moe.moe_apply(params, jnp.zeros((3, 7)), cfg)

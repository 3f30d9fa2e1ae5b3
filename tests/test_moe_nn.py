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


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "comet", "moex"])
def test_nnx_and_equinox_match_moe_apply(router):
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=2, router=router,
                        capacity_factor=1.5, tile=8,
                        activation="relu" if router == "moex" else "gelu")
    x = jax.random.normal(jax.random.key(1), (2, 6, 8))
    layer = MoE(cfg, rngs=nnx.Rngs(0))
    y = layer(x)
    aux = nnx.pop(layer, nnx.Intermediate)["aux"]
    y_ref, aux_ref = moe.moe_apply(layer.params(), x, cfg)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    assert y.shape == x.shape
    np.testing.assert_allclose(aux[0].load_balancing_loss, aux_ref.load_balancing_loss)
    e = sjeqx.MoE(cfg, key=jax.random.key(0))
    y2, aux2 = e(x)
    y2_ref, _ = moe.moe_apply({"router": e.router, "w1": e.w1, "w2": e.w2}, x, cfg)
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
            y, aux = layer.apply_with_aux(x)
            return jnp.mean((y - target) ** 2) + 1e-2 * aux.load_balancing_loss

        loss, grads = nnx.value_and_grad(loss_fn)(layer)
        opt.update(layer, grads)
        return loss

    before = layer.router[...].copy()
    losses = [float(step(layer, opt)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert float(jnp.abs(layer.router[...] - before).max()) > 0


def test_equinox_grad():
    cfg = moe.MoEConfig(d_model=8, d_ff=16, num_experts=4, k=1, implementation="einsum",
                        capacity_factor=2.0)
    layer = sjeqx.MoE(cfg, key=jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (16, 8))

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(layer):
        y, aux = layer(x)
        return jnp.sum(y ** 2) + aux.router_z_loss

    g = grads(layer)
    assert float(jnp.abs(g.router).max()) > 0 and float(jnp.abs(g.w1).max()) > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=5), "`k` must be <="),
    (dict(router="hash"), "router"),
    (dict(activation="tanh"), "activation"),
    (dict(implementation="dense"), "implementation"),
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

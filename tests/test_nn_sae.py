"""The Flax NNX and Equinox sparse autoencoder modules: a training step matches the functional core."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import nn
from sparsejax.dictionary import sae as S


def test_nnx_module_step_keeps_unit_decoder_and_updates_state():
    cfg = S.SAEConfig(8, 24, activation="batch_topk", k=3)
    model = nn.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32))
    np.testing.assert_allclose(model.encode(x), S.encode(model.params(), x, cfg))
    opt = nnx.Optimizer(model, optax.chain(S.remove_decoder_parallel_grads(), optax.adam(1e-2)),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        (_, metrics), grads = nnx.value_and_grad(lambda m: m.loss(x), has_aux=True)(model)
        opt.update(model, grads)
        model.normalize_decoder_()
        return metrics

    # the optax transform finds W_dec inside an NNX state and removes the parallel part
    grads = nnx.jit(nnx.grad(lambda m: m.loss(x)[0]))(nnx.clone(model))
    params = nnx.state(model, nnx.Param)
    tx = S.remove_decoder_parallel_grads()
    upd, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(jnp.sum(grads["W_dec"][...] * model.W_dec[...], 1)).max()) > 1e-3
    np.testing.assert_allclose(jnp.sum(upd["W_dec"][...] * model.W_dec[...], 1), 0, atol=1e-5)
    w0 = np.asarray(model.W_dec[...])
    for _ in range(3):
        metrics = step(model, opt, x)
    assert int(model.step[...]) == 3 and float(model.threshold[...]) > 0
    assert not np.allclose(np.asarray(model.W_dec[...]), w0)
    np.testing.assert_allclose(jnp.linalg.norm(model.W_dec[...], axis=1), 1.0, rtol=1e-5)
    assert float(metrics["l0"]) == 3.0
    assert model(x, inference=True).shape == x.shape
    with pytest.raises(TypeError, match="config must be an SAEConfig"):
        nn.SparseAutoencoder({"d_in": 8}, rngs=nnx.Rngs(0))


def test_eqx_module_step_matches_functional():
    cfg = S.SAEConfig(8, 24, activation="jumprelu")
    model = nn.eqx.SparseAutoencoder(cfg, key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(32, 8)).astype(np.float32))
    np.testing.assert_allclose(model(x), S.forward(model.params, x, cfg)[0])
    tx = optax.chain(S.remove_decoder_parallel_grads(), optax.sgd(0.05))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    state = S.init_state(cfg)

    @eqx.filter_jit
    def step(model, opt_state, state, x):
        (_, out), grads = eqx.filter_value_and_grad(lambda m: m.loss(x, state),
                                                    has_aux=True)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates).normalize_decoder(), opt_state, out.state

    new, _, state = step(model, opt_state, state, x)
    assert int(state.step) == 1
    np.testing.assert_allclose(jnp.linalg.norm(new.params["W_dec"], axis=1), 1.0, rtol=1e-5)
    # the same step through the functional core
    @jax.jit  # one compiled program (eager, every op of the step compiled on its own)
    def reference(params):
        grads = jax.grad(lambda p: S.sae_loss(p, x, cfg, S.init_state(cfg))[0])(params)
        upd, _ = tx.update(grads, tx.init(params), params)
        return S.normalize_decoder(optax.apply_updates(params, upd))

    ref = reference(model.params)
    for name in ref:
        np.testing.assert_allclose(new.params[name], ref[name], rtol=1e-5, atol=1e-6)


def test_modules_pass_grad_to_gradient_topk_and_run_matryoshka():
    cfg = S.SAEConfig(d_in=6, d_sae=24, activation="gradient_topk", k=3, gradient_beta=2.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 6))
    grad = jax.random.normal(jax.random.PRNGKey(2), (5, 6))
    nnx_model = nn.SparseAutoencoder(cfg, rngs=nnx.Rngs(0))
    eqx_model = nn.eqx.SparseAutoencoder(cfg, key=jax.random.PRNGKey(0))
    for model in (nnx_model, eqx_model):
        params = model.params() if callable(model.params) else model.params
        want = S.encode(params, x, cfg, grad=grad)
        np.testing.assert_array_equal(model.encode(x, grad=grad), want)
    loss, _ = nnx_model.loss(x, grad=grad)
    want, _ = S.sae_loss(nnx_model.params(), x, cfg, S.init_state(cfg), grad=grad)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    mcfg = S.SAEConfig(d_in=6, d_sae=24, activation="batch_topk", k=3, matryoshka_widths=(6,))
    loss, out = nn.eqx.SparseAutoencoder(mcfg, key=jax.random.PRNGKey(0)).loss(
        x, S.init_state(mcfg))
    assert out.metrics["prefix_mse"].shape == (2,)

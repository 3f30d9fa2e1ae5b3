"""Matryoshka BatchTopK and gradient-aware TopK (g-SAE): transcriptions and SAELens parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.dictionary import sae as S


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _params(config, seed=0, scale=0.3):
    params = S.init_sae(jax.random.key(seed), config, dtype=jnp.float64)
    rng = np.random.default_rng(seed)
    params["b_enc"] = jnp.asarray(scale * rng.normal(size=config.d_sae))
    params["b_dec"] = jnp.asarray(scale * rng.normal(size=config.d_in))
    return params


def _matryoshka_reference(params, x, widths, k):
    """Float64 numpy transcription: BatchTopK codes, one decoder product per prefix (SAELens)."""
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    x = np.asarray(x, np.float64)
    acts = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0.0)
    flat = acts.reshape(-1)
    keep = np.argsort(-flat, kind="stable")[: k * x.shape[0]]
    codes = np.zeros_like(flat)
    codes[keep] = flat[keep]
    codes = codes.reshape(acts.shape)
    losses = []
    for w in (*widths, p["W_dec"].shape[0]):
        recon = codes[:, :w] @ p["W_dec"][:w] + p["b_dec"]
        losses.append(np.mean(np.sum((x - recon) ** 2, axis=-1)))
    return sum(losses), np.array(losses)


def _matryoshka_loss_jnp(params, x, widths, k):
    """The same loss in jnp with a separate matmul per prefix, for reference gradients."""
    acts = jax.nn.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
    codes = S.batch_topk(acts, k)
    total = 0.0
    for w in (*widths, params["W_dec"].shape[0]):
        recon = codes[:, :w] @ params["W_dec"][:w] + params["b_dec"]
        total = total + jnp.mean(jnp.sum((x - recon) ** 2, axis=-1))
    return total


@pytest.mark.parametrize("widths", [(4,), (3, 8, 20)])
def test_matryoshka_loss_and_grads_match_transcription(x64, widths):
    config = S.SAEConfig(d_in=6, d_sae=24, activation="batch_topk", k=3,
                         matryoshka_widths=widths)
    params = _params(config)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(10, 6)))
    loss, out = S.sae_loss(params, x, config, S.init_state(config))
    want, prefix = _matryoshka_reference(params, x, widths, 3)
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(out.metrics["prefix_mse"], prefix, rtol=1e-12)
    np.testing.assert_allclose(out.metrics["mse"], prefix[-1], rtol=1e-12)
    grads = jax.grad(lambda p: S.sae_loss(p, x, config, S.init_state(config))[0])(params)
    ref = jax.grad(_matryoshka_loss_jnp)(params, x, widths, 3)
    for name in ref:
        np.testing.assert_allclose(grads[name], ref[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_matryoshka_prefix_reconstructions_are_nested_decodes(x64):
    config = S.SAEConfig(d_in=5, d_sae=16, activation="batch_topk", k=4,
                         matryoshka_widths=(2, 6, 16))
    assert config.matryoshka_widths == (2, 6) and config.group_sizes == (2, 4, 10)
    params = _params(config, seed=3)
    codes = jax.nn.relu(jnp.asarray(np.random.default_rng(2).normal(size=(7, 16))))
    prefixes = S.prefix_reconstructions(params, codes, config)
    for g, w in enumerate((2, 6, 16)):
        masked = codes.at[:, w:].set(0.0)
        np.testing.assert_allclose(prefixes[g], S.decode(params, masked, config), rtol=1e-12)


def test_matryoshka_with_dead_latents_adds_auxk(x64):
    config = S.SAEConfig(d_in=6, d_sae=24, activation="batch_topk", k=3,
                         matryoshka_widths=(6,), dead_tokens=0)
    params = _params(config)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(10, 6)))
    state = S.init_state(config)._replace(tokens_since_fired=jnp.ones(24, jnp.int32))
    loss, out = S.sae_loss(params, x, config, state)
    plain, _ = _matryoshka_reference(params, x, (6,), 3)
    assert out.metrics["aux"] > 0
    np.testing.assert_allclose(loss, plain + config.aux_coefficient * out.metrics["aux"],
                               rtol=1e-12)


def test_matryoshka_config_checks():
    with pytest.raises(ValueError, match="strictly increasing"):
        S.SAEConfig(d_in=4, d_sae=16, activation="batch_topk", k=2, matryoshka_widths=(8, 4))
    with pytest.raises(ValueError, match="activation='batch_topk'"):
        S.SAEConfig(d_in=4, d_sae=16, activation="topk", k=2, matryoshka_widths=(8,))
    with pytest.raises(ValueError, match="matryoshka_widths"):
        S.SAEConfig(d_in=4, d_sae=16, activation="batch_topk", k=2, matryoshka_widths=(0, 8))
    with pytest.raises(TypeError, match="tuple"):
        S.SAEConfig(d_in=4, d_sae=16, activation="batch_topk", k=2, matryoshka_widths=[8])


def _gsae_reference(pre, grad, w_dec, k, beta):
    pre, grad, w_dec = (np.asarray(a, np.float64) for a in (pre, grad, w_dec))
    z = np.maximum(pre, 0.0)
    score = z + beta * z * np.abs(grad @ w_dec.T)
    out = np.zeros_like(z)
    for i in range(z.shape[0]):
        top = np.argsort(-score[i], kind="stable")[:k]
        out[i, top] = z[i, top]
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_gradient_topk_matches_rule(beta):
    rng = np.random.default_rng(5)
    pre = jnp.asarray(rng.normal(size=(12, 20)), jnp.float32)
    grad = jnp.asarray(rng.normal(size=(12, 7)), jnp.float32)
    w_dec = jnp.asarray(rng.normal(size=(20, 7)), jnp.float32)
    got = S.gradient_topk(pre, grad, w_dec, 5, beta=beta)
    np.testing.assert_allclose(got, _gsae_reference(pre, grad, w_dec, 5, beta), rtol=1e-6)
    if beta == 0.0:
        np.testing.assert_array_equal(got, S.topk(pre, 5))
    else:  # the gradient term changes the selection on these inputs
        assert not np.array_equal(got, S.topk(pre, 5))


def test_gradient_topk_sae_beta_zero_is_topk_and_needs_grad():
    g = S.SAEConfig(d_in=6, d_sae=24, activation="gradient_topk", k=3, gradient_beta=0.0)
    t = S.SAEConfig(d_in=6, d_sae=24, activation="topk", k=3)
    params = S.init_sae(jax.random.key(0), g)
    x = jax.random.normal(jax.random.key(1), (9, 6))
    grad = jax.random.normal(jax.random.key(2), (9, 6))
    np.testing.assert_array_equal(S.encode(params, x, g, grad=grad), S.encode(params, x, t))
    lg, _ = S.sae_loss(params, x, g, S.init_state(g), grad=grad)
    lt, _ = S.sae_loss(params, x, t, S.init_state(t))
    np.testing.assert_allclose(lg, lt, rtol=1e-6)
    gg = jax.grad(lambda p: S.sae_loss(p, x, g, S.init_state(g), grad=grad)[0])(params)
    gt = jax.grad(lambda p: S.sae_loss(p, x, t, S.init_state(t))[0])(params)
    for name in gt:
        np.testing.assert_allclose(gg[name], gt[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="needs `grad`"):
        S.encode(params, x, g)
    with pytest.raises(ValueError, match="only used by activation='gradient_topk'"):
        S.encode(params, x, t, grad=grad)
    with pytest.raises(ValueError, match="`w_dec` must have shape"):
        S.gradient_topk(x @ params["W_enc"], grad, params["W_dec"].T, 3)


def test_matryoshka_matches_saelens(x64):
    torch = pytest.importorskip("torch")
    mat = pytest.importorskip("sae_lens.saes.matryoshka_batchtopk_sae")
    from sae_lens.saes.sae import TrainStepInput

    d_in, d_sae, k, widths = 8, 32, 4, (4, 12)
    cfg = mat.MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=[*widths, d_sae],
        rescale_acts_by_decoder_norm=False, aux_loss_coefficient=1.0, dtype="float64")
    ref = mat.MatryoshkaBatchTopKTrainingSAE(cfg)
    config = S.SAEConfig(d_in=d_in, d_sae=d_sae, activation="batch_topk", k=k,
                         matryoshka_widths=widths)
    params = _params(config, seed=7)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(ref, name).copy_(torch.from_numpy(np.array(params[name])))
    x = np.random.default_rng(8).normal(size=(16, d_in))
    fields = {f.name for f in dataclasses.fields(TrainStepInput)}
    extra = {"is_logging_step": False} if "is_logging_step" in fields else {}
    out = ref.training_forward_pass(TrainStepInput(
        sae_in=torch.from_numpy(x), coefficients={}, dead_neuron_mask=None, n_training_steps=0,
        **extra))
    out.loss.backward()
    loss, _ = S.sae_loss(params, jnp.asarray(x), config, S.init_state(config))
    grads = jax.grad(lambda p: S.sae_loss(p, jnp.asarray(x), config,
                                          S.init_state(config))[0])(params)
    np.testing.assert_allclose(loss, out.loss.item(), rtol=1e-5)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(grads[name], getattr(ref, name).grad.numpy(),
                                   rtol=1e-5, atol=1e-7, err_msg=name)


def test_train_sae_logs_matryoshka_prefix_mse():
    config = S.SAEConfig(d_in=6, d_sae=24, activation="batch_topk", k=3,
                         matryoshka_widths=(4, 12))
    x = jax.random.normal(jax.random.key(0), (64, 6))
    result = S.train_sae(jax.random.key(1), x, config, steps=3, batch_size=32, progress=False)
    assert result.history["prefix_mse"].shape == (3, 3)
    assert result.history["loss"].shape == (3,)

"""SAE training: planted-dictionary recovery, train_sae, the demo stage (the NNX and Equinox
modules are tested in test_nn_sae.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.dictionary import sae as S


def _planted(seed=0, d=32, n_atoms=64, k=3, n=8192, noise=0.01):
    """k-sparse non-negative combinations of unit ground-truth atoms plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    support = np.argsort(rng.random((n, n_atoms)), axis=1)[:, :k]
    coef = np.zeros((n, n_atoms))
    np.put_along_axis(coef, support, rng.uniform(0.5, 1.5, (n, k)), axis=1)
    x = coef @ atoms + noise * rng.normal(size=(n, d))
    return atoms, jnp.asarray(x, jnp.float32)


def test_topk_sae_recovers_planted_dictionary():
    atoms, x = _planted()
    cfg = S.SAEConfig(32, 128, activation="topk", k=3, dead_tokens=20_000)
    result = S.train_sae(jax.random.PRNGKey(0), x, cfg, steps=400, batch_size=256,
                         learning_rate=5e-3, b_dec_init="zeros", log_every=50, progress=False)
    w = np.array(result.params["W_dec"])
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    best = (atoms @ w.T).max(axis=1)  # best cosine per ground-truth atom
    assert (best >= 0.9).mean() >= 0.9
    assert result.history["fvu"][-1] < 0.1
    assert result.history["fvu"][-1] < result.history["fvu"][0]
    assert list(result.history["step"]) == [0, 50, 100, 150, 200, 250, 300, 350, 399]


def test_random_decoder_does_not_pass_the_recovery_bar():
    """The recovery criterion is not vacuous: an untrained decoder fails it."""
    atoms, _ = _planted()
    w = np.asarray(S.init_sae(jax.random.PRNGKey(0), S.SAEConfig(32, 128, k=3))["W_dec"])
    assert ((atoms @ w.T).max(axis=1) >= 0.9).mean() < 0.1


def test_train_sae_transcoder_geometric_median_and_errors():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(512, 8)).astype(np.float32))
    w_true = jnp.asarray(rng.normal(size=(8, 4)).astype(np.float32))
    y = jax.nn.relu(x @ w_true) + 3.0
    cfg = S.SAEConfig(8, 32, activation="topk", k=4, transcoder=True, d_out=4, skip=True)
    res = S.train_sae(jax.random.PRNGKey(0), x, cfg, steps=60, batch_size=128,
                      learning_rate=1e-2, targets=y, progress=False, steps_per_call=25)
    assert res.history["loss"].shape == (60,)
    assert res.history["fvu"][-1] < res.history["fvu"][0]
    assert int(res.state.step) == 60
    with pytest.raises(ValueError, match="needs targets"):
        S.train_sae(jax.random.PRNGKey(0), x, cfg, steps=1, progress=False)
    plain = S.SAEConfig(8, 32, k=4)
    with pytest.raises(ValueError, match="only used by transcoders"):
        S.train_sae(jax.random.PRNGKey(0), x, plain, steps=1, targets=y, progress=False)
    with pytest.raises(ValueError, match="`data` must have shape"):
        S.train_sae(jax.random.PRNGKey(0), x[:, :7], plain, steps=1, progress=False)
    with pytest.raises(ValueError, match="`steps` must be >= 1"):
        S.train_sae(jax.random.PRNGKey(0), x, plain, steps=0, progress=False)
    with pytest.raises(ValueError, match="`b_dec_init` must be one of"):
        S.train_sae(jax.random.PRNGKey(0), x, plain, steps=1, b_dec_init="median",
                    progress=False)


def test_demo_stage_quick():
    from sparsejax.demo import sae as stage
    from sparsejax.demo.context import make_context

    ctx = make_context(steps=50, finetune_steps=5, quick=True, progress=False)
    out = stage.run(ctx)
    (row,) = out["saes"]
    assert row["variant"] == "topk" and row["l0"] <= 16.0
    assert 0.0 <= row["dead_fraction"] <= 1.0 and np.isfinite(row["fvu"])
    import json

    json.dumps(out)


def test_train_sae_again_compiles_nothing_and_repeats_exactly():
    """A second call with the same config, rate and shapes reuses the compiled chunk runner, the
    initial states and the Weiszfeld loop (it recompiled the runner on every call)."""
    from _compiles import count_compiles

    x = jnp.asarray(np.random.default_rng(3).normal(size=(300, 16)), jnp.float32)
    cfg = S.SAEConfig(16, 32, activation="topk", k=4)

    def run():
        return S.train_sae(jax.random.PRNGKey(1), x, cfg, steps=7, batch_size=64,
                           steps_per_call=3, learning_rate=1e-3, progress=False)

    first = run()
    with count_compiles() as compiled:
        second = run()
        median = S.geometric_median(x)
    assert compiled == []
    for name in first.params:
        np.testing.assert_array_equal(second.params[name], first.params[name])
    np.testing.assert_array_equal(second.history["loss"], first.history["loss"])
    np.testing.assert_array_equal(median, S.geometric_median(x))

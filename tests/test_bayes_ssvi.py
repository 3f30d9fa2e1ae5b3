"""The `ssvi` optax transform, the NNX / Equinox SSVI layers, and SSVI vs dense VI on digits."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import bayes as B
from sparsejax import nn as snn
from sparsejax.training import masks_of

KEY = jax.random.key(0)


def _setup(sparsity=0.6):
    k1, k2, k3, k4 = jax.random.split(KEY, 4)
    params = {"l1": {"kernel": jax.random.normal(k1, (12, 16)) * 0.3, "bias": jnp.zeros(16)},
              "l2": {"kernel": jax.random.normal(k2, (16, 3)) * 0.3, "bias": jnp.zeros(3)}}
    post = B.init_posterior(k3, params, sparsity, rho_init=-3.0)
    x = jax.random.normal(k4, (32, 12))
    y = jnp.arange(32) % 3
    return post, x, y


def _apply(post, key, x):
    k1, k2 = jax.random.split(key)
    h = x
    for name, k in (("l1", k1), ("l2", k2)):
        m = post.mask[name]["kernel"]
        h = B.linear_lrt(k, h, post.mu[name]["kernel"], B.sigma_of(post.rho[name]["kernel"], m), m,
                         post.mu[name]["bias"])
        if name == "l1":
            h = jnp.tanh(h)
    return h


def _loss(v, masks, key, x, y):
    p = v._replace(mask=masks)
    logits = _apply(p, key, x)
    ll = -optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return -B.elbo(ll, B.kl_divergence(p), num_data=100)


_grad = jax.jit(jax.grad(_loss))  # one compiled program, not the op-by-op eager gradient


def _host(tree):
    """``tree`` with numpy leaves: the checks index and reduce on the host, not op by op in XLA."""
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def trained():
    """A few SSVI steps inside optax.chain(clip, adam); one compiled step for all of them.
    Returns ``(history, traces, step)``: per step the inputs, outputs and gradients, the trace
    log of the jitted step, and the step."""
    post, x, y = _setup()
    opt = B.ssvi(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)), end_step=40,
                 update_every=4)
    state = opt.init(post)
    traces = []

    @jax.jit
    def step(v, state, key):
        traces.append(1)
        grads = jax.grad(_loss)(v, masks_of(state)[0], key, x, y)
        updates, new_state = opt.update(grads, state, v)
        return optax.apply_updates(v, updates), new_state, grads

    v = post._replace(mask=None)
    history = []
    for t in range(10):
        new_v, new_state, grads = step(v, state, jax.random.key(t))
        history.append((v, state, new_v, new_state, grads))
        v, state = new_v, new_state
    return history, traces, step


def test_ssvi_keeps_posterior_masked_and_nnz_constant(trained):
    history, traces, _ = trained
    assert len(traces) == 1  # lax.cond on the step: no retracing
    changed_steps = []
    for t, (_, state, new_v, new_state, _) in enumerate(map(_host, history)):
        for name in ("l1", "l2"):
            old_m, new_m = masks_of(state)[0][name]["kernel"], masks_of(new_state)[0][name]["kernel"]
            assert int(old_m.sum()) == int(new_m.sum())
            for tree in (new_v.mu, new_v.rho):
                assert float(np.max(np.abs(np.where(new_m, 0, tree[name]["kernel"])))) == 0.0
            if bool(np.any(old_m != new_m)):
                changed_steps.append(t)
    assert sorted(set(changed_steps)) == [3, 7]  # step = count + 1 with step % update_every == 0


def test_ssvi_update_step_matches_subspace_update_and_resets_moments(trained):
    history, _, _ = trained
    v, state, new_v, new_state, grads = history[3]  # the 4th update call: step 4
    expected = B.subspace_update(v._replace(mask=masks_of(state)[0]), grads.mu, 4, end_step=40,
                                 update_every=4)
    v, state, new_v, new_state, expected = _host((v, state, new_v, new_state, expected))
    adam_state = new_state.inner_state[1][0]
    for name in ("l1", "l2"):
        old_m, new_m = masks_of(state)[0][name]["kernel"], masks_of(new_state)[0][name]["kernel"]
        np.testing.assert_array_equal(new_m, expected.mask[name]["kernel"])
        grown, dropped = new_m & ~old_m, old_m & ~new_m
        assert int(grown.sum()) > 0 and int(dropped.sum()) > 0
        np.testing.assert_array_equal(new_v.mu[name]["kernel"][grown], 0.0)
        # no optimizer step at a subspace-update step (the reference's `if pruner(): step()`)
        kept = old_m & new_m
        np.testing.assert_array_equal(new_v.mu[name]["kernel"][kept], v.mu[name]["kernel"][kept])
        np.testing.assert_array_equal(new_v.rho[name]["kernel"][kept],
                                      v.rho[name]["kernel"][kept])
        np.testing.assert_array_equal(new_v.mu[name]["bias"], v.mu[name]["bias"])
        np.testing.assert_allclose(new_v.rho[name]["kernel"][grown],
                                   expected.rho[name]["kernel"][grown])
        i = 0 if name == "l1" else 1
        for moment in (adam_state.mu, adam_state.nu):
            changed = grown | dropped
            assert float(np.max(np.abs(np.where(changed, moment[0][name]["kernel"], 0)))) == 0
            assert float(np.max(np.abs(np.where(changed, moment[1][i], 0)))) == 0
            assert float(np.max(np.abs(moment[0][name]["kernel"]))) > 0
    # off-schedule steps: the inner update on the active entries only
    v, state, new_v, new_state, grads = _host(history[2])
    m = masks_of(state)[0]["l1"]["kernel"]
    assert bool(np.all(np.where(m, new_v.mu["l1"]["kernel"] != v.mu["l1"]["kernel"], True)))
    assert masks_of((optax.EmptyState(), new_state))[0]["l1"]["kernel"] is not None


def test_jitted_ssvi_step_has_no_effects(trained):
    """The jitted training step with `ssvi` carries no effect (a checkify check, a callback): an
    effect takes every call off JAX's C++ dispatch path (milliseconds per step on a small MLP)."""
    history, traces, step = trained
    v, state = history[-1][2], history[-1][3]
    assert not step.trace(v, state, KEY).jaxpr.effects
    assert len(traces) == 1  # the cached trace, not a new one


def test_ssvi_traced_end_step_is_the_concrete_one(trained):
    """``end_step`` traced (the transform built inside the jitted step, one program for every
    ``end_step``): the same steps as the concrete ``end_step=40`` (the same masks, updates
    included);
    ``end_step = update_every`` never changes the subspace and steps the optimizer every step."""
    history, _, _ = trained
    post, x, y = _setup()
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

    @jax.jit
    def step(v, state, key, end_step):
        grads = jax.grad(_loss)(v, masks_of(state)[0], key, x, y)
        updates, new_state = B.ssvi(inner, end_step=end_step, update_every=4).update(grads, state,
                                                                                      v)
        return optax.apply_updates(v, updates), new_state

    v, state = history[0][0], history[0][1]
    for t in range(8):
        v, state = step(v, state, jax.random.key(t), jnp.int32(40))
    v, state, want_v, want_state = _host((v, state, *history[7][2:4]))
    np.testing.assert_equal(masks_of(state), masks_of(want_state))  # updates at steps 4 and 8
    # another compiled program: the floats may differ in the last bit (fusion order)
    for a, b in zip(jax.tree.leaves((v, state)), jax.tree.leaves((want_v, want_state))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    v, state = history[3][0], history[3][1]  # step 4: an update step for end_step = 40
    new_v, new_state = _host(step(v, state, jax.random.key(3), jnp.int32(4)))
    m = masks_of(state)[0]["l1"]["kernel"]
    np.testing.assert_array_equal(masks_of(new_state)[0]["l1"]["kernel"], m)
    assert bool(np.all(np.where(np.asarray(m), new_v.mu["l1"]["kernel"] != v.mu["l1"]["kernel"],
                                True)))


def test_ssvi_random_growth_and_errors():
    post, x, y = _setup()
    opt = B.ssvi(optax.sgd(0.1, momentum=0.9), end_step=10, update_every=1, grow="random",
                 key=jax.random.key(1))
    state = opt.init(post)
    v = post._replace(mask=None)
    grads = _grad(v, masks_of(state)[0], KEY, x, y)
    update = jax.jit(opt.update)
    state = update(grads, state, v)[1]
    updates, state2 = update(grads, state, v)
    m1, m2 = masks_of(state)[0]["l1"]["kernel"], masks_of(state2)[0]["l1"]["kernel"]
    assert bool(jnp.any(m1 != m2)) and int(m1.sum()) == int(m2.sum())
    with pytest.raises(ValueError, match="mask"):
        opt.update(grads, state, post)
    with pytest.raises(ValueError, match="params"):
        opt.update(grads, state)
    with pytest.raises(ValueError, match="mask"):
        opt.init(v)
    with pytest.raises(ValueError, match="key"):
        B.ssvi(optax.adam(1e-3), end_step=10, grow="random")
    with pytest.raises(ValueError, match="criterion"):
        B.ssvi(optax.adam(1e-3), end_step=10, criterion="nope")
    with pytest.raises(ValueError, match="update_every"):
        B.ssvi(optax.adam(1e-3), end_step=10, update_every=0)
    with pytest.raises(ValueError, match="inner_state"):  # adafactor's factored moments
        B.ssvi(optax.adafactor(1e-3, min_dim_size_to_factor=2), end_step=10,
               update_every=5).init(post)


# ---------------------------------------------------------------- layers


def test_nnx_and_equinox_linear_layers_are_the_pure_functions():
    layer = snn.SSVILinear(12, 5, sparsity=0.7, rngs=nnx.Rngs(0))
    eq = snn.eqx.SSVILinear(12, 5, sparsity=0.7, key=jax.random.key(0))
    x = jax.random.normal(KEY, (4, 12))

    def layer_outputs(lay, x):
        """What the layer computes: sampled, mean, MC predictive, 6 samples by hand, KL."""
        keys = jax.random.split(jax.random.key(3), 6)
        return (lay(x, key=KEY), lay(x), lay.predict(x, jax.random.key(3), samples=6),
                jnp.mean(jnp.stack([lay(x, key=k) for k in keys]), 0), lay.kl(0.5))

    @jax.jit
    def pure(mu, rho, mask, bias, x):
        """The same from the pure functions."""
        sigma = B.sigma_of(rho, mask)
        return (B.linear_lrt(KEY, x, mu, sigma, mask, bias), x @ mu + bias,
                B.kl_divergence(B.Posterior(mu, rho, mask), 0.5))

    # each side compiled as one program (op-by-op eager calls cost 3x the CPU time)
    for lay, (mu, rho, mask, bias), jit in (
            (layer, (layer.mu[...], layer.rho[...], layer.mask[...], layer.bias[...]), nnx.jit),
            (eq, (eq.mu, eq.rho, eq.mask, eq.bias), eqx.filter_jit)):
        assert int(mask.sum()) == round(60 * 0.3)
        assert not np.asarray(mu)[~np.asarray(mask)].any()
        sampled, mean, predictive, by_hand, kl = jit(layer_outputs)(lay, x)
        want_sampled, want_mean, want_kl = pure(mu, rho, mask, bias, x)
        np.testing.assert_allclose(sampled, want_sampled)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predictive, by_hand, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kl, want_kl)
    g = jax.random.normal(jax.random.key(5), (12, 5))
    before = layer.posterior()
    layer.update_subspace(g, 10, end_step=100, update_every=10)
    expected = B.subspace_update(before, g, 10, end_step=100, update_every=10)
    np.testing.assert_array_equal(layer.mask[...], expected.mask)
    same = eqx.tree_at(lambda m: (m.mu, m.rho, m.mask), eq, tuple(before))
    new_eq = same.update_subspace(g, 10, end_step=100, update_every=10)
    for a, b in zip((new_eq.mu, new_eq.rho, new_eq.mask), expected):
        np.testing.assert_array_equal(a, b)
    # Equinox: the bool mask is not a trainable leaf
    grads = eqx.filter_grad(lambda m: jnp.sum(m(x, key=KEY) ** 2))(eq)
    assert grads.mask is None and grads.mu.shape == (12, 5)
    with pytest.raises(ValueError, match="sparsity"):
        snn.SSVILinear(3, 4, sparsity=2.0, rngs=nnx.Rngs(0))


def test_conv_layers_are_the_pure_function():
    layer = snn.SSVIConv(3, 4, 3, sparsity=0.5, strides=2, rngs=nnx.Rngs(1))
    eq = snn.eqx.SSVIConv(3, 4, (3, 3), sparsity=0.5, strides=2, key=jax.random.key(1))
    x = jax.random.normal(KEY, (2, 6, 6, 3))
    for lay, (mu, rho, mask) in ((layer, (layer.mu[...], layer.rho[...], layer.mask[...])),
                                 (eq, (eq.mu, eq.rho, eq.mask))):
        out = lay(x, key=KEY)
        assert out.shape == (2, 3, 3, 4)
        np.testing.assert_allclose(out, B.conv_lrt(KEY, x, mu, B.sigma_of(rho, mask), mask,
                                                   jnp.zeros(4), strides=2), rtol=1e-5)


# ---------------------------------------------------------------- quality on digits


@pytest.mark.slow
def test_ssvi_10_percent_density_vs_dense_vi_on_digits():
    """SSVI at 10% density against dense mean-field VI, the same 300 steps on a 64-128-128-10 MLP:
    accuracy within 3 points, ECE within 0.03 of dense VI's (a small budget: the suite compiles at
    XLA's lowest optimisation level, where each step runs ~5x slower; benchmarks/ssvi.py and the
    demo run the full 64-256-256-10 comparison)."""
    from sparsejax.demo.ssvi import compare

    rows = compare(jax.random.key(0), steps=300, sizes=(64, 128, 128, 10), timing_repeats=0)
    dense, sparse = rows
    assert dense["accuracy"] > 0.9
    assert sparse["accuracy"] >= dense["accuracy"] - 0.03, rows
    assert sparse["ece"] <= dense["ece"] + 0.03, rows
    np.testing.assert_allclose(sparse["flops_ratio"], 0.1, atol=0.01)
    assert sparse["weights"] == round(0.1 * 64 * 128) + round(0.1 * 128 * 128) + round(0.1 * 128 * 10)


@pytest.mark.slow
def test_demo_ssvi_stage_quick(capsys):
    import json

    from sparsejax.demo import STAGES, make_context
    from sparsejax.demo.ssvi import run

    assert STAGES["ssvi"] == "sparsejax.demo.ssvi"
    ctx = make_context(steps=20, finetune_steps=5, quick=True, progress=False)
    result = run(ctx)
    out = capsys.readouterr().out
    assert "dense VI" in out and "SSVI 10%" in out
    json.dumps(result)
    dense, sparse = result["rows"]
    assert dense["weights"] == 64 * 64 + 64 * 10
    assert sparse["weights"] == round(0.1 * 64 * 64) + round(0.1 * 64 * 10)
    assert 0.0 <= sparse["accuracy"] <= 1.0 and sparse["flops_ratio"] < 0.11


# ---------------------------------------------------------------- whole models: NNX and Equinox


class _NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = snn.SSVILinear(12, 16, sparsity=0.6, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, *, key=None):
        return self.head(jnp.tanh(self.l1(x, key=key)))


class _EqxNet(eqx.Module):
    l1: snn.eqx.SSVILinear
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.l1 = snn.eqx.SSVILinear(12, 16, sparsity=0.6, key=k1)
        self.head = eqx.nn.Linear(16, 3, key=k2)

    def __call__(self, x, *, key=None):
        return jax.vmap(self.head)(jnp.tanh(self.l1(x, key=key)))


def _train_model(post, rebuild, steps=11):
    """``steps`` jitted ssvi(adam) steps on a whole model (updates at steps 5 and 10)."""
    _, x, y = _setup()
    opt = B.ssvi(optax.adam(1e-2), end_step=40, update_every=5)
    state = opt.init(post)

    @jax.jit
    def step(v, state, key):
        def loss(v):
            p = v._replace(mask=masks_of(state)[0])
            logits = rebuild(p)(x, key=key)
            ll = -optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return -B.elbo(ll, B.kl_divergence(p), num_data=100)

        updates, state = opt.update(jax.grad(loss)(v), state, v)
        return optax.apply_updates(v, updates), state

    v = post._replace(mask=None)
    for t in range(steps):
        v, state = step(v, state, jax.random.key(t))
    return rebuild(v._replace(mask=masks_of(state)[0]))


@pytest.mark.parametrize("family", ["nnx", "equinox"])
def test_whole_model_ssvi_training_path(family):
    """The model-level path (split the model into a Posterior, `ssvi`, rebuild) keeps every SSVI
    kernel exactly on its mask through subspace updates (a plain optimizer on masked gradients
    does not: Adam's moments move dropped entries), and `predict_model` is the MC predictive."""
    _, x, _ = _setup()
    if family == "nnx":
        model = _NNXNet(nnx.Rngs(0))
        graphdef, post, rest = snn.split_posterior(model)
        rebuild = lambda p: snn.merge_posterior(graphdef, p, rest)  # noqa: E731
        arrays = lambda m: (m.l1.mu[...], m.l1.rho[...], m.l1.mask[...])  # noqa: E731
    else:
        model = _EqxNet(jax.random.key(0))
        post = snn.eqx.posterior_of(model)
        rebuild = lambda p: snn.eqx.with_posterior(model, p)  # noqa: E731
        arrays = lambda m: (m.l1.mu, m.l1.rho, m.l1.mask)  # noqa: E731
    np.testing.assert_array_equal(rebuild(post)(x), model(x))  # round trip
    mu0, _, mask0 = arrays(model)
    trained = _train_model(post, rebuild)
    mu, rho, mask = arrays(trained)
    assert bool(jnp.any(mask != mask0)) and int(mask.sum()) == int(mask0.sum())
    assert float(jnp.max(jnp.abs(jnp.where(mask, 0, mu)))) == 0.0
    assert float(jnp.max(jnp.abs(jnp.where(mask, 0, rho)))) == 0.0
    assert bool(jnp.any(mu != mu0))
    keys = jax.random.split(jax.random.key(7), 5)
    expected = jnp.mean(jnp.stack([jax.nn.softmax(trained(x, key=k)) for k in keys]), 0)
    np.testing.assert_allclose(B.predict_model(trained, x, jax.random.key(7), samples=5),
                               expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model"):
        snn.split_posterior(nnx.Linear(2, 2, rngs=nnx.Rngs(0))) if family == "nnx" else \
            snn.eqx.posterior_of(eqx.nn.Linear(2, 2, key=KEY))


def test_equinox_ssvi_module_imports_no_flax():
    """The Equinox layers and their kernel initialiser sit on `sparsejax.bayes`, not on Flax."""
    import ast
    import inspect

    import sparsejax.bayes.posterior as posterior
    import sparsejax.nn.eqx.ssvi as eqx_ssvi

    for module in (eqx_ssvi, posterior):
        imported = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert not {m for m in imported if m.startswith(("flax", "sparsejax.nn"))}, imported


def test_eager_subspace_update_again_compiles_nothing_and_matches_jit():
    """Called eagerly a second time (as `SSVILinear.update_subspace` calls it) the update reuses its
    compiled ``lax.cond`` (it recompiled on every call), at an update step and between updates, and
    agrees bit for bit with the update inside a user's jit."""
    from _compiles import count_compiles

    rng = np.random.default_rng(11)
    params = {"w": jnp.asarray(rng.normal(size=(12, 6)), jnp.float32), "b": jnp.zeros(6)}
    post = B.init_posterior(jax.random.key(4), params, sparsity=0.75)
    grads = {"w": jnp.asarray(rng.normal(size=(12, 6)), jnp.float32), "b": jnp.ones(6)}

    def update(step):
        return B.subspace_update(post, grads, step, end_step=20, update_every=2)

    first = [update(4), update(5)]
    with count_compiles() as compiled:
        second = [update(4), update(5)]
    assert compiled == []
    jitted = [jax.jit(update)(4), jax.jit(update)(5)]
    for a, b, c in zip(first, second, jitted):
        for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
            np.testing.assert_array_equal(y, x)
            np.testing.assert_array_equal(z, x)
    assert not np.array_equal(first[0].mask["w"], post.mask["w"])  # step 4 updates the subspace
    np.testing.assert_array_equal(first[1].mask["w"], post.mask["w"])  # step 5 does not

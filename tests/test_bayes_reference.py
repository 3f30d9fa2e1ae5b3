"""`ssvi` against a float64 transcription of the SSVI reference training loop, step by step.

The transcription follows ljb121002/SSVI (``train_cifar.py::train`` and
``rigl_torch/RigL.py::RigLScheduler``) line by line on identical gradient sequences: the scheduler
counter is incremented before the test ``step % delta == 0 and step < T_end``; at such a step
``_rigl_step`` runs (drop by ``SNR_mean_abs`` over all entries, grow by ``|dense grad|`` among the
entries not kept, new entries at ``mu = 0``, ``reset_momentum``, ``apply_mask_to_weights``,
``grow_std_init`` with ``grow_std='mean'``) and **no** optimizer step is taken; otherwise torch's SGD
with momentum steps on the masked gradients (``IndexMaskHook``), then momentum and weights are
masked again (``_create_step_wrapper``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import bayes as B
from sparsejax.training import masks_of

LR, MOMENTUM = 0.1, 0.9
SHAPES = {"l1": (16, 12), "l2": (12, 5)}


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _snr_mean_abs(w, sigma):
    with np.errstate(divide="ignore", invalid="ignore"):
        erf = np.vectorize(math.erf)
        e = w * erf(w / sigma / np.sqrt(2)) + 2 * sigma * np.exp(-w**2 / (2 * sigma**2)) / np.sqrt(
            2 * np.pi)
        s = e / np.sqrt(sigma**2 + w**2 - e**2)
    return np.where(np.isnan(s), 0.0, s)


def _topk_mask(score, k):
    out = np.zeros(score.size, bool)
    out[np.argsort(-score, kind="stable")[:k]] = True
    return out


def _reference_rigl_step(w, rho, mask, dense_grad, step, t_end, alpha, regrow):
    """``_rigl_step`` for one (weight, posterior_std) pair, float64. Returns (w, rho, mask)."""
    frac = alpha / 2 * (1 + np.cos(step * np.pi / t_end))
    prev = mask.copy()
    sigma = _softplus(rho) * (rho != 0)
    score = _snr_mean_abs(w, sigma).reshape(-1)
    n_total, n_ones = w.size, int(mask.sum())
    n_prune = int(n_ones * frac)
    if not regrow:  # sparsejax's default: growth only among the previously inactive entries
        n_prune = min(n_prune, n_total - n_ones)
    n_keep = n_ones - n_prune
    mask1 = _topk_mask(score, n_keep)
    grow = np.abs(dense_grad).reshape(-1)
    excluded = mask1 if regrow else mask.reshape(-1)
    mask2 = _topk_mask(np.where(excluded, grow.min() - 1, grow), n_prune)
    new_conn = (mask2.reshape(w.shape)) & ~mask
    w = np.where(new_conn, 0.0, w)
    mask = (mask1 | mask2).reshape(w.shape)
    w, rho = w * mask, rho * mask                       # apply_mask_to_weights
    mean_rho = rho.mean() * rho.size / np.count_nonzero(rho)   # grow_std_init, grow_std="mean"
    rho = rho + (mask & ~prev) * mean_rho
    return w, rho, mask


def _reference_loop(params, masks, grads, *, delta, t_end, alpha, regrow):
    """The training loop of train_cifar.py on given gradients; the state after every step."""
    p = {k: {n: np.array(v, np.float64) for n, v in d.items()} for k, d in params.items()}
    m = {k: np.array(v) for k, v in masks.items()}
    buf = {k: {n: None for n in d} for k, d in p.items()}
    step, history = 0, []
    for g in grads:
        step += 1                                       # RigLScheduler.__call__
        if step % delta == 0 and step < t_end:
            for k in p:
                p[k]["mu"], p[k]["rho"], m[k] = _reference_rigl_step(
                    p[k]["mu"], p[k]["rho"], m[k], np.asarray(g[k]["mu"], np.float64), step, t_end,
                    alpha, regrow)
                for n in ("mu", "rho"):                 # reset_momentum
                    if buf[k][n] is not None:
                        buf[k][n] = buf[k][n] * m[k]
        else:                                           # optimizer.step() on masked grads
            for k in p:
                for n in p[k]:
                    gn = np.asarray(g[k][n], np.float64)
                    if n != "bias":
                        gn = gn * m[k]                  # IndexMaskHook
                    buf[k][n] = gn.copy() if buf[k][n] is None else MOMENTUM * buf[k][n] + gn
                    p[k][n] = p[k][n] - LR * buf[k][n]
                    if n != "bias":                     # step wrapper: mask momentum, weights
                        buf[k][n] = buf[k][n] * m[k]
                        p[k][n] = p[k][n] * m[k]
        history.append(({k: dict(d) for k, d in p.items()}, dict(m)))
    return history


def _problem(seed, steps, density=0.4):
    rng = np.random.default_rng(seed)
    params, masks, grads = {}, {}, []
    for k, shape in SHAPES.items():
        mask = np.zeros(int(np.prod(shape)), bool)
        mask[rng.permutation(mask.size)[:round(density * mask.size)]] = True
        mask = mask.reshape(shape)
        params[k] = {"mu": rng.normal(size=shape) * mask,
                     "rho": rng.uniform(-4, -1, size=shape) * mask,
                     "bias": rng.normal(size=shape[1])}
        masks[k] = mask
    for _ in range(steps):
        grads.append({k: {"mu": rng.normal(size=s), "rho": rng.normal(size=s) * 0.1,
                          "bias": rng.normal(size=s[1])} for k, s in SHAPES.items()})
    return params, masks, grads


def _to_posterior(params, masks=None, dtype=jnp.float32):
    mu = {k: {"kernel": jnp.asarray(d["mu"], dtype), "bias": jnp.asarray(d["bias"], dtype)}
          for k, d in params.items()}
    rho = {k: {"kernel": jnp.asarray(d["rho"], dtype), "bias": None} for k, d in params.items()}
    mask = None if masks is None else {k: {"kernel": jnp.asarray(m), "bias": None}
                                       for k, m in masks.items()}
    return B.Posterior(mu, rho, mask)


@pytest.mark.parametrize("regrow", [True, False])
def test_ssvi_follows_reference_loop_over_several_update_periods(regrow):
    """Masks equal and weights to float32 precision at every one of 32 steps (6 update periods)."""
    delta, t_end, alpha, steps = 5, 30, 0.3, 32
    params, masks, grads = _problem(0, steps)
    ref = _reference_loop(params, masks, grads, delta=delta, t_end=t_end, alpha=alpha,
                          regrow=regrow)
    opt = B.ssvi(optax.sgd(LR, momentum=MOMENTUM), end_step=t_end, update_every=delta,
                 drop_fraction=alpha, regrow_dropped=regrow)
    state = opt.init(_to_posterior(params, masks))
    v = _to_posterior(params)
    update = jax.jit(opt.update)
    n_updates = 0
    for t, g in enumerate(grads):
        before = masks_of(state)[0]
        updates, state = update(_to_posterior({k: {"mu": d["mu"], "rho": d["rho"],
                                                    "bias": d["bias"]} for k, d in g.items()}),
                                state, v)
        v = optax.apply_updates(v, updates)
        r_params, r_masks = ref[t]
        for k in SHAPES:
            np.testing.assert_array_equal(masks_of(state)[0][k]["kernel"], r_masks[k],
                                          err_msg=f"{t} {k}")
            for ours, name in ((v.mu[k]["kernel"], "mu"), (v.rho[k]["kernel"], "rho"),
                               (v.mu[k]["bias"], "bias")):
                np.testing.assert_allclose(ours, r_params[k][name], rtol=2e-5, atol=2e-5,
                                           err_msg=f"step {t + 1} {k} {name}")
        n_updates += any(bool(jnp.any(before[k]["kernel"] != masks_of(state)[0][k]["kernel"]))
                         for k in SHAPES)
    assert n_updates == 5  # steps 5, 10, 15, 20, 25 (< T_end = 30)


def test_ssvi_update_at_mask_step_option_steps_kept_entries():
    """The explicit option: the inner step also runs at an update step (kept entries and biases
    move by it; the default leaves them, checked above against the reference)."""
    params, masks, grads = _problem(1, 5)
    opt = B.ssvi(optax.sgd(LR), end_step=30, update_every=5, update_at_mask_step=True)
    state = opt.init(_to_posterior(params, masks))._replace(count=jnp.int32(4))  # step 5
    updates, new_state = jax.jit(opt.update)(_to_posterior(grads[4]), state, _to_posterior(params))
    for k in SHAPES:
        new_m = np.asarray(masks_of(new_state)[0][k]["kernel"])
        assert (new_m != masks[k]).any()
        kept = new_m & masks[k]
        np.testing.assert_allclose(np.asarray(updates.mu[k]["kernel"])[kept],
                                   -LR * grads[4][k]["mu"][kept], rtol=1e-5)
        np.testing.assert_allclose(updates.mu[k]["bias"], -LR * grads[4][k]["bias"], rtol=1e-5)
    with pytest.raises(TypeError, match="update_at_mask_step"):
        B.ssvi(optax.sgd(LR), end_step=30, update_at_mask_step="no")


# ---------------------------------------------------------------- the paper's preset


def test_ssvi_cifar_preset_values_and_init():
    cfg = B.SSVI_CIFAR
    assert (cfg.density, cfg.prior_sigma, cfg.kl_scale, cfg.update_every, cfg.drop_fraction,
            cfg.criterion, cfg.regrow_dropped) == (0.1, 0.005, 0.01, 100, 0.3, "SNR_mean_abs", True)
    params = {"conv_init": {"kernel": jnp.zeros((3, 3, 3, 16))},
              "dense": {"kernel": jnp.zeros((200, 50)), "bias": jnp.ones(50)}}
    post = cfg.init_posterior(jax.random.key(0), params, dense="conv_init/*")
    assert bool(post.mask["conv_init"]["kernel"].all())            # first layer: dense, Bayesian
    assert int(post.mask["dense"]["kernel"].sum()) == 1000         # 10% of 10000
    assert post.mask["dense"]["bias"] is None and bool((post.mu["dense"]["bias"] == 1).all())
    m = np.asarray(post.mask["dense"]["kernel"])
    mu, rho = np.asarray(post.mu["dense"]["kernel"]), np.asarray(post.rho["dense"]["kernel"])
    assert (mu[~m] == 0).all() and (rho[~m] == 0).all()
    assert abs(mu[m].std() - 0.01) < 0.001
    sigma = np.log1p(np.exp(rho[m].astype(np.float64)))
    # |N(6e-4, 5e-4)|: mean 6.6e-4 (folded normal), as the reference's log(expm1(|x|))
    assert abs(sigma.mean() - 6.6e-4) < 0.5e-4
    np.testing.assert_allclose(cfg.kl_weight(0, 10), 0.01 * 1 / 100)
    np.testing.assert_allclose(cfg.kl_weight(995, 10), 0.01 * 100 / 100)
    np.testing.assert_allclose(cfg.kl_weight(5000, 10), 0.01)


def test_ssvi_cifar_optimizer_is_the_reference_sgd():
    """The inner step against torch's SGD(momentum 0.9, wd 5e-4 on means and biases only, lr_std on
    rho) under a per-epoch CosineAnnealingLR(T_max=epochs), float64, before the first update."""
    cfg = B.SSVIPreset(epochs=3, update_every=4, weight_decay=0.1, std_learning_rate=0.05)
    spe, steps = 2, 6
    params, masks, grads = _problem(2, steps, density=0.5)
    opt = cfg.optimizer(steps_per_epoch=spe)
    state = opt.init(_to_posterior(params, masks))
    v = _to_posterior(params)
    update = jax.jit(opt.update)
    p = {k: {n: np.array(x, np.float64) for n, x in d.items()} for k, d in params.items()}
    buf = {k: {n: 0.0 for n in d} for k, d in p.items()}
    for t, g in enumerate(grads):
        updates, state = update(_to_posterior(g), state, v)
        v = optax.apply_updates(v, updates)
        lr_factor = 0.5 * (1 + np.cos(np.pi * (t // spe) / cfg.epochs))
        for k in p:
            for n in p[k]:
                gn = np.asarray(g[k][n], np.float64) * (1 if n == "bias" else masks[k])
                if n != "rho":
                    gn = gn + cfg.weight_decay * p[k][n]
                buf[k][n] = cfg.momentum * buf[k][n] + gn
                base = cfg.std_learning_rate if n == "rho" else cfg.learning_rate
                p[k][n] = p[k][n] - base * lr_factor * buf[k][n]
        for k in SHAPES:
            np.testing.assert_allclose(v.mu[k]["kernel"], p[k]["mu"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v.rho[k]["kernel"], p[k]["rho"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v.mu[k]["bias"], p[k]["bias"], rtol=1e-5, atol=1e-6)

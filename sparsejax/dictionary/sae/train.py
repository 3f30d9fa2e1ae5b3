"""``train_sae``: a few-line SAE training loop (optax, one jitted step, a tqdm progress bar)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from sparsejax._checks import (
    check_choice,
    check_float,
    check_float_array,
    check_int,
)
from sparsejax._jitcache import cached_step
from sparsejax.dictionary.sae.decoder import (
    geometric_median,
    normalize_decoder,
    remove_decoder_parallel_grads,
)
from sparsejax.dictionary.sae.functional import (
    Params,
    SAEConfig,
    SAEState,
    init_sae,
    init_state,
    sae_loss,
)

__all__ = ["TrainResult", "make_train_step", "train_sae"]


class TrainResult(NamedTuple):
    """What `train_sae` returns.

    Attributes:
        params: trained SAE params.
        state: final `.SAEState` (dead-latent tracker, BatchTopK threshold).
        history: per-step metrics as numpy arrays (``loss``, ``mse``, ``fvu``, ``l0``, ``aux``,
            ``dead_fraction``; Matryoshka SAEs add ``prefix_mse`` ``[n_logged, n_groups]``), one
            entry per logged step, plus ``step``.
    """

    params: Params
    state: SAEState
    history: dict[str, np.ndarray]


def make_train_step(config: SAEConfig, optimizer: optax.GradientTransformation, *,
                    jit: bool = True):
    """A training step ``(params, opt_state, sae_state, x, y) -> (params, opt_state,
    sae_state, metrics)``, jitted unless ``jit=False``.

    With ``config.normalize_decoder`` the optimiser must already remove the decoder-parallel
    gradient (`.remove_decoder_parallel_grads` first in the chain, as `train_sae`
    builds it); the step renormalises the decoder rows after the update.
    """
    grad_fn = jax.value_and_grad(sae_loss, has_aux=True)

    def step(params, opt_state, sae_state, x, y):
        (_, out), grads = grad_fn(params, x, config, sae_state, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if config.normalize_decoder:
            params = normalize_decoder(params)
        return params, opt_state, out.state, out.metrics

    return jax.jit(step) if jit else step


@functools.lru_cache(maxsize=32)  # the same optimizer object for the same rate: runners are reused
def _default_optimizer(learning_rate: float, normalize: bool) -> optax.GradientTransformation:
    return _with_parallel_removal(optax.adam(learning_rate), normalize)


@functools.lru_cache(maxsize=32)
def _with_parallel_removal(base: optax.GradientTransformation, normalize: bool
                           ) -> optax.GradientTransformation:
    return optax.chain(remove_decoder_parallel_grads(), base) if normalize else base


@functools.lru_cache(maxsize=32)  # one compiled runner per (config, optimizer) across calls
def _make_chunk_runner(config: SAEConfig, optimizer: optax.GradientTransformation):
    step = make_train_step(config, optimizer, jit=False)

    @jax.jit
    def run(params, opt_state, sae_state, data, targets, idx):
        def body(carry, rows):
            params, opt_state, sae_state = carry
            yb = None if targets is None else targets[rows]
            params, opt_state, sae_state, metrics = step(params, opt_state, sae_state,
                                                         data[rows], yb)
            return (params, opt_state, sae_state), metrics

        (params, opt_state, sae_state), metrics = jax.lax.scan(
            body, (params, opt_state, sae_state), idx)
        return params, opt_state, sae_state, metrics

    return run


@functools.lru_cache(maxsize=32)
def _make_fresh_states(config: SAEConfig, optimizer: optax.GradientTransformation):
    """``params -> (optimiser state, SAEState)`` of a new run, one compiled call."""
    return jax.jit(lambda params: (optimizer.init(params), init_state(config)))


@functools.partial(jax.jit, static_argnums=1)
def _next_order(key, n):
    """The next key and a fresh permutation of ``range(n)`` (one epoch's row order)."""
    key, sub = jax.random.split(key)
    return key, jax.random.permutation(sub, n)


def train_sae(
    key: Array,
    data: Float[Array, "n d_in"],
    config: SAEConfig,
    *,
    steps: int,
    batch_size: int = 4096,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    targets: Float[Array, "n d_out"] | None = None,
    params: Params | None = None,
    b_dec_init: str = "geometric_median",
    log_every: int = 1,
    steps_per_call: int = 50,
    progress: bool = True,
    desc: str = "sae",
) -> TrainResult:
    """Train an SAE (or transcoder) on a fixed activation matrix with Adam.

    Each epoch visits the rows in a fresh random order, ``batch_size`` rows a step (a last
    partial batch is dropped). The
    default learning rate is sparsify's ``2e-4 / sqrt(d_sae / 2^14)``. With
    ``config.normalize_decoder`` the decoder-parallel gradient is removed before the optimiser and
    the rows are renormalised after each step.

    Args:
        key: PRNG key (initialisation and batch sampling).
        data: inputs ``[n, d_in]``.
        config: the SAE description.
        steps: optimisation steps (>= 1).
        batch_size: rows per step (clipped to ``n``).
        learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
        optimizer: a custom optax optimiser (the parallel-gradient removal is still prepended).
        targets: transcoder targets ``[n, d_out]`` (required iff ``config.transcoder``).
        params: initial params (default `.init_sae` with ``b_dec`` per ``b_dec_init``).
        b_dec_init: ``"geometric_median"`` (of up to 4096 target rows, SAELens), ``"mean"``
            (sparsify) or ``"zeros"``.
        log_every: record metrics every this many steps.
        steps_per_call: steps run inside one jitted ``lax.scan`` call (the bar updates per call).
        progress: show a tqdm bar with the loss, FVU, L0 and dead fraction.
        desc: the bar's label.

    Returns:
        `TrainResult` ``(params, state, history)``.
    """
    from tqdm.auto import tqdm

    if not isinstance(config, SAEConfig):
        raise TypeError(f"`config` must be an SAEConfig; got {type(config).__name__}")
    data = check_float_array(jnp.asarray(data), "data", min_ndim=2)
    if data.ndim != 2 or data.shape[1] != config.d_in or data.shape[0] == 0:
        raise ValueError(f"`data` must have shape [n, d_in] with d_in={config.d_in} and n >= 1; "
                         f"got {data.shape}")
    steps = check_int(steps, "steps", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    log_every = check_int(log_every, "log_every", minimum=1)
    steps_per_call = check_int(steps_per_call, "steps_per_call", minimum=1)
    check_choice(b_dec_init, "b_dec_init", ("geometric_median", "mean", "zeros"))
    if config.transcoder:
        if targets is None:
            raise ValueError("a transcoder (transcoder=True) needs targets")
        targets = check_float_array(jnp.asarray(targets), "targets", min_ndim=2)
        if targets.shape != (data.shape[0], config.out_dim):
            raise ValueError(f"`targets` must have shape (n, d_out)={(data.shape[0], config.out_dim)}"
                             f"; got {targets.shape}")
    elif targets is not None:
        raise ValueError("targets are only used by transcoders (transcoder=True)")
    if learning_rate is None:
        learning_rate = 2e-4 / float(np.sqrt(config.d_sae / 2**14))
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0,
                                exclusive_minimum=True)

    n = data.shape[0]
    batch = min(batch_size, n)
    if optimizer is None:
        opt = _default_optimizer(learning_rate, config.normalize_decoder)
    else:
        opt = cached_step(_with_parallel_removal, optimizer, config.normalize_decoder)
    key, k_init = jax.random.split(key)
    tgt = data if targets is None else targets
    if params is None:  # eager, as its rounding always was (a jit would fuse the reductions)
        if b_dec_init == "geometric_median":
            b_dec = geometric_median(tgt[: min(n, 4096)])
        elif b_dec_init == "mean":
            b_dec = jnp.mean(tgt, axis=0)
        else:
            b_dec = None
        params = init_sae(k_init, config, b_dec=b_dec, dtype=data.dtype)
    opt_state, state = cached_step(_make_fresh_states, config, opt)(params)
    run = cached_step(_make_chunk_runner, config, opt)
    per_epoch = n // batch
    chunk = min(steps, steps_per_call)
    buffer = np.zeros((0,), np.int64)
    history: dict[str, list] = {}
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    done = 0
    while done < steps:
        size = min(chunk, steps - done)
        while buffer.size < size * batch:
            key, perm = _next_order(key, n)
            perm = np.asarray(perm)[: per_epoch * batch]
            buffer = np.concatenate([buffer, perm])
        idx = jnp.asarray(buffer[: size * batch].reshape(size, batch), jnp.int32)
        buffer = buffer[size * batch:]
        params, opt_state, state, metrics = run(params, opt_state, state, data, targets, idx)
        host: dict[str, Any] = jax.device_get(metrics)
        for j in range(size):
            i = done + j
            if i % log_every == 0 or i == steps - 1:
                history.setdefault("step", []).append(i)
                for name, values in host.items():
                    history.setdefault(name, []).append(np.asarray(values[j], np.float64))
        done += size
        bar.update(size)
        if progress:
            bar.set_postfix(loss=f"{host['loss'][-1]:.4f}", fvu=f"{host['fvu'][-1]:.3f}",
                            l0=f"{host['l0'][-1]:.1f}", dead=f"{host['dead_fraction'][-1]:.2f}",
                            refresh=False)
    bar.close()
    return TrainResult(params, state, {k: np.asarray(v) for k, v in history.items()})

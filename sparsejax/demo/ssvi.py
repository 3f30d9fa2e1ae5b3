"""Demo stage: dense mean-field VI vs SSVI at 10% density on digits, the same steps.

Both train a Bayesian MLP (64-256-256-10 by default, deterministic biases) with the local
reparameterisation trick, Adam on the negative ELBO with a linear KL warm-up, and report test
accuracy, NLL, ECE (15 bins) of the Monte-Carlo predictive, the parameter count, the training-FLOPs
ratio (`sparsejax.bayes.training_flops`) and the measured step-time ratio. `train_bnn` and
`evaluate_bnn` are shared with ``benchmarks/ssvi.py``, the tests and the notebook.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import bayes as B
from sparsejax.demo._table import print_table
from sparsejax.demo.context import (
    DemoContext,
    fast_jit,
    init_mlp,
    interleaved_rounds,
    load_digits_split,
)
from sparsejax.training import masks_of

__all__ = ["bnn_apply", "compare", "evaluate_bnn", "plot", "print_rows", "run", "train_bnn"]


def bnn_apply(post: B.Posterior, key: jax.Array | None, x: jax.Array) -> jax.Array:
    """Logits of the Bayesian MLP: one LRT sample per layer with ``key``, mean weights without."""
    n = len(post.mu)
    keys = [None] * n if key is None else list(jax.random.split(key, n))
    h = x
    for i in range(n):
        name = f"dense_{i}"
        mask = post.mask[name]["kernel"]
        h = B.linear_lrt(keys[i], h, post.mu[name]["kernel"],
                         B.sigma_of(post.rho[name]["kernel"], mask), mask, post.mu[name]["bias"])
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


@functools.lru_cache(maxsize=8)
def _step_function(n: int, batch_size: int, learning_rate: float, prior_sigma: float, warmup: int,
                   update_every: int):
    """``(make_opt, jitted step)`` for one training configuration (cached). ``make_opt(end_step)``
    is the `sparsejax.bayes.ssvi` transform; the step takes ``end_step`` as a (traced) argument, so
    dense mean-field VI (all-``True`` masks, ``end_step = update_every``: no subspace update
    ever, the optimizer steps at every step) and SSVI run one compiled program."""
    def make_opt(end_step):
        return B.ssvi(optax.adam(learning_rate), end_step=end_step, update_every=update_every)

    def loss_fn(v, masks, key, xb, yb, step):
        p = v._replace(mask=masks)
        logits = bnn_apply(p, key, xb)
        log_lik = -optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        kl = B.kl_divergence(p, prior_sigma)
        return -B.elbo(log_lik, kl, num_data=n, step=step, warmup_steps=warmup)

    @jax.jit
    def step_fn(v, state, key, x, y, end_step):
        k_batch, k_noise = jax.random.split(key)
        idx = jax.random.choice(k_batch, n, (batch_size,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(v, masks_of(state)[0], k_noise, x[idx], y[idx],
                                                  state.count)
        updates, state = make_opt(end_step).update(grads, state, v)
        return optax.apply_updates(v, updates), state, loss

    return make_opt, step_fn


@functools.lru_cache(maxsize=8)
def _scan_function(*config, fast_compile: bool = False):
    """A jitted `jax.lax.scan` of `_step_function(*config)`'s step over an array of keys
    (``fast_compile``: compiled by `sparsejax.demo.context.fast_jit`)."""
    _, step_fn = _step_function(*config)

    def run_fn(v, state, keys, x, y, end_step):
        def body(carry, key):
            v, state, loss = step_fn(*carry, key, x, y, end_step)
            return (v, state), loss

        (v, state), losses = jax.lax.scan(body, (v, state), keys)
        return v, state, losses

    return fast_jit(run_fn, enabled=fast_compile)


def train_bnn(
    key: jax.Array,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sparsity: float,
    steps: int,
    sizes: tuple[int, ...] = (64, 256, 256, 10),
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    prior_sigma: float = 1.0,
    warmup_fraction: float = 0.3,
    update_every: int = 50,
    allocation: str = "uniform",
    rho_init: float = -5.0,
    progress: bool = False,
    desc: str = "",
    timing_repeats: int = 3,
    fast_compile: bool = False,
) -> dict[str, Any]:
    """Train a Bayesian MLP with `sparsejax.bayes.ssvi` (``sparsity=0``: dense mean-field VI).

    Returns:
        ``{"posterior", "losses", "step_seconds", "time_step"}``: the trained `Posterior`, the
        loss every step and the median process CPU time per step of the compiled training chunk
        (``update_every`` steps, one `jax.lax.scan`), rerun ``timing_repeats`` times after
        training, past ``end_step`` so without a subspace update (NaN with
        ``timing_repeats=0``); ``time_step()`` reruns that chunk once more and returns its CPU
        seconds per step (`compare` interleaves the two models' reruns). Training
        runs as compiled `jax.lax.scan` chunks of ``update_every`` steps; ``fast_compile``
        compiles that chunk with `sparsejax.demo.context.fast_jit` (the demo; the step time is
        then the one of that program).
    """
    k_init, k_post, k_train = jax.random.split(key, 3)
    params = init_mlp(k_init, sizes)
    post = B.init_posterior(k_post, params, sparsity, allocation=allocation, rho_init=rho_init)
    # dense VI (sparsity 0): the same program, no subspace update ever (end_step = update_every:
    # the first update step is the end step, where the drop fraction is 0)
    end_step = update_every if sparsity == 0 else max(int(0.75 * steps), update_every)
    x, y = jnp.asarray(x), jnp.asarray(y)
    config = (x.shape[0], batch_size, learning_rate, prior_sigma, int(warmup_fraction * steps),
              update_every)
    make_opt, _ = _step_function(*config)
    scan = _scan_function(*config, fast_compile=fast_compile)

    end = jnp.int32(end_step)

    def run_fn(v, state, chunk, x, y):
        return scan(v, state, chunk, x, y, end)

    state = make_opt(end_step).init(post)
    variational = post._replace(mask=None)
    keys = jax.random.split(k_train, steps)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc or f"ssvi sparsity {sparsity}", leave=False)
    # compiled scans of `update_every` steps (one compile), the last one possibly shorter
    for start in range(0, steps, update_every):
        chunk = keys[start:start + update_every]
        variational, state, chunk_losses = run_fn(variational, state, chunk, x, y)
        losses.extend(np.asarray(chunk_losses).tolist())
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    # step time: the compiled training chunk again (no second compile), past `end_step` so without
    # a subspace update, results discarded; per step = chunk time / chunk length
    chunk = keys[:min(update_every, steps)]
    trained = variational, state

    def step_seconds():  # already compiled and run: no warm-up call
        t0 = time.process_time()
        jax.block_until_ready(run_fn(*trained, chunk, x, y))
        return (time.process_time() - t0) / len(chunk)

    times = [step_seconds() for _ in range(timing_repeats)]
    post = variational._replace(mask=masks_of(state)[0])
    return {"posterior": post, "losses": losses,
            "step_seconds": float(np.median(times)) if times else float("nan"),
            "time_step": step_seconds}


def evaluate_bnn(key: jax.Array, post: B.Posterior, x: np.ndarray, y: np.ndarray, *,
                 samples: int = 32, fast_compile: bool = False) -> dict[str, Any]:
    """Accuracy, NLL, ECE (15 bins) and mean predictive entropy of the MC predictive (and the
    probabilities themselves under ``"probs"``), one compiled program per posterior shape
    (``fast_compile``: compiled by `sparsejax.demo.context.fast_jit`; the vmapped predictive
    compiles in ~1 s there instead of ~6 s at XLA's default level)."""
    probs, metrics = _evaluate(fast_compile, samples)(key, post, jnp.asarray(x), jnp.asarray(y))
    return {**{k: float(v) for k, v in metrics.items()}, "probs": probs}


@functools.lru_cache(maxsize=8)
def _evaluate(fast_compile: bool, samples: int):
    def evaluate(key, post, x, y):
        probs = B.predict(lambda k, xb: jax.nn.softmax(bnn_apply(post, k, xb)), key, x,
                          samples=samples)
        return probs, {"accuracy": B.accuracy(probs, y), "nll": B.nll(probs, y),
                       "ece": B.expected_calibration_error(probs, y, bins=15),
                       "entropy": jnp.mean(B.predictive_entropy(probs))}

    return fast_jit(evaluate, enabled=fast_compile)


def compare(key: jax.Array, *, steps: int, density: float = 0.1, data: tuple | None = None,
            batch_size: int = 128, progress: bool = False, fast_compile: bool = False,
            **kwargs: Any) -> list[dict]:
    """Dense mean-field VI and SSVI at ``density`` trained the same steps on digits: one row each.

    ``data`` is ``(x_train, y_train, x_test, y_test)``; default `load_digits_split` (seed 0).
    """
    x_tr, y_tr, x_te, y_te = load_digits_split(0) if data is None else data
    repeats = kwargs.pop("timing_repeats", 3)
    rows, timers = [], []
    for name, sparsity in (("dense VI", 0.0), (f"SSVI {density:.0%}", 1.0 - density)):
        k_train, k_eval = jax.random.split(key)
        result = train_bnn(k_train, x_tr, y_tr, sparsity=sparsity, steps=steps,
                           batch_size=batch_size, progress=progress, desc=name,
                           fast_compile=fast_compile, timing_repeats=0, **kwargs)
        timers.append(result["time_step"])
        post = result["posterior"]
        metrics = evaluate_bnn(k_eval, post, x_te, y_te, fast_compile=fast_compile)
        metrics.pop("probs")
        flops = B.training_flops(post, batch_size)
        params = sum(int(jnp.sum(m)) for m in jax.tree.leaves(post.mask))
        rows.append({"model": name, "sparsity": sparsity, **metrics, "weights": params,
                     "flops_per_step": flops["sparse"],
                     "final_loss": float(np.mean(result["losses"][-20:]))})
    # step times: the two trained models' chunks rerun in interleaved rounds; the ratio is the
    # median of the per-round ratios
    times = interleaved_rounds(timers, repeats)
    dense = rows[0]
    for i, r in enumerate(rows):
        r["flops_ratio"] = r["flops_per_step"] / dense["flops_per_step"]
        r["step_seconds"] = float(np.median(times[:, i])) if repeats else float("nan")
        r["step_time_ratio"] = (float(np.median(times[:, i] / times[:, 0])) if repeats
                                else float("nan"))
    return rows


COLUMNS = ("model", "accuracy", "NLL", "ECE", "entropy", "weights", "FLOPs ratio", "step ratio")


def print_rows(rows: list[dict], title: str, caption: str | None = None) -> None:
    """The comparison table (`sparsejax.demo._table.print_table`)."""
    print_table(title, COLUMNS, [(r["model"], r["accuracy"], r["nll"], r["ece"], r["entropy"],
                                  r["weights"], r["flops_ratio"], r["step_time_ratio"])
                                 for r in rows], caption=caption)


def run(ctx: DemoContext) -> dict:
    """Dense mean-field VI vs SSVI at 10% density, the same steps; print the table."""
    steps = 100 if ctx.quick else int(ctx.options.get("ssvi_steps", 600))
    sizes = (64, 64, 10) if ctx.quick else (64, 256, 256, 10)
    rows = compare(ctx.next_key(), steps=steps, sizes=sizes, progress=ctx.progress,
                   data=(ctx.x_train, ctx.y_train, ctx.x_test, ctx.y_test), fast_compile=True)
    print_rows(rows, "SSVI: dense mean-field VI vs sparse subspace VI at 10% density (digits)",
               caption=f"{steps} steps each; 32-sample MC predictive on the test split; ECE with 15 "
                       "bins; FLOPs ratio = LRT matmul FLOPs of a training step vs dense VI; step "
                       "ratio = measured CPU time per step of the compiled training scan, the two "
                       "models' reruns interleaved (one program for both: masked dense matmuls on "
                       "CPU; XLA backend optimisation level 1, as the demo compiles its training "
                       "scans)")
    return {"steps": steps, "rows": rows}


def plot(ax, result: dict, results: dict) -> None:
    """Test accuracy and ECE of dense VI and SSVI at 10% density."""
    del results
    rows = result.get("rows", [])
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["accuracy"] for r in rows], width=0.4, label="test accuracy")
    ax.bar(xs + 0.2, [r["ece"] for r in rows], width=0.4, label="ECE (15 bins)")
    ax.set_xticks(xs, [r["model"] for r in rows])
    ax.set_ylabel("test accuracy")
    ax.set_title("SSVI vs dense VI")
    ax.legend()

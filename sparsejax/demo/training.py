"""Demo stage: sparse training from scratch with `sparsejax.training` on digits.

Dense Adam against gradual magnitude pruning to 90% (Zhu & Gupta, `sparsejax.training.prune`),
RigL at 90% with ERK (`sparsejax.training.rigl`) and 2:4 SR-STE along the kernels' reduction axis
(`sparsejax.training.sr_ste`), each trained from the same initialisation for the same steps; a
table of test accuracy, realised sparsity of the kernels and step time against the dense step, and
(with ``--out``) curves of accuracy and sparsity over the steps.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import sparsejax as sj
from sparsejax import training as T
from sparsejax.demo._table import print_table
from sparsejax.demo.context import (
    DemoContext,
    accuracy,
    fast_jit,
    init_mlp,
    interleaved_rounds,
    mlp_apply,
    random_draw,
)

METHODS = ("dense", "gradual magnitude 90%", "RigL 90% (ERK)", "2:4 SR-STE")


def nm_masks(params: Any) -> Any:
    """2:4 masks along the reduction axis (axis 0 of the ``[in, out]`` kernels)."""
    return sj.compute_masks(params, "nm", n=2, m=4, axis=0)


def make_method(name: str, steps: int, key: jax.Array, learning_rate: float = 1e-3
                ) -> tuple[optax.GradientTransformation, Callable, Callable]:
    """``(optimizer, forward_params, eval_params)`` of one method for a ``steps``-step run.

    ``forward_params(params)`` is what the loss sees (SR-STE masks the dense weights there);
    ``eval_params(params, opt_state)`` the weights a deployed model uses.
    """
    adam = optax.adam(learning_rate)
    update_every = max(1, steps // 50)
    if name == "dense":
        return adam, lambda p: p, lambda p, s: p
    if name.startswith("gradual"):
        schedule = sj.schedules.polynomial(0.9, steps // 10, int(steps * 0.6),
                                           frequency=update_every)
        return (T.prune(adam, schedule, update_every=update_every), lambda p: p,
                lambda p, s: p)
    if name.startswith("RigL"):
        return (T.rigl(adam, 0.9, allocation="erk", update_every=update_every,
                       end_step=max(int(steps * 0.75), update_every + 1), key=key),
                lambda p: p, lambda p, s: p)
    if name.startswith("2:4"):
        return (adam, lambda p: T.sr_ste(p, nm_masks, 2e-4),
                lambda p, s: sj.apply_masks(p, nm_masks(p)))
    raise ValueError(f"`name` must be one of {METHODS}; got {name!r}.")


def kernel_sparsity(params: Any) -> float:
    """Fraction of exact zeros in the kernels (the leaves with ``ndim >= 2``)."""
    return float(sj.sparsity([x for x in jax.tree.leaves(params) if x.ndim >= 2]).overall)


def train_method(name: str, x_train, y_train, x_test, y_test, *, steps: int, key: jax.Array,
                 batch_size: int = 128, eval_every: int | None = None, progress: bool = False,
                 learning_rate: float = 1e-3, fast_compile: bool = False) -> dict:
    """Train the digits MLP from scratch with one method; return accuracy, sparsity, the number of
    compilations of its training chunk (traces of the jitted scan), the curves (every
    ``eval_every`` steps) and, under ``"_timer"``, the compiled chunk with its final state and a
    chunk of batch indices for `time_steps`. ``fast_compile``: the chunk is compiled by
    `sparsejax.demo.context.fast_jit` (the demo)."""
    from tqdm.auto import tqdm

    k_init, k_method, k_data = jax.random.split(key, 3)
    params = init_mlp(k_init)
    tx, forward, deploy = make_method(name, steps, k_method, learning_rate)
    state = tx.init(params)

    def step(params, state, xb, yb):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(forward(p), xb),
                                                                   yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    traces = []  # one entry per trace of the chunk (each trace is one compile)

    def run_chunk(params, state, idx):
        traces.append(None)

        def body(carry, i):
            params, state, loss = step(*carry, x_train[i], y_train[i])
            return (params, state), loss

        (params, state), losses = jax.lax.scan(body, (params, state), idx)
        return params, state, losses

    run_chunk = fast_jit(run_chunk, enabled=fast_compile)
    eval_every = eval_every or max(1, steps // 20)
    n = x_train.shape[0]
    idx_all = random_draw("randint", k_data, (steps, min(batch_size, n)), minval=0, maxval=n)
    curve = []
    bar = tqdm(total=steps, desc=name, disable=not progress, leave=False)
    # compiled scans of `eval_every` steps between evaluations (one compile, plus a shorter tail)
    for start in range(0, steps, eval_every):
        params, state, losses = run_chunk(params, state, idx_all[start:start + eval_every])
        deployed = deploy(params, state)
        curve.append({"step": min(start + eval_every, steps),
                      "accuracy": accuracy(mlp_apply, deployed, x_test, y_test),
                      "sparsity": kernel_sparsity(deployed)})
        bar.update(min(eval_every, steps - start))
        if progress:
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}", refresh=False)
    bar.close()
    deployed = deploy(params, state)
    return {"method": name, "accuracy": accuracy(mlp_apply, deployed, x_test, y_test),
            "sparsity": kernel_sparsity(deployed), "compilations": len(traces),
            "curve": curve, "_timer": (run_chunk, params, state, idx_all[:eval_every])}


def time_steps(runs: list[dict], repeats: int) -> list[float]:
    """Seconds per step of each run: the median over ``repeats`` more runs of its compiled
    training chunk (the program that trained it: no second compile) from its latest state, divided
    by the chunk's length; the runs interleaved round-robin (`interleaved_rounds`)."""
    timers = [list(r["_timer"]) for r in runs]

    def rerun(i: int) -> float:
        chunk, params, state, idx = timers[i]
        t0 = time.perf_counter()
        params, state, _ = chunk(params, state, idx)
        jax.block_until_ready((params, state))
        timers[i][1:3] = [params, state]
        return (time.perf_counter() - t0) / idx.shape[0]

    times = interleaved_rounds([functools.partial(rerun, i) for i in range(len(runs))], repeats)
    return [float(np.median(times[:, i])) for i in range(len(runs))]


def run(ctx: DemoContext) -> dict:
    """Train every method from scratch for ``ctx.steps`` steps and tabulate them."""
    key = ctx.next_key()
    rows = [train_method(name, ctx.x_train, ctx.y_train, ctx.x_test, ctx.y_test,
                         steps=ctx.steps, key=key, progress=ctx.progress,
                         eval_every=max(1, ctx.steps // (4 if ctx.quick else 20)),
                         fast_compile=True)
            for name in METHODS]
    repeats = 3  # interleaved rounds; 5 cost ~1 s more and gave no steadier ratio on the shared CPU
    for r, seconds in zip(rows, time_steps(rows, repeats)):
        r.pop("_timer")
        r["step_seconds"] = seconds
        r["step_time_vs_dense"] = seconds / rows[0]["step_seconds"]
    print_table(
        f"== sparse training from scratch on digits (MLP 64-256-256-10, {ctx.steps} Adam steps, "
        f"same init) ==",
        ("method", "test accuracy", "vs dense", "kernel sparsity", "step ms", "step vs dense"),
        [(r["method"], r["accuracy"], f"{r['accuracy'] - rows[0]['accuracy']:+.4f}",
          r["sparsity"], f"{r['step_seconds'] * 1e3:.3f}", f"{r['step_time_vs_dense']:.2f}")
         for r in rows],
        caption="kernel sparsity: exact zeros of the deployed kernels (2:4: masked by the final "
                f"2:4 selection); step: median of {repeats} more runs of each method's compiled "
                "training chunk (a lax.scan; XLA backend optimisation level 1, as the demo compiles "
                "its training scans) per step, interleaved, batch 128 (this shared CPU, noisy)")
    return {"steps": ctx.steps, "rows": rows}


def plot(ax, result: dict, results: dict) -> None:
    """Test accuracy over the steps (solid) and kernel sparsity (dotted, right axis)."""
    twin = ax.twinx()
    for i, r in enumerate(result.get("rows", [])):
        color = f"C{i}"
        xs = [c["step"] for c in r["curve"]]
        ax.plot(xs, [c["accuracy"] for c in r["curve"]], "-", color=color, label=r["method"])
        twin.plot(xs, [c["sparsity"] for c in r["curve"]], ":", color=color)
    twin.set_ylabel("kernel sparsity (dotted)")
    twin.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.set_title("sparse training from scratch")

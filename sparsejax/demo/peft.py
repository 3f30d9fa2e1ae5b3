"""Demo stage: sparse fine-tuning (`sparsejax.peft`) of the trained digits MLP to a shifted task.

The task: the same digits mirrored left to right, which the trained model reads poorly. From the
trained weights, with the same Adam steps: full fine-tuning, a fixed random sparse delta
(`peft.train_delta`), SpIEL (`peft.spiel`, drop-and-grow of the delta's support), DSEE
(`peft.dsee`: rank 1 + a sparse part from the GreBsmo split) and a LoRA of rank 2 on every kernel
(``W + A B``, the usual baseline), the sparse methods at LoRA's trainable count; and PST
(`peft.pst`, ranks 1 + 1 plus row / column scores: 1.5x LoRA's count), which ends with 50%-sparse
kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import peft
from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext, fast_jit, mlp_apply

METHODS = ("pretrained (no tuning)", "full fine-tune", "sparse delta", "SpIEL", "DSEE r=1",
           "PST 50% sparse", "LoRA r=2")
PST_SPARSITY = 0.5
RANK = 2


def mirror(x: jax.Array) -> jax.Array:
    """Digits ``[n, 64]`` mirrored left to right (the shifted task)."""
    return x.reshape(-1, 8, 8)[:, :, ::-1].reshape(-1, 64)


def _lora_init(params: Any, key: jax.Array) -> dict:
    out = {}
    for (name, layer), k in zip(sorted(params.items()), jax.random.split(key, len(params))):
        n_in, n_out = layer["kernel"].shape
        out[name] = {"a": jax.random.normal(k, (n_in, RANK)) / np.sqrt(n_in),
                     "b": jnp.zeros((RANK, n_out))}
    return out


def _lora_apply(params: Any, lora: dict) -> Any:
    return {n: {**layer, "kernel": layer["kernel"] + lora[n]["a"] @ lora[n]["b"]}
            for n, layer in params.items()}


def _size(trainable: Any) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(trainable))


def _method(name: str, steps: int, density: float) -> tuple[Any, Any, Any, Any]:
    """``(init(base, key) -> trainable, to_params(base, trainable), optimizer, count(trainable)
    -> trainable values)`` of one method; ``init`` is ``None`` for DSEE (its GreBsmo split runs
    eagerly, in numpy)."""
    if name == "full fine-tune":
        return (lambda b, k: b), (lambda b, t: t), optax.adam(1e-3), _size
    if name == "LoRA r=2":
        return _lora_init, (lambda b, t: _lora_apply(b, t)), optax.adam(1e-2), _size
    if name.startswith("DSEE"):
        return (None, peft.dsee.apply, peft.dsee.train(optax.adam(1e-2)),
                peft.dsee.trainable_count)
    if name.startswith("PST"):
        return ((lambda b, k: peft.pst.init(b, key=k, weight_rank=1, mask_rank=1)),
                (lambda b, t, s=PST_SPARSITY: peft.pst.apply(b, t, s)), optax.adam(1e-2),
                peft.pst.trainable_count)
    tx = (peft.train_delta(optax.adam(1e-2)) if name == "sparse delta" else
          peft.spiel(optax.adam(1e-2), total_steps=steps, reselect_every=max(4, steps // 6),
                     accumulate_steps=2))
    return (lambda b, k: peft.sparse_delta(b, density, key=k)), peft.apply, tx, peft.delta_size


def _finetune(name: str, ctx: DemoContext, x: jax.Array, y: jax.Array, steps: int,
              density: float, key: jax.Array) -> tuple[Any, int]:
    """``(fine-tuned params, trainable count)`` of one method.

    The initialisation, the ``steps`` Adam steps (a `jax.lax.scan`) and the final params are one
    program per method, compiled at XLA's optimisation level 0 (`fast_jit`): on this small MLP
    the compile is nearly all of the cost (SpIEL's drop-and-grow, PST's scores)."""
    base = ctx.params
    k_init, k_data = jax.random.split(key)
    init, to_params, tx, count = _method(name, steps, density)
    sparse = name in ("sparse delta", "SpIEL") or name.startswith("DSEE")
    schedule = peft.pst.schedule(steps, PST_SPARSITY)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, xb), yb).mean()

    @functools.partial(fast_jit, level=0)
    def program(base, start, xs, ys):
        trainable = start if init is None else init(base, start)
        state = tx.init(trainable)

        def step(carry, batch):
            trainable, state = carry
            xb, yb, t = batch
            if sparse:  # the dense gradient at base + delta (SpIEL regrows from it)
                grads = jax.grad(loss)(to_params(base, trainable), xb, yb)
            elif name.startswith("PST"):  # the cubic schedule up to PST_SPARSITY
                grads = jax.grad(lambda f: loss(to_params(base, f, schedule(t)), xb, yb))(
                    trainable)
            else:
                grads = jax.grad(lambda f: loss(to_params(base, f), xb, yb))(trainable)
            updates, state = tx.update(grads, state, trainable)
            return (optax.apply_updates(trainable, updates), state), None

        (trainable, _), _ = jax.lax.scan(step, (trainable, state),
                                         (xs, ys, jnp.arange(steps)))
        return to_params(base, trainable), trainable

    start = (peft.dsee.init(base, rank=1, num_sparse=sum, key=k_init, rank_steps=4)
             if init is None else k_init)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_data))[-1])
    n, b = x.shape[0], min(128, x.shape[0])
    batches = np.stack([rng.choice(n, b, replace=False) for _ in range(steps)])
    params, trainable = program(base, start, x[batches], y[batches])
    return params, count(trainable)


def run(ctx: DemoContext) -> dict:
    """Fine-tune the trained MLP to mirrored digits with each method and tabulate them."""
    x_train, x_test = mirror(ctx.x_train), mirror(ctx.x_test)
    steps = max(20, ctx.finetune_steps // 3)
    kernels = sum(int(layer["kernel"].size) for layer in ctx.params.values())
    lora_count = sum(RANK * sum(layer["kernel"].shape) for layer in ctx.params.values())
    density = lora_count / kernels
    key = ctx.next_key()
    rows = []
    for name in METHODS:
        if name.startswith("pretrained"):
            params, count = ctx.params, 0
        else:
            params, count = _finetune(name, ctx, x_train, ctx.y_train, steps, density, key)
        rows.append({"method": name, "trainable": count,
                     "accuracy": float(jnp.mean(jnp.argmax(mlp_apply(params, x_test), -1)
                                                == ctx.y_test))})
    lora = rows[-1]["accuracy"]
    print_table(
        f"== sparse fine-tuning: the trained MLP on mirrored digits ({steps} Adam steps) ==",
        ("method", "trainable", "test accuracy", "vs LoRA"),
        [(r["method"], r["trainable"], r["accuracy"], f"{r['accuracy'] - lora:+.4f}")
         for r in rows],
        caption=f"sparse delta / SpIEL: {density:.1%} of each kernel (LoRA r={RANK}'s count); "
                "biases frozen in every method but the full fine-tune")
    return {"steps": steps, "density": density, "rows": rows}

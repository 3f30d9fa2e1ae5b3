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


def _finetune(name: str, ctx: DemoContext, x: jax.Array, y: jax.Array, steps: int,
              density: float, key: jax.Array) -> tuple[Any, int]:
    """``(fine-tuned params, trainable count)`` of one method."""
    base = ctx.params
    k_init, k_data = jax.random.split(key)
    if name == "full fine-tune":
        trainable, to_params, tx = base, (lambda t: t), optax.adam(1e-3)
        count = sum(int(a.size) for a in jax.tree.leaves(base))
    elif name == "LoRA r=2":
        trainable = fast_jit(_lora_init)(base, k_init)
        to_params, tx = (lambda t: _lora_apply(base, t)), optax.adam(1e-2)
        count = sum(int(a.size) for a in jax.tree.leaves(trainable))
    elif name.startswith("DSEE"):  # rank 1 + (in + out) sparse entries: LoRA r=2's count
        trainable = peft.dsee.init(base, rank=1, num_sparse=sum, key=k_init, rank_steps=4)
        to_params, tx = (lambda t: peft.dsee.apply(base, t)), peft.dsee.train(optax.adam(1e-2))
        count = peft.dsee.trainable_count(trainable)
    elif name.startswith("PST"):
        trainable = fast_jit(lambda b, k: peft.pst.init(b, key=k, weight_rank=1, mask_rank=1))(
            base, k_init)
        schedule = peft.pst.schedule(steps, PST_SPARSITY)
        to_params, tx = (lambda t, s=PST_SPARSITY: peft.pst.apply(base, t, s)), optax.adam(1e-2)
        count = peft.pst.trainable_count(trainable)
    else:
        trainable = peft.sparse_delta(base, density, key=k_init)
        to_params = lambda t: peft.apply(base, t)  # noqa: E731
        tx = (peft.train_delta(optax.adam(1e-2)) if name == "sparse delta" else
              peft.spiel(optax.adam(1e-2), total_steps=steps, reselect_every=max(4, steps // 6),
                         accumulate_steps=2))
        count = peft.delta_size(trainable)
    state = fast_jit(tx.init)(trainable)
    sparse = name in ("sparse delta", "SpIEL") or name.startswith("DSEE")

    @fast_jit
    def step(trainable, state, xb, yb, t):
        def loss(p):
            logits = mlp_apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        if sparse:  # the dense gradient at base + delta (SpIEL regrows from it)
            grads = jax.grad(loss)(to_params(trainable))
        elif name.startswith("PST"):  # the cubic schedule up to PST_SPARSITY
            grads = jax.grad(lambda f: loss(to_params(f, schedule(t))))(trainable)
        else:
            grads = jax.grad(lambda t: loss(to_params(t)))(trainable)
        updates, state = tx.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state

    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_data))[-1])
    n, b = x.shape[0], min(128, x.shape[0])
    batches = np.stack([rng.choice(n, b, replace=False) for _ in range(steps)])
    xs, ys = x[batches], y[batches]
    for t in range(steps):
        trainable, state = step(trainable, state, xs[t], ys[t], t)
    return fast_jit(to_params)(trainable), count


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

"""Demo stage: the MLP's second hidden layer as a top-2-of-8 mixture of experts.

The dense MLP is 64-256-256-10; its 256 x 256 hidden layer (65,536 weights) is replaced by
``relu(h + MoE(h))`` with 8 ReLU experts ``256 -> 64 -> 256``, top-2 routing with capacity
factor 1.25: ``2 experts x 2 x 256 x 64 = 65,536`` active expert weights per token, the dense
layer's count. Trained from scratch for `STEPS` steps (batch 128, Adam 3e-3, one ``lax.scan``:
a single compile) on cross-entropy + ``0.01 x load_balancing_loss + 0.001 x router_z_loss``.
Reports test accuracy next to the dense MLP's, the expert load histogram on the test split and
the fraction of tokens dropped.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.demo.context import DemoContext, fast_jit, init_mlp
from sparsejax.moe import MoEConfig, init_moe, moe_apply

CONFIG = MoEConfig(d_model=256, d_ff=64, num_experts=8, k=2, capacity_factor=1.25,
                   activation="relu", backend="einsum")
"""The einsum (Switch) dispatch: at 128 tokens per batch the cheapest backend to compile."""
STEPS = 400
"""Training steps (``quick``: 100): the stage must stay within a few seconds of CPU."""


def init(key: jax.Array) -> dict:
    """MLP params with ``dense_1`` replaced by ``moe`` (`sparsejax.moe.init_moe`)."""
    k_mlp, k_moe = jax.random.split(key)
    params = init_mlp(k_mlp)
    del params["dense_1"]
    params["moe"] = init_moe(k_moe, CONFIG)
    return params


def apply(params: dict, x: jax.Array):
    """Logits and the MoE's `MoEAux`."""
    h = jax.nn.relu(x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    y, aux = moe_apply(params["moe"], h, CONFIG)
    h = jax.nn.relu(h + y)
    return h @ params["dense_2"]["kernel"] + params["dense_2"]["bias"], aux


def _histogram(load: np.ndarray, width: int = 40) -> str:
    top = max(1, int(load.max()))
    return "\n".join(f"  expert {e}: {'#' * int(round(width * n / top)):<{width}} {int(n)}"
                     for e, n in enumerate(load))


def run(ctx: DemoContext) -> dict:
    """Train the MoE MLP and report accuracy, expert load and dropped tokens."""
    print("== mixture of experts: hidden layer 256x256 -> top-2 of 8 experts (256-64-256) ==")
    steps = 100 if ctx.quick else STEPS
    opt = optax.adam(3e-3)
    batch = min(128, ctx.x_train.shape[0])

    def step(carry, key, x_train, y_train):
        params, state = carry
        idx = jax.random.choice(key, x_train.shape[0], (batch,), replace=False)

        def loss_fn(p):
            logits, aux = apply(p, x_train[idx])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_train[idx]).mean()
            return ce + 0.01 * aux.load_balancing_loss + 1e-3 * aux.router_z_loss, aux

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), aux.dropped_fraction

    @fast_jit
    def train_and_test(k_init, k_train, x_train, y_train, x_test):
        """Init, train and evaluate in one program: a single compile."""
        params = init(k_init)
        (params, _), drops = jax.lax.scan(
            lambda c, k: step(c, k, x_train, y_train), (params, opt.init(params)),
            jax.random.split(k_train, steps))
        return drops, *apply(params, x_test)

    t0 = time.perf_counter()
    drops, logits, aux = jax.block_until_ready(train_and_test(
        ctx.next_key(), ctx.next_key(), ctx.x_train, ctx.y_train, ctx.x_test))
    drops = np.asarray(drops)
    seconds = time.perf_counter() - t0
    acc = float(jnp.mean(jnp.argmax(logits, -1) == ctx.y_test))
    load = np.asarray(aux.expert_load)
    active = CONFIG.k * 2 * CONFIG.d_model * CONFIG.d_ff
    print(f"  dense MLP test accuracy    {ctx.dense_accuracy:.4f}  (256x256 = 65536 weights)")
    print(f"  top-2 MoE test accuracy    {acc:.4f}  ({active} active expert weights per token, "
          f"{CONFIG.num_experts * active // CONFIG.k} in total)")
    print(f"  tokens dropped (no expert): test {float(aux.dropped_fraction):.4f}, "
          f"training mean {np.mean(drops):.4f}; load-balancing loss "
          f"{float(aux.load_balancing_loss):.3f} ({CONFIG.k} = balanced and uniform)")
    print("  expert load on the test split (tokens per expert, top-2):")
    print(_histogram(load))
    print(f"  ({steps} steps, compile included, in {seconds:.1f} s)")
    return {"accuracy": acc, "dense_accuracy": ctx.dense_accuracy, "steps": steps,
            "expert_load": load.tolist(), "dropped_fraction_test": float(aux.dropped_fraction),
            "dropped_fraction_train_mean": float(np.mean(drops)),
            "load_balancing_loss": float(aux.load_balancing_loss),
            "active_expert_weights": active, "dense_weights": 256 * 256, "seconds": seconds}

"""Demo stage: the MLP's second hidden layer as a top-2-of-8 mixture of experts.

The dense MLP is 64-256-256-10; its 256 x 256 hidden layer (65,536 weights) is replaced by
``relu(h + MoE(h))`` with 8 ReLU experts ``256 -> 64 -> 256``, top-2 routing with capacity
factor 1.25: ``2 experts x 2 x 256 x 64 = 65,536`` active expert weights per token, the dense
layer's count. Trained from scratch for the dense model's steps with Adam, cross-entropy +
``0.01 x load_balancing_loss + 0.001 x router_z_loss``. Reports test accuracy next to the dense
MLP's, the expert load histogram on the test split and the fraction of tokens dropped.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax.demo.context import DemoContext, init_mlp
from sparsejax.moe import MoEConfig, init_moe, moe_apply

CONFIG = MoEConfig(d_model=256, d_ff=64, num_experts=8, k=2, capacity_factor=1.25,
                   activation="relu", tile=64)


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
    steps = 150 if ctx.quick else ctx.steps
    params = init(ctx.next_key())
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss_fn(p):
            logits, aux = apply(p, xb)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return ce + 0.01 * aux.load_balancing_loss + 1e-3 * aux.router_z_loss, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, aux

    n = ctx.x_train.shape[0]
    key = ctx.next_key()
    drops = []
    t0 = time.perf_counter()
    for _ in range(steps):
        key, sub = jax.random.split(key)
        idx = jax.random.choice(sub, n, (min(128, n),), replace=False)
        params, state, loss, aux = step(params, state, ctx.x_train[idx], ctx.y_train[idx])
        drops.append(float(aux.dropped_fraction))
    seconds = time.perf_counter() - t0
    logits, aux = jax.jit(apply)(params, ctx.x_test)
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
    print(f"  ({steps} steps in {seconds:.1f} s)")
    return {"accuracy": acc, "dense_accuracy": ctx.dense_accuracy, "steps": steps,
            "expert_load": load.tolist(), "dropped_fraction_test": float(aux.dropped_fraction),
            "dropped_fraction_train_mean": float(np.mean(drops)),
            "load_balancing_loss": float(aux.load_balancing_loss),
            "active_expert_weights": active, "dense_weights": 256 * 256, "seconds": seconds}

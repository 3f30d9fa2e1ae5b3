"""Deja Vu: a low-rank predictor of the active MLP neurons (FMInference/DejaVu
``sparse_predictor/``).

Per layer, ``logits = (x @ A) @ B`` (``A [d, r]``, ``B [r, f]``, no bias: the reference's
``Linear(d, D) -> Linear(D, 4d)``) predicts which neurons of the MLP are active
(``activation > 0``) from the layer input ``x``. Training loss (``trainer_mlp.py``): the binary
cross-entropy of ``sigmoid(logits)`` against ``y = act > 0``, weighted per entry by
``y * (1 - w) + w`` with ``w = mean(y) + 0.005`` (so the rare active neurons weigh ``1 - w``, the
inactive ``w``), averaged; AdamW with weight decay 0.01. At inference a neuron is computed when
``sigmoid(logits) >= 0.5`` (`dejavu_predict`), or the top-``k`` logits are kept.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_float_array, check_int, check_positive_float

__all__ = ["DejaVuPredictor", "dejavu_init", "dejavu_loss", "dejavu_predict", "dejavu_train"]


class DejaVuPredictor(NamedTuple):
    """Low-rank predictor ``(x @ a) @ b``: ``a [d, r]``, ``b [r, f]``."""

    a: Float[Array, "d r"]
    b: Float[Array, "r f"]


def dejavu_init(key: Array, d: int, rank: int, f: int) -> DejaVuPredictor:
    """Predictor initialised like ``torch.nn.Linear`` (uniform ``+-1/sqrt(fan_in)``)."""
    d, rank, f = (check_int(v, n, minimum=1) for v, n in ((d, "d"), (rank, "rank"), (f, "f")))
    ka, kb = jax.random.split(key)
    a = jax.random.uniform(ka, (d, rank), minval=-1, maxval=1) / jnp.sqrt(d)
    b = jax.random.uniform(kb, (rank, f), minval=-1, maxval=1) / jnp.sqrt(rank)
    return DejaVuPredictor(a, b)


def dejavu_loss(p: DejaVuPredictor, x: Float[Array, "n d"],
                acts: Float[Array, "n f"]) -> Float[Array, ""]:
    """The reference's weighted BCE of ``sigmoid((x a) b)`` against ``acts > 0``."""
    y = (acts > 0).astype(jnp.float32)
    logits = (x @ p.a) @ p.b
    w = jnp.mean(y) + 0.005
    weight = y * (1 - w) + w
    # torch's binary_cross_entropy on probabilities clamps the logs at -100
    log_p = jnp.maximum(jax.nn.log_sigmoid(logits), -100.0)
    log_q = jnp.maximum(jax.nn.log_sigmoid(-logits), -100.0)
    return jnp.mean(-weight * (y * log_p + (1 - y) * log_q))


def dejavu_train(
    key: Array,
    x: Float[Array, "n d"],
    acts: Float[Array, "n f"],
    *,
    rank: int,
    steps: int = 200,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
) -> DejaVuPredictor:
    """Fit a predictor on ``(layer input, MLP activation)`` pairs with AdamW.

    Args:
        key: PRNG key (init and minibatch order).
        x: layer inputs ``[n, d]``.
        acts: the MLP's activations ``[n, f]`` (labels ``acts > 0``).
        rank: predictor width ``r``.
        steps: optimizer steps.
        batch_size: rows per step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay (0.01 in the reference).

    Returns:
        The trained `DejaVuPredictor`.
    """
    x = jnp.asarray(check_float_array(x, "x"))
    acts = jnp.asarray(check_float_array(acts, "acts"))
    steps = check_int(steps, "steps", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    if x.ndim != 2 or acts.ndim != 2 or x.shape[0] != acts.shape[0]:
        raise ValueError(f"`x` [n, d] and `acts` [n, f] must have the same n; got {x.shape} and "
                         f"{acts.shape}.")
    kinit, kdata = jax.random.split(key)
    params = dejavu_init(kinit, x.shape[1], rank, acts.shape[1])
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    n = x.shape[0]
    bs = min(batch_size, n)

    @jax.jit
    def run(params, kdata):
        def step(carry, k):
            params, state = carry
            idx = jax.random.choice(k, n, (bs,), replace=False)
            g = jax.grad(dejavu_loss)(params, x[idx], acts[idx])
            upd, state = opt.update(g, state, params)
            return (optax.apply_updates(params, upd), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(kdata, steps))
        return params

    return run(params, kdata)


def dejavu_predict(p: DejaVuPredictor, x: Float[Array, "... d"],
                   k: int | None = None) -> Bool[Array, "... f"]:
    """Predicted active neurons: ``sigmoid(logits) >= 0.5``, or the top ``k`` logits per row."""
    logits = (x @ p.a) @ p.b
    if k is None:
        return logits >= 0
    k = check_int(k, "k", minimum=0, maximum=logits.shape[-1])
    kth = jax.lax.top_k(logits, max(k, 1))[0][..., -1:]
    return (logits >= kth) & (k > 0)

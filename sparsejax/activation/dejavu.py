"""Deja Vu: a low-rank predictor of the active MLP neurons (FMInference/DejaVu
``sparse_predictor/``).

Per layer, ``logits = (x @ A) @ B`` (``A [d, r]``, ``B [r, f]``, no bias: the reference's
``Linear(d, D) -> Linear(D, 4d)``) predicts which neurons of the MLP are active
(``activation > 0``) from the layer input ``x``. Training loss (``trainer_mlp.py``): the binary
cross-entropy of ``sigmoid(logits)`` against ``y = act > 0``, weighted per entry by
``y * (1 - w) + w`` with ``w = mean(y) + 0.005`` (so the rare active neurons weigh ``1 - w``, the
inactive ``w``), averaged; AdamW with weight decay 0.01. At inference a neuron is computed when
``sigmoid(logits) >= 0.5`` (`dejavu_predict`), or the top-``k`` logits are kept.

Attention heads (``sparse_predictor/main_att.py`` + ``trainer_att.py``): the same low-rank
predictor (``Linear(d, D) -> Linear(D, heads)``, no bias) maps a token's hidden state to one
logit per head. The label of a token is its top ``int(heads * k)`` heads (``k = 0.7``) by the
norm of each head's attention output (``attn_output.norm(dim=-1)`` before the output projection,
collected by ``hf_opt_module_save.py``; `dejavu_head_norms`); the loss is the same weighted BCE
with ``w = mean(y)`` (no ``+ 0.005``): `dejavu_head_loss`, `dejavu_train_heads`. At inference
the top ``topk`` logits per token select the heads that are computed (``prepare_head_mask``:
``dejavu_predict(p, x, k=topk)``); the reference feeds the predictor of layer ``l`` the input
of layer ``l - 1`` (its look-ahead), which is the caller's choice of ``x`` here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_float, check_float_array, check_int, check_positive_float

__all__ = ["DejaVuPredictor", "dejavu_head_labels", "dejavu_head_loss", "dejavu_head_norms",
           "dejavu_init", "dejavu_loss", "dejavu_predict", "dejavu_train", "dejavu_train_heads"]


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


def _weighted_bce(logits: Array, y: Array, w: Array) -> Array:
    """Mean of ``-(y (1 - w) + w) (y log p + (1 - y) log(1 - p))``, ``p = sigmoid(logits)``."""
    weight = y * (1 - w) + w
    # torch's binary_cross_entropy on probabilities clamps the logs at -100
    log_p = jnp.maximum(jax.nn.log_sigmoid(logits), -100.0)
    log_q = jnp.maximum(jax.nn.log_sigmoid(-logits), -100.0)
    return jnp.mean(-weight * (y * log_p + (1 - y) * log_q))


def dejavu_loss(p: DejaVuPredictor, x: Float[Array, "n d"],
                acts: Float[Array, "n f"]) -> Float[Array, ""]:
    """The reference's weighted BCE of ``sigmoid((x a) b)`` against ``acts > 0``."""
    y = (acts > 0).astype(jnp.float32)
    return _weighted_bce((x @ p.a) @ p.b, y, jnp.mean(y) + 0.005)


def dejavu_head_norms(ctx: Float[Array, "*tokens heads head_dim"]) -> Float[Array, "*tokens heads"]:
    """Deja Vu's head label source: the norm of each head's attention output.

    Args:
        ctx: per-head attention outputs ``softmax(q k^T) v`` before the output projection,
            ``[..., heads, head_dim]``.

    Returns:
        ``[..., heads]`` L2 norms over ``head_dim``.
    """
    ctx = check_float_array(ctx, "ctx", min_ndim=2)
    return jnp.linalg.norm(ctx.astype(jnp.float32), axis=-1)


def dejavu_head_labels(head_norms: Float[Array, "n heads"], k: float = 0.7) -> Float[Array, "n heads"]:
    """``trainer_att.generate_label``: 1 on each row's top ``int(heads * k)`` heads, else 0.

    Args:
        head_norms: ``[n, heads]`` per-head output norms (`dejavu_head_norms`).
        k: fraction of heads marked active, in ``[0, 1]`` (0.7 in the reference).

    Returns:
        float32 ``[n, heads]`` one-hot rows (ties broken towards the lower head index).
    """
    head_norms = check_float_array(head_norms, "head_norms", min_ndim=2)
    k = check_float(k, "k", minimum=0.0, maximum=1.0)
    h = head_norms.shape[-1]
    top = int(h * k)
    if top == 0:
        return jnp.zeros(head_norms.shape, jnp.float32)
    idx = jax.lax.top_k(head_norms, top)[1]
    return jnp.sum(jax.nn.one_hot(idx, h, dtype=jnp.float32), axis=-2)


def dejavu_head_loss(p: DejaVuPredictor, x: Float[Array, "n d"],
                     head_norms: Float[Array, "n heads"], k: float = 0.7) -> Float[Array, ""]:
    """``trainer_att.py``'s loss: weighted BCE of ``sigmoid((x a) b)`` against
    `dejavu_head_labels` with ``w = mean(y)``."""
    y = dejavu_head_labels(head_norms, k)
    return _weighted_bce((x @ p.a) @ p.b, y, jnp.mean(y))


def _fit(key, x, y, loss, rank, steps, batch_size, learning_rate, weight_decay):
    """AdamW on ``loss(params, x[idx], y[idx])`` over random minibatches (``lax.scan``)."""
    x = jnp.asarray(check_float_array(x, "x"))
    steps = check_int(steps, "steps", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` [n, d] and the labels [n, f] must have the same n; got {x.shape} "
                         f"and {y.shape}.")
    kinit, kdata = jax.random.split(key)
    params = dejavu_init(kinit, x.shape[1], rank, y.shape[1])
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    n = x.shape[0]
    bs = min(batch_size, n)

    @jax.jit
    def run(params, kdata):
        def step(carry, k):
            params, state = carry
            idx = jax.random.choice(k, n, (bs,), replace=False)
            g = jax.grad(loss)(params, x[idx], y[idx])
            upd, state = opt.update(g, state, params)
            return (optax.apply_updates(params, upd), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(kdata, steps))
        return params

    return run(params, kdata)


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
    """Fit an MLP-neuron predictor on ``(layer input, MLP activation)`` pairs with AdamW.

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
    acts = jnp.asarray(check_float_array(acts, "acts"))
    return _fit(key, x, acts, dejavu_loss, rank, steps, batch_size, learning_rate, weight_decay)


def dejavu_train_heads(
    key: Array,
    x: Float[Array, "n d"],
    head_norms: Float[Array, "n heads"],
    *,
    rank: int,
    k: float = 0.7,
    steps: int = 200,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
) -> DejaVuPredictor:
    """Fit an attention-head predictor (``trainer_att.py``) with AdamW.

    Args:
        key: PRNG key (init and minibatch order).
        x: predictor inputs ``[n, d]`` (the reference: the input of the previous layer).
        head_norms: ``[n, heads]`` per-head attention-output norms (`dejavu_head_norms`).
        rank: predictor width ``D``.
        k: fraction of heads labelled active per token (0.7).
        steps: optimizer steps.
        batch_size: rows per step (1024 in the reference).
        learning_rate: AdamW learning rate (1e-3).
        weight_decay: AdamW weight decay (0.01).

    Returns:
        The trained `DejaVuPredictor` (``b [rank, heads]``); heads to compute:
        ``dejavu_predict(p, x, k=topk)``.
    """
    head_norms = jnp.asarray(check_float_array(head_norms, "head_norms", min_ndim=2))
    k = check_float(k, "k", minimum=0.0, maximum=1.0)

    def loss(p, xb, nb):
        return dejavu_head_loss(p, xb, nb, k)

    return _fit(key, x, head_norms, loss, rank, steps, batch_size, learning_rate, weight_decay)


def dejavu_predict(p: DejaVuPredictor, x: Float[Array, "... d"],
                   k: int | None = None) -> Bool[Array, "... f"]:
    """Predicted active neurons: ``sigmoid(logits) >= 0.5``, or the top ``k`` logits per row."""
    logits = (x @ p.a) @ p.b
    if k is None:
        return logits >= 0
    k = check_int(k, "k", minimum=0, maximum=logits.shape[-1])
    kth = jax.lax.top_k(logits, max(k, 1))[0][..., -1:]
    return (logits >= kth) & (k > 0)

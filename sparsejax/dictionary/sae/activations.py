"""Sparsifying activations of sparse autoencoders: pre-activations in, sparse codes out.

Every function maps pre-activations ``pre`` of shape ``[..., d_sae]`` to codes of the same shape
with most entries exactly zero, and is differentiable (the gradient flows to the kept entries).
Ties are broken towards the lower index (``jax.lax.top_k``), so kept counts are exact.

Conventions (from SAELens ``saes/*.py``, EleutherAI/sparsify and openai/sparse_autoencoder):

* **TopK, ReLU-first vs top-k-first.** sparsify applies ReLU and then keeps the k largest;
  SAELens and openai keep the k largest pre-activations and then apply ReLU. Both give the *same
  dense codes* (an entry is kept iff it is among the k largest and positive) and the same
  gradient; they differ only in the ``(values, indices)`` form: with fewer than k positive
  pre-activations ReLU-first returns zero values at arbitrary (lowest-index) positions while
  top-k-first returns the indices of the largest negative pre-activations with value zero.
  Either way a row has *at most* k nonzeros, exactly k when it has at least k positive entries.
* **BatchTopK / Mutual Choice.** The ``k * B`` (resp. ``total``) largest ReLU'd entries of the whole
  ``[B, d_sae]`` matrix are kept (SAELens ``BatchTopK``; Ayonrinde 2024 "Mutual Choice").
* **Feature Choice.** Each latent keeps its ``m`` largest (positive) tokens of the batch.
* **JumpReLU.** ``z * H(z - theta)`` with the rectangle-kernel straight-through estimator for
  ``theta`` (Rajamanoharan et al. 2024; SAELens ``JumpReLU``/``Step``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    check_choice,
    check_float,
    check_float_array,
    check_int,
)

__all__ = [
    "abs_topk",
    "batch_topk",
    "feature_choice",
    "gradient_topk",
    "jumprelu",
    "jumprelu_step",
    "mutual_choice",
    "rectangle",
    "threshold_activation",
    "topk",
    "topk_indices",
    "zipf_capacities",
]


def _row_mask(idx: Int[Array, "... k"], n: int) -> jax.Array:
    """Boolean ``[..., n]`` mask with True at ``idx`` along the last axis."""
    flat = idx.reshape(-1, idx.shape[-1])
    rows = jnp.arange(flat.shape[0])[:, None]
    mask = jnp.zeros((flat.shape[0], n), bool).at[rows, flat].set(True)
    return mask.reshape(*idx.shape[:-1], n)


def topk_indices(
    pre: Float[Array, "... d_sae"], k: int, *, order: str = "relu_first"
) -> tuple[Float[Array, "... k"], Int[Array, "... k"]]:
    """Sparse ``(values, indices)`` form of `topk`.

    Args:
        pre: pre-activations ``[..., d_sae]``.
        k: kept latents per row, ``1 <= k <= d_sae``.
        order: ``"relu_first"`` (ReLU then top-k, as EleutherAI/sparsify) or ``"topk_first"``
            (top-k then ReLU, as SAELens and openai/sparse_autoencoder).

    Returns:
        ``values [..., k]`` (non-negative) and ``indices [..., k]`` (int32), sorted by value.
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    k = check_int(k, "k", minimum=1, maximum=pre.shape[-1])
    check_choice(order, "order", ("relu_first", "topk_first"))
    if order == "relu_first":
        values, indices = jax.lax.top_k(jax.nn.relu(pre), k)
    else:
        values, indices = jax.lax.top_k(pre, k)
        values = jax.nn.relu(values)
    return values, indices


def topk(pre: Float[Array, "... d_sae"], k: int, *, order: str = "relu_first"
         ) -> Float[Array, "... d_sae"]:
    """TopK activation: keep the k largest entries of each row, then ReLU (or the reverse).

    Args:
        pre: pre-activations ``[..., d_sae]``.
        k: kept latents per row, ``1 <= k <= d_sae``.
        order: ``"relu_first"`` or ``"topk_first"``; identical dense codes (see the module
            docstring), offered for parity with the two conventions of `topk_indices`.

    Returns:
        Codes ``[..., d_sae]`` with at most k nonzeros per row (exactly k when a row has at least
        k positive entries).
    """
    _, indices = topk_indices(pre, k, order=order)
    mask = _row_mask(indices, pre.shape[-1])
    return jnp.where(mask, jax.nn.relu(pre), jnp.zeros((), pre.dtype))


def gradient_topk(
    pre: Float[Array, "... d_sae"],
    grad: Float[Array, "... d_out"],
    w_dec: Float[Array, "d_sae d_out"],
    k: int,
    *,
    beta: float = 1.0,
) -> Float[Array, "... d_sae"]:
    """g-SAE's gradient-aware TopK: select by ``z + beta z |W_dec grad|``, output ``z`` there.

    ``z = relu(pre)``; each latent's score adds its activation times the magnitude of the
    downstream loss's derivative along its decoder direction, ``|W_dec[i] . grad|`` (Olmo et al.
    2024, "Features that make a difference"). The k best-scoring latents of each row keep their
    activation ``z``; the others are 0. The selection is gradient-free (scores are
    stop-gradient); the kept codes are differentiable as in `topk`. ``beta = 0`` is `topk`
    exactly.

    Args:
        pre: pre-activations ``[..., d_sae]``.
        grad: ``dL/dx`` of the downstream loss at the reconstructed activation, ``[..., d_out]``
            with ``pre``'s leading shape.
        w_dec: decoder ``[d_sae, d_out]``.
        k: kept latents per row, ``1 <= k <= d_sae``.
        beta: weight of the gradient term, ``>= 0``.

    Returns:
        Codes ``[..., d_sae]`` with at most k nonzeros per row.
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    k = check_int(k, "k", minimum=1, maximum=pre.shape[-1])
    beta = check_float(beta, "beta", minimum=0.0)
    grad = check_float_array(grad, "grad", min_ndim=1)
    w_dec = check_float_array(w_dec, "w_dec", min_ndim=2)
    if w_dec.shape != (pre.shape[-1], grad.shape[-1]):
        raise ValueError(f"`w_dec` must have shape (d_sae, d_out)=({pre.shape[-1]}, "
                         f"{grad.shape[-1]}) for pre {pre.shape} and grad {grad.shape}; got "
                         f"{w_dec.shape}")
    if grad.shape[:-1] != pre.shape[:-1]:
        raise ValueError(f"`grad` must have the leading shape of `pre` {pre.shape[:-1]}; got "
                         f"{grad.shape}")
    z = jax.nn.relu(pre)
    sg = jax.lax.stop_gradient
    effect = jnp.abs(sg(grad).astype(pre.dtype) @ sg(w_dec).astype(pre.dtype).T)
    score = sg(z) + beta * sg(z) * effect
    _, indices = jax.lax.top_k(score, k)
    return jnp.where(_row_mask(indices, pre.shape[-1]), z, jnp.zeros((), pre.dtype))


def abs_topk(pre: Float[Array, "... d_sae"], k: int) -> Float[Array, "... d_sae"]:
    """AbsTopK: keep the k entries of largest magnitude per row, sign kept (no ReLU).

    Args:
        pre: pre-activations ``[..., d_sae]``.
        k: kept latents per row, ``1 <= k <= d_sae``.

    Returns:
        Signed codes ``[..., d_sae]``; exactly k nonzeros per row unless a kept entry is 0.
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    k = check_int(k, "k", minimum=1, maximum=pre.shape[-1])
    _, indices = jax.lax.top_k(jnp.abs(pre), k)
    return jnp.where(_row_mask(indices, pre.shape[-1]), pre, jnp.zeros((), pre.dtype))


def mutual_choice(pre: Float[Array, "... d_sae"], total: int) -> Float[Array, "... d_sae"]:
    """Mutual Choice: keep the ``total`` largest ReLU'd entries of the whole score matrix.

    The budget is shared freely between tokens and latents (Ayonrinde 2024); this is the same
    allocation as BatchTopK with ``total = k * n_tokens``.

    Args:
        pre: pre-activations ``[..., d_sae]`` (all leading axes form the batch).
        total: kept entries in the whole array, ``1 <= total <= pre.size``.

    Returns:
        Codes of ``pre``'s shape with at most ``total`` nonzeros (exactly ``total`` when at least
        that many entries are positive).
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    total = check_int(total, "total", minimum=1, maximum=pre.size)
    acts = jax.nn.relu(pre)
    flat = acts.reshape(-1)
    _, idx = jax.lax.top_k(flat, total)
    mask = jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(pre.shape)
    return jnp.where(mask, acts, jnp.zeros((), pre.dtype))


def batch_topk(pre: Float[Array, "... d_sae"], k: int) -> Float[Array, "... d_sae"]:
    """BatchTopK (training mode): keep the top ``k * B`` ReLU'd entries over the batch.

    ``B`` is the number of rows (the product of the leading axes), so rows get k latents on
    average (SAELens ``BatchTopK``; Bussmann et al. 2024). At inference use
    `threshold_activation` with the threshold tracked during training.

    Args:
        pre: pre-activations ``[..., d_sae]``.
        k: average kept latents per row, ``1 <= k <= d_sae``.

    Returns:
        Codes with at most ``k * B`` nonzeros in total.
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    k = check_int(k, "k", minimum=1, maximum=pre.shape[-1])
    rows = pre.size // pre.shape[-1]
    return mutual_choice(pre, k * rows)


def threshold_activation(pre: Float[Array, "... d_sae"], threshold: Float[Array, "..."]
                         ) -> Float[Array, "... d_sae"]:
    """``pre * (pre > threshold)`` (the BatchTopK inference rule; no gradient to ``threshold``).

    Args:
        pre: pre-activations ``[..., d_sae]``.
        threshold: a scalar or per-latent ``[d_sae]`` threshold (>= 0 gives non-negative codes).
    """
    pre = check_float_array(pre, "pre", min_ndim=1)
    threshold = jax.lax.stop_gradient(jnp.asarray(threshold, pre.dtype))
    return jnp.where(pre > threshold, pre, jnp.zeros((), pre.dtype))


def feature_choice(pre: Float[Array, "n d_sae"], m: int | Int[Array, " d_sae"]
                   ) -> Float[Array, "n d_sae"]:
    """Feature Choice: each latent keeps at most ``m`` tokens (its largest positive entries).

    Args:
        pre: pre-activations ``[n_tokens, d_sae]`` (leading axes are flattened into tokens).
        m: per-latent capacity: an int in ``[1, n_tokens]`` or an int array ``[d_sae]`` of
            capacities in ``[0, n_tokens]`` (e.g. `zipf_capacities`).

    Returns:
        Codes of ``pre``'s shape; column ``j`` has at most ``m_j`` nonzeros.
    """
    pre = check_float_array(pre, "pre", min_ndim=2)
    shape = pre.shape
    flat = pre.reshape(-1, shape[-1])
    n, f = flat.shape
    if isinstance(m, int) and not isinstance(m, bool):
        m_max = check_int(m, "m", minimum=1, maximum=n)
        keep_count = jnp.full((f,), m_max)
    else:
        m_arr = jnp.asarray(m)
        if not jnp.issubdtype(m_arr.dtype, jnp.integer):
            raise TypeError(f"`m` must be an int or an integer array; got dtype {m_arr.dtype}")
        if m_arr.shape != (f,):
            raise ValueError(f"`m` as an array must have shape (d_sae,)=({f},); got {m_arr.shape}")
        m_max = n
        keep_count = m_arr
    acts = jax.nn.relu(flat)
    _, idx = jax.lax.top_k(acts.T, m_max)  # [f, m_max] token indices per latent
    keep = jnp.arange(m_max)[None, :] < keep_count[:, None]
    mask = jnp.zeros((f, n), bool).at[jnp.arange(f)[:, None], idx].set(keep).T
    return jnp.where(mask, acts, jnp.zeros((), pre.dtype)).reshape(shape)


def zipf_capacities(n_latents: int, total: int, *, exponent: float = 1.0) -> Int[Array, " n"]:
    """Per-latent capacities following a Zipf law, ``m_r ~ r^(-exponent)``, summing to ``total``.

    Rank 1 is latent 0. Rounding is by largest remainder so the sum is exactly ``total``.

    Args:
        n_latents: number of latents (>= 1).
        total: total budget (>= 0).
        exponent: Zipf exponent (>= 0; 0 gives uniform capacities).

    Returns:
        int32 capacities ``[n_latents]``.
    """
    n_latents = check_int(n_latents, "n_latents", minimum=1)
    total = check_int(total, "total", minimum=0)
    exponent = check_float(exponent, "exponent", minimum=0.0)
    w = np.arange(1, n_latents + 1, dtype=np.float64) ** (-exponent)
    raw = w / w.sum() * total
    base = np.floor(raw).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:rest]] += 1
    return jnp.asarray(base, jnp.int32)


def rectangle(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """The rectangle kernel ``1[-1/2 < x < 1/2]`` (in ``x``'s dtype)."""
    return ((x > -0.5) & (x < 0.5)).astype(x.dtype)


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast gradient back to ``shape``."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _jumprelu(x, threshold, bandwidth):
    return jnp.where(x > threshold, x, jnp.zeros((), x.dtype))


def _jumprelu_fwd(x, threshold, bandwidth):
    return _jumprelu(x, threshold, bandwidth), (x, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    x, threshold = res
    x_grad = jnp.where(x > threshold, g, jnp.zeros((), g.dtype))
    t_grad = -(threshold / bandwidth) * rectangle((x - threshold) / bandwidth) * g
    return x_grad, _sum_to_shape(t_grad, jnp.shape(threshold)).astype(threshold.dtype)


_jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _step(x, threshold, bandwidth):
    return (x > threshold).astype(x.dtype)


def _step_fwd(x, threshold, bandwidth):
    return _step(x, threshold, bandwidth), (x, threshold)


def _step_bwd(bandwidth, res, g):
    x, threshold = res
    t_grad = -(1.0 / bandwidth) * rectangle((x - threshold) / bandwidth) * g
    return jnp.zeros_like(x), _sum_to_shape(t_grad, jnp.shape(threshold)).astype(threshold.dtype)


_step.defvjp(_step_fwd, _step_bwd)


def jumprelu(x: Float[Array, "... d_sae"], threshold: Float[Array, " d_sae"],
             bandwidth: float = 0.05) -> Float[Array, "... d_sae"]:
    """JumpReLU ``x * H(x - threshold)`` with the rectangle-kernel straight-through gradient.

    Gradients (SAELens ``JumpReLU``): ``d/dx = H(x - theta)`` (no STE on ``x``) and
    ``d/dtheta = -(theta / eps) * rect((x - theta) / eps)``, summed over the batch axes.

    Args:
        x: pre-activations ``[..., d_sae]``.
        threshold: ``theta``, broadcastable to ``x`` (usually ``[d_sae]``, positive).
        bandwidth: kernel bandwidth ``eps > 0`` (static).
    """
    x = check_float_array(x, "x", min_ndim=0)
    bandwidth = check_float(bandwidth, "bandwidth", minimum=0.0, exclusive_minimum=True)
    return _jumprelu(x, jnp.asarray(threshold, x.dtype), bandwidth)


def jumprelu_step(x: Float[Array, "... d_sae"], threshold: Float[Array, " d_sae"],
                  bandwidth: float = 0.05) -> Float[Array, "... d_sae"]:
    """Heaviside ``H(x - threshold)`` with the rectangle-kernel gradient for ``threshold``.

    Used for the JumpReLU L0 loss ``sum_i H(z_i - theta_i)``: ``d/dx = 0`` and
    ``d/dtheta = -(1 / eps) * rect((x - theta) / eps)`` (SAELens ``Step``).

    Args:
        x: pre-activations ``[..., d_sae]``.
        threshold: ``theta``, broadcastable to ``x``.
        bandwidth: kernel bandwidth ``eps > 0`` (static).
    """
    x = check_float_array(x, "x", min_ndim=0)
    bandwidth = check_float(bandwidth, "bandwidth", minimum=0.0, exclusive_minimum=True)
    return _step(x, jnp.asarray(threshold, x.dtype), bandwidth)

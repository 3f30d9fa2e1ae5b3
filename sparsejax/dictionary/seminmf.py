"""Sparse semi-NMF of MLP activations (Ding, Li and Jordan 2010; the winner-take-all variant of
ordavid-s/snmf-mlp-decomposition).

``activations [n_samples, n_features] ~ weights @ features.T`` with ``weights >= 0``
``[n_samples, n_components]`` and sparse, signed ``features [n_features, n_components]``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_int

__all__ = ["SemiNMFResult", "semi_nmf", "semi_nmf_step"]


class SemiNMFResult(NamedTuple):
    """Result of `semi_nmf`.

    Attributes:
        features: ``[n_features, n_components]`` signed, at most ``keep`` non-zeros per column.
        weights: ``[n_samples, n_components]`` non-negative, unit-norm columns.
        loss: ``[n_iter]`` squared Frobenius error after each iteration.
    """

    features: Float[Array, "n_features n_components"]
    weights: Float[Array, "n_samples n_components"]
    loss: Float[Array, " n_iter"]


def _pos(x):
    return (jnp.abs(x) + x) * 0.5


def _neg(x):
    return (jnp.abs(x) - x) * 0.5


def semi_nmf_step(
    activations: Float[Array, "n_samples n_features"],
    weights: Float[Array, "n_samples n_components"],
    keep: int,
    reg: float = 1e-6,
    eps: float = 1e-12,
) -> tuple[Float[Array, "n_features n_components"], Float[Array, "n_samples n_components"]]:
    """One semi-NMF iteration (``A = activations.T``, ``G = weights``):

    1. ``F = A G (G^T G + reg I)^{-1}`` (least squares);
    2. winner-take-all: keep the ``keep`` entries of largest ``|F|`` in each column (ties kept);
    3. rescale: ``G`` columns to unit norm, ``F`` columns times the old norms;
    4. multiplicative update ``G <- G * sqrt((P+ + G Q-) / (P- + G Q+ + eps))`` with
       ``P = A^T F``, ``Q = F^T F`` and ``X+ = (|X| + X) / 2``, ``X- = (|X| - X) / 2``.

    Returns:
        ``(features, weights)``.
    """
    a = activations
    n_comp = weights.shape[1]
    gtg = weights.T @ weights + reg * jnp.eye(n_comp, dtype=weights.dtype)
    f = jnp.linalg.solve(gtg, (a.T @ weights).T).T  # A G (G^T G + reg I)^{-1}; gtg symmetric
    score = jnp.abs(f)
    thresh = jax.lax.top_k(score.T, keep)[0][:, -1]
    f = jnp.where(score >= thresh[None, :], f, 0)
    norms = jnp.maximum(jnp.linalg.norm(weights, axis=0, keepdims=True), 1e-8)
    g = weights / norms
    f = f * norms
    p = a @ f
    q = f.T @ f
    g = g * jnp.sqrt((_pos(p) + g @ _neg(q)) / (_neg(p) + g @ _pos(q) + eps))
    return f, g


@functools.partial(jax.jit, static_argnames=("keep", "n_iter"))
def _run(a, g0, keep, n_iter, reg):
    def body(carry, _):
        g, best_loss, best_f, best_g = carry
        f, g = semi_nmf_step(a, g, keep, reg)
        loss = jnp.sum((a - g @ f.T) ** 2)
        better = loss < best_loss
        return (g, jnp.where(better, loss, best_loss), jnp.where(better, f, best_f),
                jnp.where(better, g, best_g)), loss

    f0 = jnp.zeros((a.shape[1], g0.shape[1]), a.dtype)
    init = (g0, jnp.asarray(jnp.inf, a.dtype), f0, g0)
    (_, _, f, g), losses = jax.lax.scan(body, init, None, length=n_iter)
    return f, g, losses


def semi_nmf(
    activations: Float[Array, "n_samples n_features"],
    n_components: int,
    sparsity: float,
    *,
    key: Array,
    n_iter: int = 200,
    reg: float = 1e-6,
    init_weights: Float[Array, "n_samples n_components"] | None = None,
) -> SemiNMFResult:
    """Sparse semi-NMF: ``activations ~ weights @ features.T`` with non-negative ``weights`` and
    winner-take-all sparse ``features`` (see `semi_nmf_step`).

    Args:
        activations: ``[n_samples, n_features]`` (e.g. an MLP's hidden activations, one token per
            row).
        n_components: number of components ``K``.
        sparsity: fraction of each feature column set to zero, in ``[0, 1)``; each column keeps
            ``max(1, ceil((1 - sparsity) * n_features))`` entries. (The reference's
            ``sparsity=0.01`` keeps 1%: that is ``sparsity=0.99`` here.)
        key: PRNG key for the random initial weights (uniform in ``[1e-6, 1)``).
        n_iter: iterations; the factors with the lowest loss are returned.
        reg: ridge term in the least-squares step.
        init_weights: optional initial non-negative weights instead of the random ones.

    Returns:
        `SemiNMFResult` ``(features, weights, loss)``.
    """
    if not hasattr(activations, "ndim") or activations.ndim != 2:
        raise ValueError(
            "`activations` must be 2-D [n_samples, n_features]; got "
            f"{getattr(activations, 'shape', type(activations).__name__)}"
        )
    if not jnp.issubdtype(activations.dtype, jnp.floating):
        raise TypeError(f"`activations` must be floating; got dtype {activations.dtype}")
    n, d = activations.shape
    check_int(n_components, "n_components", minimum=1)
    if not 0 <= sparsity < 1:
        raise ValueError(f"`sparsity` must be in [0, 1); got {sparsity}")
    check_int(n_iter, "n_iter", minimum=1)
    keep = max(1, math.ceil(round((1 - sparsity) * d, 9)))
    dtype = jnp.promote_types(activations.dtype, jnp.float32)
    a = activations.astype(dtype)
    if init_weights is None:
        g0 = jnp.maximum(jax.random.uniform(key, (n, n_components), dtype), 1e-6)
    else:
        if tuple(init_weights.shape) != (n, n_components):
            raise ValueError(
                f"`init_weights` must have shape {(n, n_components)}; got "
                f"{tuple(init_weights.shape)}"
            )
        g0 = jnp.maximum(init_weights.astype(dtype), 1e-6)
    f, g, losses = _run(a, g0, keep, n_iter, jnp.asarray(reg, dtype))
    return SemiNMFResult(f, g, losses)

"""MoA profiling: the attention influence of each head, pooled to blocks, at several lengths.

Reference: thu-nics/MoA ``models/llama/modify_llama_profile.py``: the influence
``E = -A * (G - sum_k G * A) / (1 - A + eps)`` with ``G = dL/dA`` (the first query row uses
``E = -G * A``), ``|E|`` summed over 64 x 64 blocks and averaged over the calibration data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax.attention.moa._rule import DEFAULT_RULE, MoARule, check_rule

__all__ = ["moa_influence", "moa_profile"]


def moa_influence(
    probs: Float[Array, "*batch q k"],
    grads: Float[Array, "*batch q k"],
    *,
    eps: float | None = None,
) -> Float[Array, "*batch q k"]:
    """Attention influence ``E = -A * (G - sum_k G * A) / (1 - A + eps)`` (MoA's profiler).

    ``E[i, j]`` estimates the change of the loss when key ``j`` is dropped from query ``i``'s
    softmax (and the remaining probabilities are renormalised). The first query row, whose only
    causal key has ``A = 1``, uses ``E = -G * A`` as in the reference.

    Args:
        probs: attention probabilities ``A`` ``[..., Lq, Lk]``.
        grads: ``G = dL/dA`` with the same shape.
        eps: added to the denominator; default ``finfo(dtype).eps``.

    Returns:
        ``E`` with the shape of ``probs`` (signed; take ``abs`` to rank).
    """
    if probs.shape != grads.shape:
        raise ValueError(
            f"`grads` must have the shape of probs {probs.shape}; got {grads.shape}."
        )
    if probs.ndim < 2:
        raise ValueError(f"`probs` must be at least 2-D [..., Lq, Lk]; got shape {probs.shape}.")
    if eps is None:
        eps = float(jnp.finfo(grads.dtype).eps)
    ga = grads * probs
    effect = probs * (grads - jnp.sum(ga, axis=-1, keepdims=True)) / (eps + 1.0 - probs)
    effect = effect.at[..., 0, :].set(ga[..., 0, :])
    return -effect


def _block_sum(x: jnp.ndarray, block_size: int) -> jnp.ndarray:
    lq, lk = x.shape[-2:]
    nq, nk = -(-lq // block_size), -(-lk // block_size)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, nq * block_size - lq), (0, nk * block_size - lk)]
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:-2], nq, block_size, nk, block_size)
    return x.sum(axis=(-3, -1))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pooled_influence(probs, g, block_size, causal, eps):
    e = jnp.abs(moa_influence(probs, g, eps=eps))
    n = probs.shape[-1]
    if causal:
        e = jnp.where(jnp.tril(jnp.ones((n, n), dtype=bool)), e, 0.0)
    return _block_sum(e.astype(jnp.float32), block_size).sum(0)


def moa_profile(
    loss_fn: Callable[[Array, Any], Array],
    probs_fn: Callable[[Any], Array],
    batches: Sequence[Any] | Mapping[int, Sequence[Any]],
    *,
    rule: MoARule = DEFAULT_RULE,
    causal: bool = True,
    eps: float | None = None,
) -> dict[int, np.ndarray]:
    """Profile the block-pooled attention influence of each head at several lengths.

    For every calibration batch, ``A = probs_fn(batch)`` gives the attention probabilities
    ``[B, H, N, N]`` (or ``[H, N, N]``) of the attention being profiled, and ``loss_fn(A, batch)``
    the scalar loss with those probabilities substituted; ``G = jax.grad(loss_fn)(A, batch)``.
    The influence `moa_influence` is taken in absolute value, (causally masked,) summed
    over ``rule.block_size`` blocks and averaged over all sequences of the same length ``N``.

    Args:
        loss_fn: ``(probs, batch) -> scalar`` (differentiated under ``jit``, so ``batch`` must
            be a pytree of arrays).
        probs_fn: ``batch -> probs`` ``[B, H, N, N]`` or ``[H, N, N]``.
        batches: calibration batches, either a sequence (grouped by the length ``N`` of their
            probabilities) or a mapping ``{length: [batch, ...]}``.
        rule: The `MoARule`; its ``block_size`` is the pooling block (64 in the reference).
        causal: zero the strictly upper triangle before pooling.
        eps: see `moa_influence`.

    Returns:
        ``{N: E_block}``: float32 numpy ``[H, nb, nb]`` with ``nb = ceil(N / block_size)``.
    """
    block_size = check_rule(rule).block_size
    if isinstance(batches, Mapping):
        items = [b for group in batches.values() for b in group]
    else:
        items = list(batches)
    if not items:
        raise ValueError("`batches` must contain at least one calibration batch; got none.")
    grad_fn = jax.jit(jax.grad(loss_fn))

    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for batch in items:
        probs = jnp.asarray(probs_fn(batch))
        if probs.ndim not in (3, 4) or probs.shape[-1] != probs.shape[-2]:
            raise ValueError(
                f"`probs_fn` must return [B, H, N, N] or [H, N, N]; got shape {probs.shape}."
            )
        g = grad_fn(probs, batch)
        if probs.ndim == 3:
            probs, g = probs[None], g[None]
        n = probs.shape[-1]
        pooled = np.asarray(_pooled_influence(probs, g, block_size, causal, eps))
        sums[n] = sums.get(n, 0.0) + pooled
        counts[n] = counts.get(n, 0) + probs.shape[0]
    return {n: (sums[n] / counts[n]).astype(np.float32) for n in sorted(sums)}

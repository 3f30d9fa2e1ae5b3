"""SnapKV and Ada-SnapKV KV-cache compression after prefill, as run by The Sparse Frontier.

Reference: PiotrNawrot/sparse-frontier ``sparse_frontier/modelling/attention/kv_compression.py``:
the importance of each key from the last ``256`` queries (SnapKV: softmax mean over the GQA group,
summed over the window; Ada: max over window and group), smoothed by average pooling (kernel
``21``); the last ``128`` and first ``4`` keys forced; SnapKV keeps ``token_budget`` keys per KV
head, Ada-SnapKV gives each head at least ``max(int(0.2 * token_budget), 128 + 4)`` keys and shares
the rest through one global top-k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_int, check_sparsity
from sparsejax.attention._qk import check_qk, last_window_probs, repeat_kv, topk_rows

__all__ = ["ada_snapkv_keep", "snapkv_keep"]


def _snap_scores(q, k, window, reduce):
    b, h, lq, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    w = min(window, lq)
    a = last_window_probs(q, repeat_kv(k, h), w)  # [B, H, w, L]
    a = a.reshape(b, hkv, g, w, lq)
    if reduce == "mean":
        return a.mean(axis=2).sum(axis=2)
    return a.max(axis=3).max(axis=2)


def _avg_pool(x: jnp.ndarray, kernel: int) -> jnp.ndarray:
    """``F.avg_pool1d(kernel, stride 1, padding kernel // 2)`` with zero padding counted."""
    p = kernel // 2
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(p, p)])
    c = jnp.cumsum(jnp.pad(xp, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
    out_len = x.shape[-1] + 2 * p - kernel + 1
    return (c[..., kernel : kernel + out_len] - c[..., :out_len]) / kernel


def _check_snap(q, k, token_budget, window, kernel_size, local_window, prefix_tokens):
    check_qk(q, k)
    check_int(token_budget, "token_budget", minimum=1)
    check_int(window, "window", minimum=1)
    check_int(kernel_size, "kernel_size", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"`kernel_size` must be odd (the pooled length must equal L); got {kernel_size}."
        )
    check_int(local_window, "local_window", minimum=0)
    check_int(prefix_tokens, "prefix_tokens", minimum=0)


def _forced_importance(imp, local_window, prefix_tokens):
    lk = imp.shape[-1]
    pos = jnp.arange(lk)
    forced = (pos >= lk - local_window) | (pos < prefix_tokens)
    return jnp.where(forced, jnp.inf, imp)


def snapkv_keep(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    token_budget: int = 1024,
    window: int = 256,
    kernel_size: int = 21,
    local_window: int = 128,
    prefix_tokens: int = 4,
) -> Bool[Array, "batch kv_heads seq"]:
    """SnapKV KV-cache compression after prefill (sparse-frontier: 1024 / 256 / 21 / 128 / 4).

    Args:
        q: Prefill queries ``[B, H, L, D]``.
        k: Prefill keys ``[B, Hkv, L, D]``.
        token_budget: Keys kept per KV head.
        window: Observation window (final queries scoring the keys).
        kernel_size: Odd average-pooling kernel.
        local_window: The last keys always kept.
        prefix_tokens: The first keys always kept.

    Returns:
        Bool ``[B, Hkv, L]`` keep mask with exactly ``min(token_budget, L)`` keys per KV head
        (shared by the query heads of the group; feed it to `attend_kept`).

    Raises:
        ValueError: ``min(token_budget, L) <= local_window + prefix_tokens`` (the reference's
            assertion), bad shapes or sizes.
    """
    _check_snap(q, k, token_budget, window, kernel_size, local_window, prefix_tokens)
    lk = k.shape[2]
    cap = min(token_budget, lk)
    if cap <= local_window + prefix_tokens:
        raise ValueError(
            f"`token_budget` (min with L) must exceed local_window + prefix_tokens "
            f"({local_window} + {prefix_tokens}); got {cap}."
        )
    return _snap_core(
        q,
        k,
        jnp.int32(cap),
        window=window,
        kernel_size=kernel_size,
        local_window=local_window,
        prefix_tokens=prefix_tokens,
    )


@functools.partial(
    jax.jit, static_argnames=("window", "kernel_size", "local_window", "prefix_tokens")
)
def _snap_core(q, k, cap, *, window, kernel_size, local_window, prefix_tokens):
    imp = _avg_pool(_snap_scores(q, k, window, "mean"), kernel_size)
    imp = _forced_importance(imp, local_window, prefix_tokens)
    return topk_rows(imp, cap)


def ada_snapkv_keep(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    token_budget: int = 1024,
    window: int = 256,
    kernel_size: int = 21,
    local_window: int = 128,
    prefix_tokens: int = 4,
    min_head_budget_ratio: float = 0.2,
) -> Bool[Array, "batch kv_heads seq"]:
    """Ada-SnapKV: per-head budgets from one global top-k (sparse-frontier defaults).

    Importance is the max over window queries and the GQA group, pooled as in SnapKV. Each KV
    head first keeps its top ``m = max(int(token_budget * ratio), local_window + prefix_tokens)``
    keys; the remaining ``Hkv * token_budget - Hkv * m`` keys are the global top-k of the rest
    over all heads (per batch element).

    Args:
        q: Prefill queries ``[B, H, L, D]``.
        k: Prefill keys ``[B, Hkv, L, D]``.
        token_budget: Keys kept per KV head.
        window: Observation window (final queries scoring the keys).
        kernel_size: Odd average-pooling kernel.
        local_window: The last keys always kept.
        prefix_tokens: The first keys always kept.
        min_head_budget_ratio: Each head's guaranteed share of ``token_budget``.

    Returns:
        Bool ``[B, Hkv, L]``; each head keeps at least ``m`` keys, ``Hkv * token_budget`` in all.

    Raises:
        ValueError: violated reference assertions (``window < L``, capacities), bad shapes.
    """
    _check_snap(q, k, token_budget, window, kernel_size, local_window, prefix_tokens)
    check_sparsity(min_head_budget_ratio, "min_head_budget_ratio")
    hkv, lk = k.shape[1], k.shape[2]
    if window >= lk:
        raise ValueError(f"`window` must be smaller than the sequence length ({lk}); got {window}.")
    if token_budget > lk:
        raise ValueError(f"`token_budget` must be <= the sequence length ({lk}); got {token_budget}.")
    if token_budget < local_window + prefix_tokens:
        raise ValueError(
            f"`token_budget` must be >= local_window + prefix_tokens "
            f"({local_window} + {prefix_tokens}); got {token_budget}."
        )
    m = max(int(token_budget * min_head_budget_ratio), local_window + prefix_tokens)
    return _ada_core(
        q,
        k,
        jnp.int32(m),
        jnp.int32(hkv * token_budget - hkv * m),
        window=window,
        kernel_size=kernel_size,
        local_window=local_window,
        prefix_tokens=prefix_tokens,
    )


@functools.partial(
    jax.jit, static_argnames=("window", "kernel_size", "local_window", "prefix_tokens")
)
def _ada_core(q, k, m, rest, *, window, kernel_size, local_window, prefix_tokens):
    b, hkv, lk = k.shape[0], k.shape[1], k.shape[2]
    imp = _avg_pool(_snap_scores(q, k, window, "max"), kernel_size)
    imp = _forced_importance(imp, local_window, prefix_tokens)
    sel = topk_rows(imp, m)
    flat = jnp.where(sel, -jnp.inf, imp).reshape(b, hkv * lk)
    return sel | topk_rows(flat, rest).reshape(b, hkv, lk)  # rest may be 0

"""Quest decoding (query-aware page selection), as run by The Sparse Frontier.

Reference: PiotrNawrot/sparse-frontier ``sparse_frontier/modelling/attention/efficient_decoding.py``:
pages of ``16`` keys with per-page min/max; page score ``sum_d max(q_d min_d, q_d max_d)`` (summed
over the query heads of a KV group when pages are shared); the top ``token_budget / page_size``
pages before the current one plus the current page (budget ``1024`` tokens).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_divisible, check_int
from sparsejax.attention._qk import topk_rows

__all__ = ["quest_keep"]


def quest_keep(
    q: Float[Array, "batch heads dim"],
    k: Float[Array, "batch kv_heads kv_len dim"],
    *,
    page_size: int = 16,
    token_budget: int = 1024,
    share_pages: bool = True,
) -> Bool[Array, "batch heads kv_len"]:
    """Quest page selection for one decoding query (sparse-frontier: pages 16, budget 1024).

    ``k`` is the KV cache with the current token's key last (``kv_len`` tokens). Pages
    ``0 .. c - 1`` before the current page ``c = (kv_len - 1) // page_size`` are scored by
    ``sum_d max(q_d * min_d, q_d * max_d)`` (summed over the query heads of a KV group when
    ``share_pages``); the top ``token_budget // page_size`` pages and the current page are kept.
    When ``c <= token_budget // page_size`` (the reference asserts against this) everything is
    kept.

    Args:
        q: The decoding query ``[B, H, D]``.
        k: The key cache ``[B, Hkv, kv_len, D]``.
        page_size: Keys per page (16).
        token_budget: Kept tokens before the current page; a multiple of ``page_size`` (1024).
        share_pages: Score pages once per KV group (sum over its query heads).

    Returns:
        Bool ``[B, H, kv_len]`` keep mask per query head (feed it to `attend_kept`).
    """
    if (
        getattr(q, "ndim", None) != 3
        or getattr(k, "ndim", None) != 4
        or q.shape[0] != k.shape[0]
        or q.shape[-1] != k.shape[-1]
    ):
        raise ValueError(
            f"`q` must be [B, H, D] and `k` [B, Hkv, L, D]; got {getattr(q, 'shape', None)} and "
            f"{getattr(k, 'shape', None)}."
        )
    b, h, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"`q` heads must be a multiple of `k` heads ({hkv}); got {h}.")
    page_size = check_int(page_size, "page_size", minimum=1)
    token_budget = check_int(token_budget, "token_budget", minimum=page_size)
    check_divisible(token_budget, page_size, "token_budget", "page_size")
    page_budget = token_budget // page_size
    if (lk - 1) // page_size <= page_budget:
        return jnp.ones((b, h, lk), bool)
    return _quest_core(
        q, k, jnp.int32(page_budget), page_size=page_size, share_pages=bool(share_pages)
    )


@functools.partial(jax.jit, static_argnames=("page_size", "share_pages"))
def _quest_core(q, k, page_budget, *, page_size, share_pages):
    b, h, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    cur = (lk - 1) // page_size
    g = h // hkv
    kp = k[:, :, : cur * page_size].astype(jnp.float32).reshape(b, hkv, cur, page_size, d)
    kmin, kmax = kp.min(axis=3), kp.max(axis=3)  # [B, Hkv, P, D]
    kmin, kmax = jnp.repeat(kmin, g, axis=1), jnp.repeat(kmax, g, axis=1)
    qf = q.astype(jnp.float32)[:, :, None, :]
    scores = jnp.maximum(qf * kmin, qf * kmax).sum(-1)  # [B, H, P]
    if share_pages:
        scores = jnp.repeat(scores.reshape(b, hkv, g, cur).sum(2), g, axis=1)
    pages = topk_rows(scores, page_budget)  # [B, H, P]
    tok = jnp.repeat(pages, page_size, axis=-1)
    tail = jnp.ones((b, h, lk - cur * page_size), bool)
    return jnp.concatenate([tok, tail], axis=-1)

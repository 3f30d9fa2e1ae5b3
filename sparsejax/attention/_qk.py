"""Shared pieces of the data-dependent patterns: shape checks, softmax estimates, row top-k."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sparsejax.masks import topk


def check_qk(q: jax.Array, k: jax.Array) -> tuple[int, int, int, int]:
    """Validate square-prefill ``q [B, H, L, D]`` / ``k [B, Hkv, L, D]``; return ``(B, H, L, D)``."""
    if getattr(q, "ndim", None) != 4 or getattr(k, "ndim", None) != 4:
        raise ValueError(
            f"`q` and `k` must be [B, H, L, D]; got shapes {getattr(q, 'shape', None)} and "
            f"{getattr(k, 'shape', None)}."
        )
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[2] != lq or k.shape[3] != d:
        raise ValueError(
            f"`k` must be [B, Hkv, L, D] matching q {q.shape} (square prefill); got {k.shape}."
        )
    if h % k.shape[1]:
        raise ValueError(f"`q` heads must be a multiple of `k` heads ({k.shape[1]}); got {h}.")
    return b, h, lq, d


def repeat_kv(k: jax.Array, heads: int) -> jax.Array:
    """Repeat KV heads so that query head ``h`` sees KV head ``h // (heads // Hkv)``."""
    return jnp.repeat(k, heads // k.shape[1], axis=1)


def topk_rows(x: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool mask of the ``k`` largest entries of every row (last axis), via `sparsejax.masks.topk`.

    ``k`` is a Python int or an int array broadcastable to ``x.shape[:-1]`` (one budget per row).
    Ties go to the lower index, as in ``jax.lax.top_k``.
    """
    rows = x.reshape(-1, x.shape[-1])
    if isinstance(k, int):
        out = jax.vmap(lambda r: topk(r, k))(rows)
    else:
        kk = jnp.broadcast_to(jnp.asarray(k, jnp.int32), x.shape[:-1]).reshape(-1)
        out = jax.vmap(topk)(rows, kk)
    return out.reshape(x.shape)


def last_window_probs(q: jax.Array, k: jax.Array, last_q: int) -> jax.Array:
    """Causal softmax rows of the last ``last_q`` queries over all keys: ``[B, H, last_q, L]``."""
    lq, d = q.shape[2], q.shape[3]
    qw = q[:, :, lq - last_q :].astype(jnp.float32) / math.sqrt(d)
    s = jnp.einsum("bhqd,bhkd->bhqk", qw, k.astype(jnp.float32))
    qpos = jnp.arange(lq - last_q, lq)[:, None]
    s = jnp.where(jnp.arange(lq)[None, :] <= qpos, s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1)

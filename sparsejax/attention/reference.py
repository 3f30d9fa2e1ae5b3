"""Dense reference attention: softmax over the equivalent token mask (obviously correct, O(L^2))."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, token_mask: jax.Array, scale: float
) -> jax.Array:
    """``softmax(q k^T * scale, masked) v`` with grouped-query heads; rows with no key give zeros.

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]`` with ``Hq % Hkv == 0``.
        v: ``[B, Hkv, Lk, Dv]``.
        token_mask: ``bool`` broadcastable to ``[B, Hq, Lq, Lk]``.
        scale: Logit scale.

    Returns:
        ``[B, Hq, Lq, Dv]`` in ``q.dtype`` (computed in float32).
    """
    groups = q.shape[1] // k.shape[1]
    k = jnp.repeat(k, groups, axis=1)
    v = jnp.repeat(v, groups, axis=1)
    s = jnp.einsum(
        "bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
    ) * scale
    s = jnp.where(token_mask, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum(
        "bhqk,bhkd->bhqd", p, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    return (o / jnp.where(denom > 0, denom, 1.0)).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask, scale: float) -> jax.Array:
    """`masked_softmax_attention` over ``mask.to_dense()`` (a `BlockMask`), the test oracle."""
    return masked_softmax_attention(q, k, v, mask.to_dense(), scale)


__all__ = ["attention", "masked_softmax_attention"]

"""Equinox multi-head attention layer over `sparsejax.attention.attention`.

The Equinox counterpart of `sparsejax.nn.SparseMultiHeadAttention` (same mask arguments; see
`sparsejax.nn.attention`), on unbatched inputs ``x [seq, features]`` as usual in Equinox.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import must_be
from sparsejax.attention.kernel import attention
from sparsejax.nn._attention import MaskArg, check_heads, resolve_mask, split_heads

__all__ = ["SparseMultiHeadAttention"]


class SparseMultiHeadAttention(eqx.Module):
    """Equinox multi-head (grouped-query) self-attention with a block-sparse mask.

    Follows Equinox's convention of unbatched inputs: ``x [seq, features]`` (``jax.vmap`` over a
    batch; a dynamic pattern then sees ``q``/``k`` with batch dim 1).

    Args:
        in_features: Model width ``F``.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (divides ``num_heads``; default ``num_heads``).
        head_dim: Per-head width (default ``in_features // num_heads``).
        causal: Intersect every mask with a causal mask.
        backend: Attention backend.
        use_bias: Biases on the projections.
        key: PRNG key for the initialisers.
    """

    query: eqx.nn.Linear
    key_proj: eqx.nn.Linear
    value: eqx.nn.Linear
    out: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    num_kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = False,
        backend: str = "auto",
        use_bias: bool = False,
        key: jax.Array,
    ):
        num_kv_heads, head_dim = check_heads(
            in_features, num_heads, num_kv_heads, head_dim, backend
        )
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.query = eqx.nn.Linear(in_features, num_heads * head_dim, use_bias=use_bias, key=kq)
        self.key_proj = eqx.nn.Linear(
            in_features, num_kv_heads * head_dim, use_bias=use_bias, key=kk
        )
        self.value = eqx.nn.Linear(in_features, num_kv_heads * head_dim, use_bias=use_bias, key=kv)
        self.out = eqx.nn.Linear(num_heads * head_dim, in_features, use_bias=use_bias, key=ko)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.backend = causal, backend

    def __call__(
        self, x: Float[Array, "seq features"], mask: MaskArg = None
    ) -> Float[Array, "seq features"]:
        """Self-attention over ``x [seq, features]`` with ``mask`` (see module docstring)."""
        if getattr(x, "ndim", None) != 2:
            raise ValueError(must_be("x", "of shape [seq, features]", f"shape {tuple(jnp.shape(x))}",
                                     raw=True))
        proj = lambda lin: jax.vmap(lin)(x)[None]
        q = split_heads(proj(self.query), self.num_heads, self.head_dim)
        k = split_heads(proj(self.key_proj), self.num_kv_heads, self.head_dim)
        v = split_heads(proj(self.value), self.num_kv_heads, self.head_dim)
        o = attention(q, k, v, resolve_mask(mask, q, k), causal=self.causal, backend=self.backend)
        o = o[0].transpose(1, 0, 2).reshape(x.shape[0], -1)
        return jax.vmap(self.out)(o)


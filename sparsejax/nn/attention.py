"""Flax NNX multi-head attention layer over `sparsejax.attention.attention`.

The layer (and its Equinox counterpart of the same name, `sparsejax.nn.eqx.SparseMultiHeadAttention`)
projects ``x`` to queries, keys and values (grouped-query attention when
``num_kv_heads < num_heads``), runs block-sparse attention with any mask, and projects back. The
mask is given per call, as

* ``None`` (dense, or causal with ``causal=True``);
* a `sparsejax.attention.BlockMask` (a static pattern such as ``sliding_window_mask``);
* a callable ``pattern(q, k) -> BlockMask`` that computes a dynamic mask from the projected
  ``q [batch, heads, seq, head_dim]`` and ``k [batch, kv_heads, seq, head_dim]`` (block top-k,
  MoA, SparseD, ... style patterns), traced under ``jit`` together with the layer.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sparsejax._checks import must_be
from sparsejax.attention.kernel import attention
from sparsejax.nn._attention import MaskArg, check_heads, resolve_mask, split_heads

__all__ = ["SparseMultiHeadAttention"]


class SparseMultiHeadAttention(nnx.Module):
    """Flax NNX multi-head (grouped-query) self-attention with a block-sparse mask.

    Args:
        in_features: Model width ``F``.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (divides ``num_heads``; default ``num_heads``).
        head_dim: Per-head width (default ``in_features // num_heads``).
        causal: Intersect every mask with a causal mask.
        backend: Attention backend (see `sparsejax.attention.attention`).
        use_bias: Biases on the projections.
        rngs: ``nnx.Rngs`` for the initialisers.
    """

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
        rngs: nnx.Rngs,
    ):
        num_kv_heads, head_dim = check_heads(
            in_features, num_heads, num_kv_heads, head_dim, backend
        )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.backend = causal, backend
        self.query = nnx.Linear(in_features, num_heads * head_dim, use_bias=use_bias, rngs=rngs)
        self.key = nnx.Linear(in_features, num_kv_heads * head_dim, use_bias=use_bias, rngs=rngs)
        self.value = nnx.Linear(in_features, num_kv_heads * head_dim, use_bias=use_bias, rngs=rngs)
        self.out = nnx.Linear(num_heads * head_dim, in_features, use_bias=use_bias, rngs=rngs)

    def __call__(
        self, x: Float[Array, "batch seq features"], mask: MaskArg = None
    ) -> Float[Array, "batch seq features"]:
        """Self-attention over ``x [batch, seq, features]`` with ``mask`` (see module docstring)."""
        if getattr(x, "ndim", None) != 3:
            raise ValueError(must_be("x", "of shape [batch, seq, features]",
                                     f"shape {tuple(jnp.shape(x))}", raw=True))
        q = split_heads(self.query(x), self.num_heads, self.head_dim)
        k = split_heads(self.key(x), self.num_kv_heads, self.head_dim)
        v = split_heads(self.value(x), self.num_kv_heads, self.head_dim)
        o = attention(q, k, v, resolve_mask(mask, q, k), causal=self.causal, backend=self.backend)
        b, _, n, _ = o.shape
        return self.out(o.transpose(0, 2, 1, 3).reshape(b, n, -1))

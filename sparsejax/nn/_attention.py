"""The framework-free core of the sparse attention layers, shared by the Flax NNX layer
(`sparsejax.nn.SparseMultiHeadAttention`) and its Equinox twin (`sparsejax.nn.eqx`): argument
checks, the mask argument and the head split. Imports neither Flax nor Equinox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from sparsejax._checks import check_choice, check_positive_int, is_function, must_be
from sparsejax.attention.kernel import BACKENDS
from sparsejax.attention.mask import BlockMask

__all__ = ["MaskArg", "check_heads", "resolve_mask", "split_heads"]

MaskArg = BlockMask | Callable[[jax.Array, jax.Array], BlockMask] | None


def check_heads(in_features: Any, num_heads: Any, num_kv_heads: Any, head_dim: Any,
                backend: Any) -> tuple[int, int]:
    """``(num_kv_heads, head_dim)`` with their defaults, after checking every argument."""
    in_features = check_positive_int(in_features, "in_features")
    num_heads = check_positive_int(num_heads, "num_heads")
    num_kv_heads = num_heads if num_kv_heads is None else check_positive_int(num_kv_heads,
                                                                             "num_kv_heads")
    if num_heads % num_kv_heads:
        raise ValueError(must_be("num_kv_heads", f"a positive divisor of num_heads={num_heads}",
                                 num_kv_heads))
    if head_dim is None:
        if in_features % num_heads:
            raise ValueError(must_be("in_features", f"divisible by num_heads={num_heads} (or pass "
                                     "head_dim explicitly)", in_features))
        head_dim = in_features // num_heads
    head_dim = check_positive_int(head_dim, "head_dim")
    check_choice(backend, "backend", BACKENDS)
    return num_kv_heads, head_dim


def resolve_mask(mask: MaskArg, q: jax.Array, k: jax.Array) -> BlockMask | None:
    """The `BlockMask` for this call: ``mask`` itself, or a pattern ``(q, k) -> BlockMask`` applied."""
    if mask is None or isinstance(mask, BlockMask):
        return mask
    if is_function(mask):
        out = mask(q, k)
        if not isinstance(out, BlockMask):
            raise TypeError(must_be("mask", "a pattern returning a BlockMask",
                                    f"one returning {type(out).__name__}", raw=True))
        return out
    raise TypeError(must_be("mask", "None, a BlockMask or a callable (q, k) -> BlockMask",
                            type(mask).__name__, raw=True))


def split_heads(x: jax.Array, heads: int, dim: int) -> jax.Array:
    """``[b, n, heads * dim]`` -> ``[b, heads, n, dim]``."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, dim).transpose(0, 2, 1, 3)

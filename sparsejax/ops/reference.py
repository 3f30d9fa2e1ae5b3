"""Reference implementations: densify the sparse operand and call ``jnp``.

Obviously correct and used as the oracle by the tests; their cost does not shrink with density.
All products accumulate in float32 and return ``jnp.result_type`` of the operands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax.formats import BlockSparse, NMSparse

__all__ = ["bsr_matmul", "dense_bsr_matmul", "dense_nm_matmul", "nm_matmul", "sddmm"]


def _dot(x: Array, y: Array) -> Array:
    out_dtype = jnp.result_type(x, y)
    return jnp.matmul(x, y, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST).astype(out_dtype)


def bsr_matmul(a: BlockSparse, b: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``a.to_dense() @ b``."""
    return _dot(a.to_dense(), b)


def dense_bsr_matmul(x: Float[Array, "B M"], a: BlockSparse) -> Float[Array, "B N"]:
    """``x @ a.to_dense()``."""
    return _dot(x, a.to_dense())


def sddmm(a: Float[Array, "M Kd"], b: Float[Array, "Kd N"], like: BlockSparse) -> BlockSparse:
    """``a @ b`` (formed densely) sampled at ``like``'s kept blocks."""
    full = _dot(a, b)
    r, s = like.indices.shape
    bm, bn = like.block_shape
    blocks = full.reshape(r, bm, -1, bn).transpose(0, 2, 1, 3)  # [R, C, bm, bn]
    data = jnp.take_along_axis(blocks, like.indices[:, :, None, None], axis=1)
    data = jnp.where(like.valid_slots()[:, :, None, None], data, jnp.zeros((), data.dtype))
    return like.replace(data=data)


def nm_matmul(w: NMSparse, x: Float[Array, "K ..."]) -> Float[Array, "M ..."]:
    """``w.to_dense() @ x``."""
    return _dot(w.to_dense(), x)


def dense_nm_matmul(x: Float[Array, "... K"], w: NMSparse) -> Float[Array, "... N"]:
    """``x @ w.to_dense()``."""
    return _dot(x, w.to_dense())

"""Turning block pruning of a block-sparse (BSR) layer into real savings: re-pack the kept blocks.

`prune` with ``pattern="block", block_shape=(bm, bn)`` on the params of a
`sparsejax.nn.BlockSparseLinear` masks whole *stored* blocks of its ``kernel.data``
``[R, S, bm, bn]`` while every step still runs through the block-sparse kernels. `compact_blocks`
then re-packs the weight with only the kept blocks (outside ``jit``: the slot count ``S`` is a
static shape), so the following steps run over fewer blocks and their time falls with density.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from sparsejax.formats import BlockSparse

__all__ = ["compact_blocks"]


def compact_blocks(weight: BlockSparse,
                   mask: Bool[Array, "R S bm bn"] | Bool[Array, "R S"]) -> BlockSparse:
    """Re-pack a BSR weight keeping only the stored blocks that ``mask`` keeps.

    Args:
        weight: a 2-D `sparsejax.formats.BlockSparse` (e.g. ``layer.weight`` of a
            `sparsejax.nn.BlockSparseLinear`).
        mask: which stored slots to keep: the mask of ``weight.data`` (``[R, S, bm, bn]``, from
            `masks_of` after ``prune(..., pattern="block", block_shape=(bm, bn))``; a slot is kept
            when any of its entries is) or a slot-level bool ``[R, S]``. Must be concrete.

    Returns:
        a `BlockSparse` of the same dense shape whose ``to_dense()`` equals the masked weight's,
        with ``S`` = the largest kept-block count of any block row (at least 1).

    Raises:
        ValueError / TypeError: ``weight`` is not a 2-D `BlockSparse`, or ``mask`` has another
            shape or is not boolean.
    """
    if not isinstance(weight, BlockSparse) or weight.data.ndim != 4:
        raise TypeError(f"`weight` must be a 2-D sparsejax.formats.BlockSparse; got "
                        f"{type(weight).__name__}.")
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"`mask` must be a bool array; got dtype {mask.dtype}.")
    r, s = weight.indices.shape
    if mask.shape == weight.data.shape:
        mask = mask.any(axis=(2, 3))
    if mask.shape != (r, s):
        raise ValueError(f"`mask` must have the shape of weight.data {tuple(weight.data.shape)} or "
                         f"the slot shape {(r, s)}; got {mask.shape}.")
    keep = mask & np.asarray(weight.valid_slots())
    block_mask = np.zeros((r, weight.n_block_cols), bool)
    rows = np.repeat(np.arange(r), s).reshape(r, s)
    block_mask[rows[keep], np.asarray(weight.indices)[keep]] = True
    data = jnp.where(jnp.asarray(keep)[:, :, None, None], weight.data, 0)
    dense = weight.replace(data=data).to_dense()
    return BlockSparse.from_dense(dense, weight.block_shape, jnp.asarray(block_mask))

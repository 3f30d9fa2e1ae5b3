"""One block layout for attention and matmul: `BlockMask` <-> `BlockSparse`.

An attention `sparsejax.attention.BlockMask` and a `sparsejax.BlockSparse` matrix describe their
kept blocks with the same record, `sparsejax._blocks.BlockIndex` (``BlockMask.info()`` and
``BlockSparse.block_index``). These two functions convert between them, so one mask can drive an
attention and a block-sparse layer (for example a ``[seq, seq]`` token-mixing weight).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax._blocks import BlockIndex
from sparsejax._checks import check_int, is_concrete
from sparsejax.attention.mask import BlockMask
from sparsejax.formats import BlockSparse

__all__ = ["block_mask_from_sparse", "block_sparse_from_mask"]


def block_sparse_from_mask(
    x: Float[Array, "seq_q seq_kv"],
    mask: BlockMask,
    *,
    batch: int = 0,
    head: int = 0,
) -> BlockSparse:
    """The blocks of ``x`` that ``mask`` keeps, as a ``BlockSparse`` with the mask's block index.

    Every non-empty block (partial or full) is kept whole: the token predicate of partial blocks
    is not applied (multiply ``x`` by ``mask.to_dense()[batch, head]`` first to apply it).

    Args:
        x: ``[seq_q, seq_kv]`` float matrix; ``seq_q``/``seq_kv`` multiples of the mask's
            ``block_q``/``block_kv``.
        mask: the attention mask.
        batch: batch row of the mask to use (ignored when the mask broadcasts over batch).
        head: head of the mask to use (ignored when the mask broadcasts over heads).

    Returns:
        ``BlockSparse`` of shape ``(seq_q, seq_kv)``, block shape ``(block_q, block_kv)``,
        ``indices``/``counts`` equal to ``mask.info()``'s for that batch row and head.

    Raises:
        TypeError: ``mask`` not a ``BlockMask``; non-int ``batch``/``head``; non-float ``x``.
        ValueError: ``x`` not of the mask's geometry; ``batch``/``head`` out of range.
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"`mask` must be a sparsejax.attention.BlockMask; got "
                        f"{type(mask).__name__}.")
    shape = (mask.seq_q, mask.seq_kv)
    if tuple(jnp.shape(x)) != shape:
        raise ValueError(f"`x` must have the mask's shape (seq_q, seq_kv) = {shape}; "
                         f"got {jnp.shape(x)}.")
    info = mask.info()
    picks = []
    for name, value, size in (("batch", batch, info.counts.shape[0]),
                              ("head", head, info.counts.shape[1])):
        value = check_int(value, name, minimum=0)
        if size > 1 and value >= size:
            raise ValueError(f"`{name}` must be < {size} (the mask's {name} dim); got {value}.")
        picks.append(0 if size == 1 else value)
    b, h = picks
    index = BlockIndex(info.indices[b, h], info.counts[b, h])
    return BlockSparse.from_block_index(x, index, (mask.block_q, mask.block_kv))


def block_mask_from_sparse(a: BlockSparse) -> BlockMask:
    """The attention ``BlockMask`` whose kept blocks are ``a``'s, every kept block full.

    Args:
        a: an unbatched ``BlockSparse [M, K]`` with block shape ``(bm, bn)``.

    Returns:
        A ``BlockMask`` with ``seq_q = M``, ``seq_kv = K``, blocks ``(bm, bn)`` and block map
        ``FULL`` at ``a.block_mask()`` (broadcast over batch and heads): static when ``a`` is
        concrete, dynamic (with ``max_kv_blocks = a.max_blocks_per_row``) under ``jit``.

    Raises:
        TypeError: ``a`` not a ``BlockSparse``.
        ValueError: a batched ``a``.
    """
    if not isinstance(a, BlockSparse):
        raise TypeError(f"`a` must be a sparsejax.BlockSparse; got {type(a).__name__}.")
    if a.data.ndim != 4:
        raise ValueError(f"`a` must be unbatched (data [R, S, bm, bn]); got data of shape "
                         f"{a.data.shape}.")
    keep = a.block_mask()
    if is_concrete(keep):
        keep = np.asarray(keep)
    bm, bn = a.block_shape
    return BlockMask.from_blocks(keep[None, None], bm, bn, a.shape[0], a.shape[1],
                                 max_kv_blocks=a.max_blocks_per_row)

"""Kernel-side preparation shared by the block-sparse backends: padding, row layouts, mask tiles."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from sparsejax.attention.mask import EMPTY, FULL, PARTIAL, BlockMask


class KernelBlocks(NamedTuple):
    """Per-entry kernel metadata, with the ragged last KV block demoted from full to partial.

    Attributes:
        kv_indices: ``int32[Bm, Hm, nq, K]`` kept KV-block indices (padding repeats the last one).
        counts: ``int32[Bm, Hm, nq]`` kept entries per row.
        kinds: ``int8[Bm, Hm, nq, K]`` EMPTY (padding) / PARTIAL / FULL.
    """

    kv_indices: jnp.ndarray
    counts: jnp.ndarray
    kinds: jnp.ndarray


def kernel_blocks(mask: BlockMask) -> KernelBlocks:
    """The mask's `BlockMask.info` with full blocks that cross ``seq_kv`` marked partial."""
    info = mask.info()
    kinds = info.block_kinds
    if mask.seq_kv % mask.block_kv:
        xp = np if isinstance(kinds, np.ndarray) else jnp
        ragged = (info.kv_indices == mask.num_kv_blocks - 1) & (kinds == FULL)
        kinds = xp.where(ragged, PARTIAL, kinds).astype(xp.int8)
    return KernelBlocks(info.kv_indices, info.counts, kinds)


def may_have_partial(mask: BlockMask) -> bool:
    """False only when the mask is static, has no partial block and no ragged KV edge."""
    if mask.seq_kv % mask.block_kv:
        return True
    if isinstance(mask.block_map, np.ndarray):
        return bool(np.any(mask.block_map == PARTIAL))
    return True


def tile_mask(
    mask: BlockMask, b: jnp.ndarray, h: jnp.ndarray, q_pos: jnp.ndarray, kv_pos: jnp.ndarray
) -> jnp.ndarray:
    """Token mask on tiles: the predicate restricted to in-range keys (positions broadcast)."""
    return mask.predicate(b, h, q_pos, kv_pos) & (kv_pos < mask.seq_kv)


def partial_tiles(mask: BlockMask, blocks: KernelBlocks):
    """Compacted partial-block tiles and, per entry, the tile to fetch (cf. splash ``mask_next``).

    Returns:
        ``(tiles int8[P, block_q, block_kv], mask_next int32[Bm, Hm, nq, K])``. A non-partial entry
        points at the previous partial tile in row-major order so a pipelined kernel refetches
        nothing. Static masks compact exactly; dynamic ones use ``P = Bm*Hm*nq*K``.
    """
    bq, bk = mask.block_q, mask.block_kv
    shape = blocks.kinds.shape
    flat_partial = (blocks.kinds == PARTIAL).reshape(-1)
    static = isinstance(blocks.kinds, np.ndarray)
    if static:
        entries = np.nonzero(flat_partial)[0]
        if entries.size == 0:
            entries = np.zeros((1,), np.int64)
        rank = np.maximum(np.cumsum(flat_partial) - 1, 0).astype(np.int32)
    else:
        total = int(np.prod(shape))
        entries = jnp.nonzero(flat_partial, size=total, fill_value=0)[0]
        rank = jnp.maximum(jnp.cumsum(flat_partial) - 1, 0).astype(jnp.int32)
    grid = np.unravel_index(np.arange(int(np.prod(shape))), shape)
    bi, hi, qi = (jnp.asarray(a) for a in grid[:3])
    e = jnp.asarray(entries)
    b, h, i = bi[e], hi[e], qi[e]
    kv_block = jnp.asarray(blocks.kv_indices).reshape(-1)[e]
    q_pos = i[:, None, None] * bq + jnp.arange(bq)[None, :, None]
    kv_pos = kv_block[:, None, None] * bk + jnp.arange(bk)[None, None, :]
    tiles = tile_mask(mask, b[:, None, None], h[:, None, None], q_pos, kv_pos)
    tiles = jnp.broadcast_to(tiles, (e.shape[0], bq, bk)).astype(jnp.int8)
    return tiles, jnp.asarray(rank).reshape(shape)


def pad_axis(x: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
    """Zero-pad ``x`` along ``axis`` up to ``size``."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, extra)
    return jnp.pad(x, pads)


__all__ = ["EMPTY", "FULL", "PARTIAL", "KernelBlocks", "kernel_blocks", "partial_tiles"]

"""Kernel-side preparation shared by the attention backends: kernel metadata, mask tiles, padding."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._blocks import EMPTY, FULL, PARTIAL, BlockIndex
from sparsejax._pallas import pad_axis
from sparsejax.attention.mask import BlockMask


def kernel_blocks(mask: BlockMask) -> BlockIndex:
    """The mask's `BlockMask.info` with full blocks that cross ``seq_kv`` marked partial."""
    info = mask.info()
    kinds = info.kinds
    if mask.seq_kv % mask.block_kv:
        xp = np if isinstance(kinds, np.ndarray) else jnp
        ragged = (info.indices == mask.num_kv_blocks - 1) & (kinds == FULL)
        kinds = xp.where(ragged, PARTIAL, kinds).astype(xp.int8)
    return info._replace(kinds=kinds)


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


def partial_tiles(mask: BlockMask, blocks: BlockIndex):
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
    kv_block = jnp.asarray(blocks.indices).reshape(-1)[e]
    q_pos = i[:, None, None] * bq + jnp.arange(bq)[None, :, None]
    kv_pos = kv_block[:, None, None] * bk + jnp.arange(bk)[None, None, :]
    tiles = tile_mask(mask, b[:, None, None], h[:, None, None], q_pos, kv_pos)
    tiles = jnp.broadcast_to(tiles, (e.shape[0], bq, bk)).astype(jnp.int8)
    return tiles, jnp.asarray(rank).reshape(shape)


class Prologue(NamedTuple):
    """What both Pallas attention kernels start from (one place for geometry and padding).

    Attributes:
        q: ``[B, Hq, nq * block_q, D]`` zero-padded queries.
        k: ``[B, Hkv, nk * block_kv, D]`` zero-padded keys.
        v: ``[B, Hkv, nk * block_kv, Dv]`` zero-padded values.
        blocks: `kernel_blocks` of the mask.
        tiles: ``int8[P, block_q, block_kv]`` partial-block tiles (`partial_tiles`).
        mask_next: ``int32[Bm, Hm, nq, K]`` tile of each slot.
        groups: query heads per KV head.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    blocks: BlockIndex
    tiles: jax.Array
    mask_next: jax.Array
    groups: int


def prologue(q: jax.Array, k: jax.Array, v: jax.Array, mask: BlockMask) -> Prologue:
    """Kernel metadata, partial tiles and padded ``q``/``k``/``v`` for a Pallas attention kernel."""
    blocks = kernel_blocks(mask)
    tiles, mnext = partial_tiles(mask, blocks)
    nq, nk = mask.num_q_blocks, mask.num_kv_blocks
    return Prologue(
        pad_axis(q, 2, nq * mask.block_q),
        pad_axis(k, 2, nk * mask.block_kv),
        pad_axis(v, 2, nk * mask.block_kv),
        blocks,
        tiles,
        mnext,
        q.shape[1] // k.shape[1],
    )


__all__ = ["EMPTY", "FULL", "PARTIAL", "Prologue", "kernel_blocks", "partial_tiles", "prologue"]

"""Block-sparse attention forward kernel for GPU (Pallas, Triton lowering).

One program per (batch, query head, query block). It loads the row's kept KV-block list and count
and loops ``for j in range(count)`` over the kept blocks only (empty blocks are never read),
slicing each ``[block_kv, dim]`` key/value tile out of the head's KV sequence, with an online
softmax in float32 registers. Partial blocks apply their precomputed ``int8`` mask tile; full
blocks use an all-true tile-free path (``where`` on a scalar kind). A row with no kept key is
written as zeros.

On a real GPU the Triton lowering needs power-of-two ``block_q``, ``block_kv`` and head dims
(>= 16 for the matmuls): other sizes raise `sparsejax._backend.UnsupportedShapeError` (so
``backend="auto"`` falls back to ``xla``); interpret mode accepts any size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sparsejax._blocks import FULL, PARTIAL
from sparsejax._pallas import check_pow2, pad_axis
from sparsejax.attention._tiles import prologue
from sparsejax.attention.mask import BlockMask


def _kernel(
    idx_ref, kinds_ref, mnext_ref, count_ref, q_ref, k_ref, v_ref, tile_ref, o_ref,
    *, scale, block_kv,
):
    q = q_ref[...]
    bq, dv = o_ref.shape

    def body(j, carry):
        m_prev, l_prev, acc = carry
        kv = idx_ref[j]
        kind = kinds_ref[j]
        kblk = k_ref[pl.ds(kv * block_kv, block_kv), :]
        vblk = v_ref[pl.ds(kv * block_kv, block_kv), :]
        s = jax.lax.dot_general(
            q, kblk, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        ) * scale
        tile = tile_ref[mnext_ref[j]]
        keep = (kind == FULL) | ((kind == PARTIAL) & (tile != 0))
        s = jnp.where(keep, s, -jnp.inf)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        alpha = jnp.exp(m_prev - m_safe)
        p = jnp.exp(s - m_safe[:, None])
        l_new = alpha * l_prev + jnp.sum(p, axis=-1)
        pv = jax.lax.dot_general(
            p.astype(vblk.dtype), vblk, (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        return m_new, l_new, alpha[:, None] * acc + pv

    init = (
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
        jnp.zeros((bq, dv), jnp.float32),
    )
    _, denom, acc = jax.lax.fori_loop(0, count_ref[0], body, init)
    o_ref[...] = (acc / jnp.where(denom > 0, denom, 1.0)[:, None]).astype(o_ref.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: BlockMask,
    scale: float,
    *,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> jax.Array:
    """Forward block-sparse attention with the Pallas GPU kernel (see module docstring).

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]``.
        v: ``[B, Hkv, Lk, Dv]``.
        mask: Block mask of geometry ``(Lq, Lk)``.
        scale: Logit scale.
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining stages.
        interpret: Run the kernel in interpret mode (CPU testing).

    Raises:
        UnsupportedShapeError: compiled (not interpreted) with a block or head dim that is not a
            power of two >= 16.

    Returns:
        ``[B, Hq, Lq, Dv]`` in ``q.dtype``.
    """
    batch, hq, lq, d = q.shape
    dv = v.shape[-1]
    bq, bk = mask.block_q, mask.block_kv
    nq, nk = mask.num_q_blocks, mask.num_kv_blocks
    bm, hm = mask.block_map.shape[:2]
    if not interpret:  # Triton's tl.dot; interpret mode takes any size
        for name, value in (("block_q", bq), ("block_kv", bk), ("head dim", d), ("value dim", dv)):
            check_pow2(value, name)
    pro = prologue(q, k, v, mask)
    blocks, groups = pro.blocks, pro.groups
    width = blocks.width
    n_tiles = pro.tiles.shape[0]
    padded_tiles = 1 << max(0, (n_tiles - 1).bit_length())
    tiles = pad_axis(pro.tiles, 0, padded_tiles)

    def row_map(b, h, i):
        return (b if bm > 1 else 0, h if hm > 1 else 0, i, 0)

    def as_i32(x):
        return jnp.asarray(x, jnp.int32)

    counts = as_i32(blocks.counts)[..., None]
    kernel = functools.partial(_kernel, scale=scale, block_kv=bk)
    out = pl.pallas_call(
        kernel,
        grid=(batch, hq, nq),
        in_specs=[
            pl.BlockSpec((None, None, None, width), row_map),
            pl.BlockSpec((None, None, None, width), row_map),
            pl.BlockSpec((None, None, None, width), row_map),
            pl.BlockSpec((None, None, None, 1), row_map),
            pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, nk * bk, d), lambda b, h, i: (b, h // groups, 0, 0)),
            pl.BlockSpec((None, None, nk * bk, dv), lambda b, h, i: (b, h // groups, 0, 0)),
            pl.BlockSpec((padded_tiles, bq, bk), lambda b, h, i: (0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, bq, dv), lambda b, h, i: (b, h, i, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, hq, nq * bq, dv), q.dtype),
        # the Triton lowering (without Triton parameters Pallas picks Mosaic GPU, which would
        # stage the whole KV sequence in shared memory)
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
    )(
        as_i32(blocks.indices), as_i32(blocks.kinds), as_i32(pro.mask_next), counts,
        pro.q, pro.k, pro.v, tiles,
    )
    return out[:, :, :lq]


__all__ = ["attention"]

"""Splash-style block-sparse attention forward kernel for TPU (Pallas, Mosaic).

Grid ``(batch, heads, q_blocks, K)`` with ``K = max_kv_blocks``. Four int32 arrays are
scalar-prefetched into SMEM: the kept KV-block index of every (row, slot), the kind of every slot
(empty padding / partial / full) and, per slot, the index of the partial-mask tile to use. The
BlockSpec index maps read them, so step ``j`` of query block ``i`` fetches only KV block
``kv_indices[i, j]``; padding slots repeat the previous index, so the pipeline fetches nothing new
and the body is skipped. Full blocks run without any masking; partial blocks apply a precomputed
``int8[block_q, block_kv]`` tile (de-duplicated to the partial slots, cf. splash ``mask_next``).
The output block ``(b, h, i)`` is visited on consecutive steps ``j`` and accumulated with an
online softmax (float32 running max, normaliser and accumulator in VMEM scratch). A row with no
kept key is written as zeros.

On a real TPU, ``block_q`` / ``block_kv`` should be multiples of 128 (8 for ``block_q`` at least)
and the head dims multiples of 128 for good layouts; interpret mode accepts any size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sparsejax._blocks import FULL, PARTIAL
from sparsejax.attention._tiles import prologue
from sparsejax.attention.mask import BlockMask


def _kernel(
    idx_ref, kinds_ref, counts_ref, mnext_ref,  # scalar prefetch (SMEM)
    q_ref, k_ref, v_ref, tile_ref,  # inputs (VMEM blocks)
    o_ref,  # output block
    m_scr, l_scr, acc_scr,  # scratch
    *, scale, width, entry,
):
    b, h, i, j = (pl.program_id(a) for a in range(4))
    e = entry(b, h, i) * width + j
    kind = kinds_ref[e]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def step(masked: bool):
        s = jax.lax.dot_general(
            q_ref[...], k_ref[...], (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        ) * scale
        if masked:
            s = jnp.where(tile_ref[...] != 0, s, -jnp.inf)
        m_prev = m_scr[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        alpha = jnp.exp(m_prev - m_safe)
        p = jnp.exp(s - m_safe)
        l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=-1, keepdims=True)
        pv = jax.lax.dot_general(
            p.astype(v_ref.dtype), v_ref[...], (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        acc_scr[...] = alpha * acc_scr[...] + pv
        m_scr[...] = m_new

    @pl.when(kind == FULL)
    def _full():
        step(masked=False)

    @pl.when(kind == PARTIAL)
    def _partial():
        step(masked=True)

    @pl.when(j == width - 1)
    def _finish():
        denom = l_scr[...]
        o_ref[...] = (acc_scr[...] / jnp.where(denom > 0, denom, 1.0)).astype(o_ref.dtype)

    del counts_ref, mnext_ref


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: BlockMask,
    scale: float,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Forward block-sparse attention with the splash-style TPU kernel (see module docstring).

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]``.
        v: ``[B, Hkv, Lk, Dv]``.
        mask: Block mask of geometry ``(Lq, Lk)``.
        scale: Logit scale.
        interpret: ``True`` or ``pltpu.InterpretParams()`` to run on CPU.

    Returns:
        ``[B, Hq, Lq, Dv]`` in ``q.dtype``.
    """
    batch, hq, lq, d = q.shape
    dv = v.shape[-1]
    bq, bk = mask.block_q, mask.block_kv
    nq = mask.num_q_blocks
    bm, hm = mask.block_map.shape[:2]
    pro = prologue(q, k, v, mask)
    blocks, groups = pro.blocks, pro.groups
    width = blocks.width

    def entry(b, h, i):
        return ((b if bm > 1 else 0) * hm + (h if hm > 1 else 0)) * nq + i

    def flat(x):
        return jnp.asarray(x, jnp.int32).reshape(-1)

    prefetch = (flat(blocks.indices), flat(blocks.kinds), flat(blocks.counts),
                flat(pro.mask_next))

    def q_map(b, h, i, j, *refs):
        return (b, h, i, 0)

    def kv_map(b, h, i, j, idx_ref, *refs):
        return (b, h // groups, idx_ref[entry(b, h, i) * width + j], 0)

    def tile_map(b, h, i, j, idx_ref, kinds_ref, counts_ref, mnext_ref):
        return (mnext_ref[entry(b, h, i) * width + j], 0, 0)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4,
        grid=(batch, hq, nq, width),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bk, d), kv_map),
            pl.BlockSpec((None, None, bk, dv), kv_map),
            pl.BlockSpec((None, bq, bk), tile_map),
        ],
        out_specs=pl.BlockSpec((None, None, bq, dv), q_map),
        scratch_shapes=[
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, dv), jnp.float32),
        ],
    )
    kernel = functools.partial(_kernel, scale=scale, width=width, entry=entry)
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((batch, hq, nq * bq, dv), q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
    )(*prefetch, pro.q, pro.k, pro.v, pro.tiles)
    return out[:, :, :lq]


__all__ = ["attention"]

"""XLA block-sparse attention: gathers only the kept KV blocks of each query block.

For query block ``i`` the kernel metadata lists the ``K`` kept KV blocks; the path gathers those
``K * block_kv`` keys and values, computes the ``[rows, K * block_kv]`` logits in one batched matmul,
masks only where blocks are partial (or padding), and takes an exact softmax over them (all kept
keys of a row are present at once, so no running rescaling is needed; the Pallas kernels use the
online form). Work and memory scale with the kept blocks, not with ``seq_q * seq_kv``. Query
blocks are processed in chunks with ``lax.map``; each chunk is rematerialised in the backward
pass (``jax.checkpoint``), so gradients (through the gathers, as scatter-adds) never store the
probability matrix of more than one chunk.

When the mask does not vary over heads and there are fewer KV heads than query heads (GQA), the
``G`` query heads that share a KV head are stacked into ``G * block_q`` rows so each KV block is
gathered once per group.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from sparsejax.attention._tiles import (
    EMPTY,
    FULL,
    PARTIAL,
    kernel_blocks,
    may_have_partial,
    pad_axis,
    tile_mask,
)
from sparsejax.attention.mask import BlockMask

# Target bytes of float32 logits per lax.map step.
_CHUNK_BYTES = 48 * 2**20


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: BlockMask,
    scale: float,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
) -> jax.Array:
    """Block-sparse attention in plain XLA (see the module docstring).

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]``.
        v: ``[B, Hkv, Lk, Dv]``.
        mask: Block mask of geometry ``(Lq, Lk)`` with batch/head dims 1 or ``B``/``Hq``.
        scale: Logit scale.
        chunk_bytes: Approximate float32 logit bytes computed per ``lax.map`` step.

    Returns:
        ``[B, Hq, Lq, Dv]`` in ``q.dtype``.
    """
    batch, hq, lq, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    groups = hq // hkv
    bq, bk = mask.block_q, mask.block_kv
    nq, nk = mask.num_q_blocks, mask.num_kv_blocks
    bm, hm = mask.block_map.shape[:2]
    blocks = kernel_blocks(mask)
    width = blocks.kv_indices.shape[-1]
    check_tokens = may_have_partial(mask)

    q = pad_axis(q, 2, nq * bq)
    k = pad_axis(k, 2, nk * bk)
    v = pad_axis(v, 2, nk * bk)
    if hm == 1:  # stack the query heads of a group into rows: [B, Hkv, nq, G*bq, D]
        hx, rows = hkv, groups * bq
        qx = q.reshape(batch, hkv, groups, nq, bq, d).transpose(0, 1, 3, 2, 4, 5)
        qx = qx.reshape(batch, hkv, nq, rows, d)
        kx, vx = k, v
        head_ids = jnp.zeros((hx,), jnp.int32)
        row_pos = jnp.tile(jnp.arange(bq, dtype=jnp.int32), groups)
    else:  # per-query-head masks: [B, Hq, nq, bq, D], KV heads repeated
        hx, rows = hq, bq
        qx = q.reshape(batch, hq, nq, bq, d)
        kx = jnp.repeat(k, groups, axis=1) if groups > 1 else k
        vx = jnp.repeat(v, groups, axis=1) if groups > 1 else v
        head_ids = jnp.arange(hx, dtype=jnp.int32)
        row_pos = jnp.arange(bq, dtype=jnp.int32)
    kb = kx.reshape(batch, hx, nk, bk, d)
    vb = vx.reshape(batch, hx, nk, bk, dv)
    batch_ids = jnp.arange(batch, dtype=jnp.int32) if bm > 1 else jnp.zeros((batch,), jnp.int32)

    idx = jnp.broadcast_to(jnp.asarray(blocks.kv_indices), (batch, hx, nq, width))
    kinds = jnp.broadcast_to(jnp.asarray(blocks.kinds), (batch, hx, nq, width))
    b_idx = jnp.arange(batch)[:, None, None]
    h_idx = jnp.arange(hx)[None, :, None]

    def one_block(args):
        i, q_i, idx_i, kind_i = args  # [], [B,Hx,R,D], [B,Hx,K], [B,Hx,K]
        kg = kb[b_idx, h_idx, idx_i]  # [B, Hx, K, bk, D]
        vg = vb[b_idx, h_idx, idx_i]
        s = jnp.einsum("bxrd,bxkjd->bxrkj", q_i, kg, preferred_element_type=jnp.float32)
        s = s * scale
        if check_tokens:
            kv_pos = idx_i[:, :, None, :, None] * bk + jnp.arange(bk, dtype=jnp.int32)
            tok = tile_mask(
                mask,
                batch_ids[:, None, None, None, None],
                head_ids[None, :, None, None, None],
                (i * bq + row_pos)[None, None, :, None, None],
                kv_pos,
            )
            kind = kind_i[:, :, None, :, None]
            keep = (kind == FULL) | ((kind == PARTIAL) & tok)
        else:
            keep = (kind_i != EMPTY)[:, :, None, :, None]
        s = jnp.where(keep, s, -jnp.inf)
        m = jax.lax.stop_gradient(jnp.max(s, axis=(-2, -1), keepdims=True))
        m = jnp.where(jnp.isfinite(m), m, 0.0)
        p = jnp.exp(s - m)
        l = jnp.sum(p, axis=(-2, -1))[..., None]
        o = jnp.einsum(
            "bxrkj,bxkjd->bxrd", p.astype(vg.dtype), vg, preferred_element_type=jnp.float32
        )
        return (o / jnp.where(l > 0, l, 1.0)).astype(q.dtype)

    per_block = batch * hx * rows * width * bk * 4
    chunk = max(1, min(nq, chunk_bytes // max(per_block, 1)))
    xs = (
        jnp.arange(nq, dtype=jnp.int32),
        jnp.moveaxis(qx, 2, 0),
        jnp.moveaxis(idx, 2, 0),
        jnp.moveaxis(kinds, 2, 0),
    )
    out = jax.lax.map(jax.checkpoint(one_block), xs, batch_size=chunk)  # [nq, B, Hx, R, Dv]
    if hm == 1:
        out = out.reshape(nq, batch, hkv, groups, bq, dv).transpose(1, 2, 3, 0, 4, 5)
    else:
        out = out.transpose(1, 2, 0, 3, 4)
    return out.reshape(batch, hq, nq * bq, dv)[:, :, :lq]


__all__ = ["xla_attention"]

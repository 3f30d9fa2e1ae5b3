"""XLA implementations whose cost scales with the number of kept blocks / kept N:M entries.

Block-sparse products run one ``lax.fori_loop`` over the *kept* blocks only (the flat list of
valid ``(row, slot)`` pairs, its trip count ``sum(counts)`` is traced), each step a dense
``bm x bn`` block product against a contiguous panel of the dense operand, accumulated in float32
into a block-major output with ``dynamic_update_slice`` (in place). Padded slots and empty rows
cost nothing. On CPU this tracks ``density x`` the dense ``jnp.dot`` time (see
``benchmarks/matmul.py``).

N:M products gather the kept inputs: for a weight compressed along its reduction axis, each
kept value's absolute input index is ``group * m + index`` and the product is a gather plus an
elementwise-multiply-and-sum over ``K * n / m`` terms (no densified weight).

Above ``DENSE_FALLBACK_DENSITY`` (0.7) of kept blocks the loop does more work than one dense GEMM
(its block products are smaller and memory-bound), so a ``lax.cond`` on the traced kept-block
count switches to densify + one dense product; the time is then about the dense time instead of
up to ~1.7x it. (Under ``vmap`` over the sparse operand the predicate is batched and both
branches run.)

These functions take validated 2-D operands; `sparsejax.ops.api` handles batching, dtype
checks, dispatch and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax.formats import BlockSparse, NMSparse

__all__ = ["bsr_matmul", "dense_bsr_matmul", "dense_nm_matmul", "nm_matmul", "sddmm"]

_HI = jax.lax.Precision.HIGHEST

#: Fraction of kept blocks above which the block loop falls back to densify + dense GEMM.
DENSE_FALLBACK_DENSITY = 0.7


def _use_dense(a: BlockSparse) -> Array:
    total = a.n_block_rows * a.n_block_cols
    return jnp.sum(a.counts) > DENSE_FALLBACK_DENSITY * total


def _kept_blocks(a: BlockSparse) -> tuple[Int[Array, " RS"], Int[Array, " RS"], Int[Array, ""]]:
    """Rows and slots of the kept blocks (first ``nnz`` entries valid, row-major order)."""
    r, s = a.indices.shape
    valid = a.valid_slots().reshape(-1)
    order = jnp.argsort(~valid, stable=True).astype(jnp.int32)
    return order // s, order % s, jnp.sum(valid, dtype=jnp.int32)


def _bdot(x: Array, y: Array) -> Array:
    return jnp.matmul(x, y, preferred_element_type=jnp.float32, precision=_HI)


def bsr_matmul(a: BlockSparse, b: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``A @ b`` for BSR ``A [M, K]`` and dense ``b [K, N]``."""
    out_dtype = jnp.result_type(a.data, b)
    return jax.lax.cond(_use_dense(a), lambda: _bdot(a.to_dense(), b).astype(out_dtype),
                        lambda: _bsr_matmul_loop(a, b).astype(out_dtype))


def _bsr_matmul_loop(a: BlockSparse, b: Array) -> Array:
    r, _ = a.indices.shape
    bm, bn = a.block_shape
    n = b.shape[1]
    rows, slots, nnz = _kept_blocks(a)

    def body(k, out):
        i, s = rows[k], slots[k]
        c = a.indices[i, s]
        panel = jax.lax.dynamic_slice_in_dim(b, c * bn, bn, axis=0)  # [bn, N]
        cur = jax.lax.dynamic_index_in_dim(out, i, axis=0, keepdims=False)
        upd = cur + _bdot(a.data[i, s], panel)
        return jax.lax.dynamic_update_index_in_dim(out, upd, i, axis=0)

    out = jax.lax.fori_loop(0, nnz, body, jnp.zeros((r, bm, n), jnp.float32))
    return out.reshape(r * bm, n)


def dense_bsr_matmul(x: Float[Array, "B M"], a: BlockSparse) -> Float[Array, "B N"]:
    """``x @ A`` for dense ``x [B, M]`` and BSR ``A [M, N]``.

    Each step reads the column panel ``x[:, i-block]`` and updates the output column panel
    ``out[:, j-block]`` in place (strided slices; no transposed copies of ``x`` or the output).
    """
    out_dtype = jnp.result_type(x, a.data)
    return jax.lax.cond(_use_dense(a), lambda: _bdot(x, a.to_dense()).astype(out_dtype),
                        lambda: _dense_bsr_matmul_loop(x, a).astype(out_dtype))


def _dense_bsr_matmul_loop(x: Array, a: BlockSparse) -> Array:
    bm, bn = a.block_shape
    rows, slots, nnz = _kept_blocks(a)

    def body(k, out):
        i, s = rows[k], slots[k]
        j = a.indices[i, s]
        xi = jax.lax.dynamic_slice_in_dim(x, i * bm, bm, axis=1)  # [B, bm]
        cur = jax.lax.dynamic_slice_in_dim(out, j * bn, bn, axis=1)  # [B, bn]
        upd = cur + _bdot(xi, a.data[i, s])
        return jax.lax.dynamic_update_slice_in_dim(out, upd, j * bn, axis=1)

    return jax.lax.fori_loop(0, nnz, body, jnp.zeros((x.shape[0], a.shape[1]), jnp.float32))


def sddmm(a: Float[Array, "M Kd"], b: Float[Array, "Kd N"], like: BlockSparse) -> BlockSparse:
    """``a @ b`` computed only at ``like``'s kept blocks, as a BSR with ``like``'s structure."""
    out_dtype = jnp.result_type(a, b)
    data = jax.lax.cond(_use_dense(like), lambda: _sddmm_dense(a, b, like).astype(out_dtype),
                        lambda: _sddmm_loop(a, b, like).astype(out_dtype))
    return like.replace(data=data)


def _sddmm_dense(a: Array, b: Array, like: BlockSparse) -> Array:
    r, _ = like.indices.shape
    bm, bn = like.block_shape
    blocks = _bdot(a, b).reshape(r, bm, -1, bn).transpose(0, 2, 1, 3)  # [R, C, bm, bn]
    data = jnp.take_along_axis(blocks, like.indices[:, :, None, None], axis=1)
    return jnp.where(like.valid_slots()[:, :, None, None], data, jnp.zeros((), data.dtype))


def _sddmm_loop(a: Array, b: Array, like: BlockSparse) -> Array:
    out_dtype = jnp.result_type(a, b)
    r, s_max = like.indices.shape
    bm, bn = like.block_shape
    c = like.n_block_cols
    kd = a.shape[1]
    ar = a.reshape(r, bm, kd)
    bt = b.reshape(kd, c, bn).transpose(1, 0, 2)  # [C, Kd, bn]
    rows, slots, nnz = _kept_blocks(like)

    def body(k, data):
        i, s = rows[k], slots[k]
        j = like.indices[i, s]
        blk = _bdot(ar[i], bt[j]).astype(out_dtype)
        zero = jnp.zeros((), i.dtype)  # one index dtype, also under jax_enable_x64
        return jax.lax.dynamic_update_slice(data, blk[None, None], (i, s, zero, zero))

    return jax.lax.fori_loop(0, nnz, body, jnp.zeros((r, s_max, bm, bn), out_dtype))


def _nm_rows(w: NMSparse) -> Int[Array, "Kc N"]:
    """Absolute reduction-axis index of every kept value of a 2-D ``w`` compressed on axis 0."""
    kc = w.values.shape[0]
    group_start = (jnp.arange(kc, dtype=jnp.int32) // w.n) * w.m
    return group_start[:, None] + w.indices.astype(jnp.int32)


def dense_nm_matmul(x: Float[Array, "B K"], w: NMSparse) -> Float[Array, "B N"]:
    """``x @ W`` for ``W [K, N]`` compressed along axis 0 (Flax ``Dense`` layout): a gather of the
    kept inputs, ``out[b, j] = sum_t x[b, rows[t, j]] * values[t, j]``."""
    out_dtype = jnp.result_type(x, w.values)
    rows = _nm_rows(w)  # [Kc, N]
    xg = jnp.take(x, rows, axis=1)  # [B, Kc, N]
    out = jnp.einsum("bkn,kn->bn", xg, w.values, preferred_element_type=jnp.float32,
                     precision=_HI)
    return out.astype(out_dtype)


def nm_matmul(w: NMSparse, x: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``W @ x`` for ``W [M, K]`` compressed along axis 1 (torch ``[out, in]`` layout): a gather
    of the kept rows of ``x``."""
    out_dtype = jnp.result_type(x, w.values)
    wt = NMSparse(w.values.T, w.indices.T, w.n, w.m, -2, w.length)
    rows = _nm_rows(wt)  # [Kc, M]
    xg = x[rows]  # [Kc, M, N]
    out = jnp.einsum("km,kmn->mn", wt.values, xg, preferred_element_type=jnp.float32,
                     precision=_HI)
    return out.astype(out_dtype)

"""Pallas GPU kernels (Triton lowering) for block-sparse matrix products.

The same three forward products as `sparsejax.ops.pallas_tpu`, over the same `BlockSparse`
metadata, written for the Pallas **Triton** lowering (`jax.experimental.pallas.triton`):

- `bsr_matmul(a, b)`: grid ``(n_block_rows, N_pad // tn)``; each program runs a `fori_loop` over
  the ``counts[i]`` kept blocks of its block row, loading ``a.data[i, s]`` and the ``[bn, tn]``
  tile of ``b`` at block row ``indices[i, s]``, accumulating in f32 registers.
- `dense_bsr_matmul(x, a)`: the column-major (BSC) view of ``a``'s metadata is built with a few
  small integer ops outside the kernel (``[n_block_cols, n_block_rows]`` tables); grid
  ``(P_pad // tp, n_block_cols)``, each program loops over the kept blocks of its block column.
- `sddmm(a, b, like)`: grid ``(n_block_rows, max_blocks_per_row)``; a kept slot loops over the
  reduction in ``td`` tiles, a padded slot writes zeros.
- `nm_matmul(w, x)`: N:M ``W [M, K]`` (compressed along K) times dense ``x [K, N]``; grid
  ``(M_pad // tm, N_pad // tn)``, each program loads only the kept values and their uint8
  in-group positions of a ``[tm, tk]`` tile of ``W``, expands the tile in registers and runs a
  dense ``tl.dot`` (it saves ``W``'s memory traffic, not FLOPs: Triton has no 2:4 ``mma.sp``).

Why Triton and not Mosaic GPU: with jax 0.10.2 the Triton lowering is the one that can be checked
without a GPU (``interpret=True`` runs the kernel body on CPU, and ``lower(lowering_platforms=
("cuda",))`` runs the real Pallas -> Triton IR lowering); Mosaic GPU's interpreter only simulates
a single-block grid. The Pallas Triton backend is deprecated from JAX 0.11 in favour of Mosaic GPU.

Block dims ``bm``, ``bn`` and the tiles must be powers of two >= 16 (Triton's ``tl.dot``).
Pure, forward-only and jit-compatible; gradients come from `sparsejax.ops.api`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float, Int

from sparsejax._blocks import BlockIndex
from sparsejax._pallas import (
    check_pow2,
    check_rank,
    check_tile,
    flat_index,
    geometry,
    pad_to,
    pow2_tile,
    result_dtype,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from sparsejax.formats import BlockSparse, NMSparse

__all__ = ["bsr_matmul", "dense_bsr_matmul", "nm_matmul", "sddmm"]


def _compiler_params(num_warps: int, num_stages: int) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# --------------------------------------------------------------------------------------------
# sparse x dense
# --------------------------------------------------------------------------------------------


def _bsr_matmul_kernel(idx_ref, cnt_ref, a_ref, b_ref, o_ref, *, maxb, bm, bn, tn):
    row = pl.program_id(0)

    def body(s, acc):
        col = idx_ref[row * maxb + s]
        a_blk = a_ref[row, s, :, :]
        b_blk = b_ref[pl.ds(col * bn, bn), :]
        return acc + jnp.dot(a_blk, b_blk, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, cnt_ref[row], body, jnp.zeros((bm, tn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def bsr_matmul(
    a: BlockSparse,
    b: Float[Array, "K N"],
    *,
    block_n: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
) -> Float[Array, "M N"]:
    """Block-sparse ``a [M, K]`` times dense ``b [K, N]`` with a Pallas Triton kernel.

    Args:
      a: BlockSparse ``[M, K]``; block dims must be powers of two >= 16.
      b: Dense ``[K, N]``.
      block_n: Column tile ``tn`` (power of two >= 16; shrunk to cover a small ``N``, and ``N``
        is zero-padded to a multiple of it).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      Dense ``[M, N]`` in the common dtype of ``a.data`` and ``b`` (f32 accumulation).

    Raises:
      TypeError: If ``a`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If shapes do not match, or a block dim or ``block_n`` is not a power of two
        >= 16.
    """
    m, k, nbr, maxb, bm, bn, mp, kp = geometry(a)
    check_rank(b, "b")
    block_n = check_tile(block_n, "block_n")
    check_pow2(bm, "a.block_shape[0]")
    check_pow2(bn, "a.block_shape[1]")
    if b.shape[0] != k:
        raise ValueError(f"b.shape[0]={b.shape[0]} must equal a.shape[1]={k} (a.shape={(m, k)}).")
    dtype = result_dtype("bsr_matmul", a.data.dtype, b.dtype)
    n = int(b.shape[1])
    tn, np_ = pow2_tile(n, block_n, "block_n")
    if maxb == 0 or n == 0 or m == 0:
        return jnp.zeros((m, n), dtype)
    bp = pad_to(b.astype(dtype), (kp, np_))
    out = pl.pallas_call(
        functools.partial(_bsr_matmul_kernel, maxb=maxb, bm=bm, bn=bn, tn=tn),
        grid=(nbr, np_ // tn),
        in_specs=[
            pl.BlockSpec((nbr * maxb,), lambda i, j: (0,)),
            pl.BlockSpec((nbr,), lambda i, j: (0,)),
            pl.BlockSpec((nbr, maxb, bm, bn), lambda i, j: (0, 0, 0, 0)),
            pl.BlockSpec((kp, tn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((bm, tn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((mp, np_), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_bsr_matmul_gpu",
    )(*flat_index(a), a.data.astype(dtype), bp)
    return out[:m, :n]


# --------------------------------------------------------------------------------------------
# dense x sparse
# --------------------------------------------------------------------------------------------


def _block_columns(
    indices: Int[Array, "nbr maxb"], counts: Int[Array, " nbr"], n_block_cols: int
) -> tuple[Int[Array, "nbc nbr"], Int[Array, "nbc nbr"], Int[Array, " nbc"]]:
    """Column-major (BSC) view of BSR metadata: for each block column, its kept blocks.

    Args:
      indices: ``[n_block_rows, max_blocks_per_row]`` block-column of each slot.
      counts: ``[n_block_rows]`` kept blocks per row.
      n_block_cols: Number of block columns.

    Returns:
      ``(rows, slots, col_counts)``: ``rows[c, t]`` / ``slots[c, t]`` are the block row and the
      slot in ``data`` of the ``t``-th kept block of column ``c`` (ascending rows; entries past
      ``col_counts[c]`` are padding: row 0, slot 0), ``col_counts[c]`` the kept blocks in ``c``.
    """
    cols, slots = BlockIndex(indices, counts).transpose(n_block_cols, indices.shape[0],
                                                        pad="zero")
    return cols.indices, slots, cols.counts


def _dense_bsr_kernel(rows_ref, slots_ref, ccnt_ref, x_ref, a_ref, o_ref, *, nbr, bm, tp, bn):
    col = pl.program_id(1)

    def body(t, acc):
        row = rows_ref[col * nbr + t]
        slot = slots_ref[col * nbr + t]
        x_blk = x_ref[:, pl.ds(row * bm, bm)]
        a_blk = a_ref[row, slot, :, :]
        return acc + jnp.dot(x_blk, a_blk, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, ccnt_ref[col], body, jnp.zeros((tp, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def dense_bsr_matmul(
    x: Float[Array, "P M"],
    a: BlockSparse,
    *,
    block_p: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
) -> Float[Array, "P K"]:
    """Dense ``x [P, M]`` times block-sparse ``a [M, K]`` with a Pallas Triton kernel.

    Args:
      x: Dense ``[P, M]``.
      a: BlockSparse ``[M, K]``; block dims must be powers of two >= 16.
      block_p: Row tile ``tp`` of ``x`` / the output (power of two >= 16).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      Dense ``[P, K]`` in the common dtype of ``x`` and ``a.data`` (f32 accumulation).

    Raises:
      TypeError: If ``a`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If shapes do not match, or a block dim or ``block_p`` is not a power of two
        >= 16.
    """
    m, k, nbr, maxb, bm, bn, mp, kp = geometry(a)
    check_rank(x, "x")
    block_p = check_tile(block_p, "block_p")
    check_pow2(bm, "a.block_shape[0]")
    check_pow2(bn, "a.block_shape[1]")
    if x.shape[1] != m:
        raise ValueError(f"x.shape[1]={x.shape[1]} must equal a.shape[0]={m} (a.shape={(m, k)}).")
    dtype = result_dtype("dense_bsr_matmul", x.dtype, a.data.dtype)
    p = int(x.shape[0])
    tp, pp = pow2_tile(p, block_p, "block_p")
    if maxb == 0 or p == 0 or k == 0:
        return jnp.zeros((p, k), dtype)
    nbc = kp // bn
    rows, slots, col_counts = _block_columns(a.indices, a.counts, nbc)
    xp = pad_to(x.astype(dtype), (pp, mp))
    out = pl.pallas_call(
        functools.partial(_dense_bsr_kernel, nbr=nbr, bm=bm, tp=tp, bn=bn),
        grid=(pp // tp, nbc),
        in_specs=[
            pl.BlockSpec((nbc * nbr,), lambda pi, c: (0,)),
            pl.BlockSpec((nbc * nbr,), lambda pi, c: (0,)),
            pl.BlockSpec((nbc,), lambda pi, c: (0,)),
            pl.BlockSpec((tp, mp), lambda pi, c: (pi, 0)),
            pl.BlockSpec((nbr, maxb, bm, bn), lambda pi, c: (0, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((tp, bn), lambda pi, c: (pi, c)),
        out_shape=jax.ShapeDtypeStruct((pp, kp), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_dense_bsr_matmul_gpu",
    )(rows.reshape(-1), slots.reshape(-1), col_counts, xp, a.data.astype(dtype))
    return out[:p, :k]


# --------------------------------------------------------------------------------------------
# sampled dense x dense
# --------------------------------------------------------------------------------------------


def _sddmm_kernel(idx_ref, cnt_ref, a_ref, b_ref, o_ref, *, maxb, bm, bn, td, nd):
    row = pl.program_id(0)
    slot = pl.program_id(1)
    col = idx_ref[row * maxb + slot]

    def body(d, acc):
        a_blk = a_ref[:, pl.ds(d * td, td)]
        b_blk = b_ref[pl.ds(d * td, td), pl.ds(col * bn, bn)]
        return acc + jnp.dot(a_blk, b_blk, preferred_element_type=jnp.float32)

    trips = jnp.where(slot < cnt_ref[row], nd, 0)
    acc = lax.fori_loop(0, trips, body, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def sddmm(
    a: Float[Array, "M D"],
    b: Float[Array, "D N"],
    like: BlockSparse,
    *,
    block_d: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
) -> BlockSparse:
    """``(a @ b)`` evaluated only at the kept blocks of ``like``, with a Pallas Triton kernel.

    Args:
      a: Dense ``[M, D]``.
      b: Dense ``[D, N]``.
      like: BlockSparse ``[M, N]`` whose kept blocks are computed; its ``data`` is ignored.
        Block dims must be powers of two >= 16.
      block_d: Reduction tile ``td`` (power of two >= 16).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      BlockSparse with ``like``'s indices, counts, shape and block shape, whose ``data`` holds the
      blocks of ``a @ b`` (common dtype of ``a`` and ``b``; padded slots zero).

    Raises:
      TypeError: If ``like`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If shapes do not match, or a block dim or ``block_d`` is not a power of two
        >= 16.
    """
    m, n, nbr, maxb, bm, bn, mp, np_ = geometry(like, "like")
    check_rank(a, "a")
    check_rank(b, "b")
    block_d = check_tile(block_d, "block_d")
    check_pow2(bm, "like.block_shape[0]")
    check_pow2(bn, "like.block_shape[1]")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a.shape[1]={a.shape[1]} must equal b.shape[0]={b.shape[0]}.")
    if (a.shape[0], b.shape[1]) != (m, n):
        raise ValueError(f"a @ b has shape {(a.shape[0], b.shape[1])} but like.shape is {(m, n)}.")
    dtype = result_dtype("sddmm", a.dtype, b.dtype)
    dd = int(a.shape[1])
    td, dp = pow2_tile(dd, block_d, "block_d")
    if maxb == 0 or nbr == 0 or dd == 0:
        return like.replace(data=jnp.zeros(like.data.shape, dtype))
    ap = pad_to(a.astype(dtype), (mp, dp))
    bp = pad_to(b.astype(dtype), (dp, np_))
    data = pl.pallas_call(
        functools.partial(_sddmm_kernel, maxb=maxb, bm=bm, bn=bn, td=td, nd=dp // td),
        grid=(nbr, maxb),
        in_specs=[
            pl.BlockSpec((nbr * maxb,), lambda i, s: (0,)),
            pl.BlockSpec((nbr,), lambda i, s: (0,)),
            pl.BlockSpec((bm, dp), lambda i, s: (i, 0)),
            pl.BlockSpec((dp, np_), lambda i, s: (0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, bm, bn), lambda i, s: (i, s, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((nbr, maxb, bm, bn), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_sddmm_gpu",
    )(*flat_index(like), ap, bp)
    return like.replace(data=data)


# --------------------------------------------------------------------------------------------
# N:M sparse x dense
# --------------------------------------------------------------------------------------------


def _nm_matmul_kernel(v_ref, i_ref, x_ref, o_ref, *, n, m, tm, tn, tk, nk):
    q = lax.broadcasted_iota(jnp.int32, (tm, tk), 1)
    rows = lax.broadcasted_iota(jnp.int32, (tm, tk), 0)
    group, pos = q // m, q % m
    tkc = tk // m * n

    def body(c, acc):
        w_tile = jnp.zeros((tm, tk), jnp.float32)
        for t in range(n):  # the t-th kept entry of each group, gathered to every dense column
            cols = c * tkc + group * n + t
            vals = v_ref[rows, cols].astype(jnp.float32)
            where = i_ref[rows, cols].astype(jnp.int32)
            w_tile = w_tile + jnp.where(where == pos, vals, 0.0)
        x_tile = x_ref[pl.ds(c * tk, tk), :]
        return acc + jnp.dot(w_tile.astype(x_ref.dtype), x_tile, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, nk, body, jnp.zeros((tm, tn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def nm_matmul(
    w: NMSparse,
    x: Float[Array, "K N"],
    *,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
) -> Float[Array, "M N"]:
    """N:M-sparse ``w [M, K]`` (compressed along ``K``) times dense ``x [K, N]``, Pallas Triton.

    Each program owns a ``[tm, tn]`` output tile and loops over ``K`` in ``tk`` steps: it gathers
    the ``tk * n / m`` kept values of each of its rows and their uint8 positions, expands them to
    a dense ``[tm, tk]`` register tile (``n`` masked selects) and accumulates
    ``tile @ x[k-step, :]`` in f32.

    Args:
      w: 2-D `NMSparse` of dense shape ``[M, K]`` grouped along its last axis (``axis=-1``, the
        torch ``[out, in]`` layout), with ``m`` a power of two dividing ``block_k``.
      x: Dense ``[K, N]``.
      block_m: Row tile ``tm`` (power of two >= 16).
      block_n: Column tile ``tn`` (power of two >= 16).
      block_k: Reduction step ``tk`` (power of two >= 16, a multiple of ``m``).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      Dense ``[M, N]`` in the common dtype of ``w`` and ``x`` (f32 accumulation).

    Raises:
      TypeError: If ``w`` is not an NMSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If ``w`` is not 2-D or not grouped along its last axis, ``x.shape[0] != K``,
        ``m`` does not divide ``block_k``, or a tile is not a power of two >= 16.
    """
    for attr in ("values", "indices", "n", "m", "axis"):
        if not hasattr(w, attr):
            raise TypeError(
                f"w must be a sparsejax.formats.NMSparse, got {type(w).__name__} "
                f"(missing attribute {attr!r})."
            )
    check_rank(x, "x")
    if w.values.ndim != 2:
        raise ValueError(f"w must be 2-D, got values of shape {tuple(w.values.shape)}.")
    if w.axis not in (-1, 1):
        raise ValueError(
            f"w.axis={w.axis}: nm_matmul needs w [M, K] grouped along its reduction axis "
            "(axis=-1); for a [K, N] kernel grouped along axis 0 use x @ w (dense_nm_matmul)."
        )
    n, m = int(w.n), int(w.m)
    mdim, kc = (int(d) for d in w.values.shape)
    k = int(w.shape[-1])
    if x.shape[0] != k:
        raise ValueError(f"x.shape[0]={x.shape[0]} must equal K={k} (w is {mdim}x{k} {n}:{m}).")
    dtype = result_dtype("nm_matmul", w.values.dtype, x.dtype)
    nn = int(x.shape[1])
    tm, mp = pow2_tile(mdim, check_tile(block_m, "block_m"), "block_m")
    tn, np_ = pow2_tile(nn, check_tile(block_n, "block_n"), "block_n")
    tk, kp = pow2_tile(k, check_tile(block_k, "block_k"), "block_k")
    if tk % m:
        raise ValueError(
            f"block_k={block_k} (tile {tk}) must be a multiple of m={m}; m must be a power of two."
        )
    if n == 0 or mdim == 0 or nn == 0 or k == 0:
        return jnp.zeros((mdim, nn), dtype)
    values = pad_to(w.values.astype(dtype), (mp, kp // m * n))
    indices = pad_to(w.indices, (mp, kp // m * n))
    xp = pad_to(x.astype(dtype), (kp, np_))
    kcp = kp // m * n
    out = pl.pallas_call(
        functools.partial(_nm_matmul_kernel, n=n, m=m, tm=tm, tn=tn, tk=tk, nk=kp // tk),
        grid=(mp // tm, np_ // tn),
        in_specs=[
            pl.BlockSpec((tm, kcp), lambda i, j: (i, 0)),
            pl.BlockSpec((tm, kcp), lambda i, j: (i, 0)),
            pl.BlockSpec((kp, tn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((mp, np_), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_nm_matmul_gpu",
    )(values, indices, xp)
    return out[:mdim, :nn]

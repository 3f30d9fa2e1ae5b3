"""Pallas TPU (Mosaic) kernels for block-sparse matrix products.

Three forward kernels over the `BlockSparse` (BSR) layout of `sparsejax.formats`:

- `bsr_matmul(a, b)`: sparse ``[M, K]`` x dense ``[K, N]`` -> dense ``[M, N]``;
- `dense_bsr_matmul(x, a)`: dense ``[P, M]`` x sparse ``[M, K]`` -> dense ``[P, K]``;
- `sddmm(a, b, like)`: dense ``[M, D]`` x dense ``[D, N]`` sampled at the kept blocks of
  ``like`` -> `BlockSparse` with ``like``'s structure.

All three use `pltpu.PrefetchScalarGridSpec`: the flattened per-row block-column lists
(``indices``) and the per-row counts (``counts``) are scalar-prefetched into SMEM, and the
BlockSpec index maps read them so that only kept blocks are DMA'd into VMEM. Padded slots
(``slot >= counts[row]``) map to the same block as the previous grid step, so the pipeline issues
no new copy for them and the kernel skips their matmul. Every output block is visited on
consecutive grid steps and written on its last one (so empty rows still produce zeros), with an
f32 accumulator in VMEM scratch. Inputs may be float32, bfloat16 or float16.

These functions are pure, forward-only and jit-compatible; gradients are composed from them by
`sparsejax.ops.api`. On CPU pass ``interpret=pltpu.InterpretParams()`` (or ``interpret=True``).
See ``docs/pallas-kernels.md`` for the grids and what was verified.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float

from sparsejax._pallas import (
    check_rank,
    check_tile,
    flat_index,
    geometry,
    pad_to,
    result_dtype,
    tile_and_padded,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from sparsejax.formats import BlockSparse

__all__ = ["bsr_matmul", "dense_bsr_matmul", "sddmm"]

# --------------------------------------------------------------------------------------------
# sparse x dense
# --------------------------------------------------------------------------------------------


def _bsr_matmul_kernel(idx_ref, cnt_ref, a_ref, b_ref, o_ref, acc_ref, *, maxb: int):
    del idx_ref
    row = pl.program_id(0)
    slot = pl.program_id(2)

    @pl.when(slot == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(slot < cnt_ref[row])
    def _accumulate():
        acc_ref[...] += jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    @pl.when(slot == maxb - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def bsr_matmul(
    a: BlockSparse,
    b: Float[Array, "K N"],
    *,
    block_n: int = 512,
    interpret: Any = False,
) -> Float[Array, "M N"]:
    """Block-sparse ``a [M, K]`` times dense ``b [K, N]`` with a Mosaic TPU kernel.

    Grid ``(n_block_rows, N_pad // tn, max_blocks_per_row)``: block row ``i``, column tile ``j``,
    kept-block slot ``s`` (innermost, so the ``[bm, tn]`` output block ``(i, j)`` stays resident
    over consecutive steps). ``a.data[i, s]`` and the ``[bn, tn]`` tile of ``b`` at block row
    ``a.indices[i, s]`` are fetched through scalar-prefetched index maps.

    Args:
      a: BlockSparse ``[M, K]`` with block ``(bm, bn)``.
      b: Dense ``[K, N]``.
      block_n: Column tile ``tn`` of ``b`` / the output (one tile if ``N <= block_n``; otherwise
        ``N`` is zero-padded to a multiple of it). Use a multiple of 128 on TPU.
      interpret: ``False`` on TPU; on CPU ``pltpu.InterpretParams()`` or ``True``.

    Returns:
      Dense ``[M, N]`` in the common dtype of ``a.data`` and ``b`` (f32 accumulation).

    Raises:
      TypeError: If ``a`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If ``b`` is not 2-D, ``b.shape[0] != K``, or ``block_n < 1``.
    """
    m, k, nbr, maxb, bm, bn, mp, kp = geometry(a)
    check_rank(b, "b")
    block_n = check_tile(block_n, "block_n")
    if b.shape[0] != k:
        raise ValueError(f"b.shape[0]={b.shape[0]} must equal a.shape[1]={k} (a.shape={(m, k)}).")
    dtype = result_dtype("bsr_matmul", a.data.dtype, b.dtype)
    n = int(b.shape[1])
    if maxb == 0 or n == 0 or m == 0:
        return jnp.zeros((m, n), dtype)
    tn, np_ = tile_and_padded(n, block_n)
    bp = pad_to(b.astype(dtype), (kp, np_))
    data = a.data.astype(dtype)

    def a_map(i, j, s, idx, cnt):
        del j, idx
        # Padded slots re-use the last kept block: no new DMA is issued for them.
        return i, jnp.minimum(s, jnp.maximum(cnt[i] - 1, 0)), 0, 0

    def b_map(i, j, s, idx, cnt):
        del cnt
        # Padded slots repeat the row's last valid index (the agreed layout): again no new DMA.
        return idx[i * maxb + s], j

    def o_map(i, j, s, idx, cnt):
        del s, idx, cnt
        return i, j

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(nbr, np_ // tn, maxb),
        in_specs=[
            pl.BlockSpec((None, None, bm, bn), a_map),
            pl.BlockSpec((bn, tn), b_map),
        ],
        out_specs=pl.BlockSpec((bm, tn), o_map),
        scratch_shapes=[pltpu.VMEM((bm, tn), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_bsr_matmul_kernel, maxb=maxb),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((mp, np_), dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="sparsejax_bsr_matmul",
    )(*flat_index(a), data, bp)
    return out[:m, :n]


# --------------------------------------------------------------------------------------------
# dense x sparse
# --------------------------------------------------------------------------------------------


def _dense_bsr_kernel(idx_ref, cnt_ref, x_ref, a_ref, o_ref, acc_ref, *, nbr, maxb, nbc, bn):
    row = pl.program_id(1)
    slot = pl.program_id(2)

    @pl.when((row == 0) & (slot == 0))
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(slot < cnt_ref[row])
    def _accumulate():
        col = idx_ref[row * maxb + slot]
        acc_ref[col] += jnp.dot(x_ref[...], a_ref[...], preferred_element_type=jnp.float32)

    @pl.when((row == nbr - 1) & (slot == maxb - 1))
    def _store():
        for c in range(nbc):
            o_ref[:, c * bn : (c + 1) * bn] = acc_ref[c].astype(o_ref.dtype)


def dense_bsr_matmul(
    x: Float[Array, "P M"],
    a: BlockSparse,
    *,
    block_p: int = 128,
    interpret: Any = False,
) -> Float[Array, "P K"]:
    """Dense ``x [P, M]`` times block-sparse ``a [M, K]`` with a Mosaic TPU kernel.

    Grid ``(P_pad // tp, n_block_rows, max_blocks_per_row)``. The ``[tp, K]`` output row-tile is
    resident in VMEM for a whole ``(row, slot)`` sweep (it is the same output block on every step
    of that sweep), with an f32 accumulator of shape ``[K / bn, tp, bn]`` whose leading index is
    the kept block's column read from the prefetched ``indices``. ``x``'s ``[tp, bm]`` tile is
    fetched once per block row, ``a.data[i, s]`` once per kept block. VMEM use is about
    ``tp * K * (4 + 2 * itemsize)`` bytes: lower ``block_p`` for very wide ``K``.

    Args:
      x: Dense ``[P, M]``.
      a: BlockSparse ``[M, K]`` with block ``(bm, bn)``.
      block_p: Row tile ``tp`` of ``x`` / the output (one tile if ``P <= block_p``; otherwise ``P``
        is zero-padded to a multiple of it). Use a multiple of 8 (16 for bf16) on TPU.
      interpret: ``False`` on TPU; on CPU ``pltpu.InterpretParams()`` or ``True``.

    Returns:
      Dense ``[P, K]`` in the common dtype of ``x`` and ``a.data`` (f32 accumulation).

    Raises:
      TypeError: If ``a`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If ``x`` is not 2-D, ``x.shape[1] != M``, or ``block_p < 1``.
    """
    m, k, nbr, maxb, bm, bn, mp, kp = geometry(a)
    check_rank(x, "x")
    block_p = check_tile(block_p, "block_p")
    if x.shape[1] != m:
        raise ValueError(f"x.shape[1]={x.shape[1]} must equal a.shape[0]={m} (a.shape={(m, k)}).")
    dtype = result_dtype("dense_bsr_matmul", x.dtype, a.data.dtype)
    p = int(x.shape[0])
    if maxb == 0 or p == 0 or k == 0:
        return jnp.zeros((p, k), dtype)
    nbc = kp // bn
    tp, pp = tile_and_padded(p, block_p)
    xp = pad_to(x.astype(dtype), (pp, mp))
    data = a.data.astype(dtype)

    def x_map(pi, i, s, idx, cnt):
        del s, idx, cnt
        return pi, i

    def a_map(pi, i, s, idx, cnt):
        del pi, idx
        return i, jnp.minimum(s, jnp.maximum(cnt[i] - 1, 0)), 0, 0

    def o_map(pi, i, s, idx, cnt):
        del i, s, idx, cnt
        return pi, 0

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(pp // tp, nbr, maxb),
        in_specs=[
            pl.BlockSpec((tp, bm), x_map),
            pl.BlockSpec((None, None, bm, bn), a_map),
        ],
        out_specs=pl.BlockSpec((tp, kp), o_map),
        scratch_shapes=[pltpu.VMEM((nbc, tp, bn), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_dense_bsr_kernel, nbr=nbr, maxb=maxb, nbc=nbc, bn=bn),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((pp, kp), dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary")
        ),
        interpret=interpret,
        name="sparsejax_dense_bsr_matmul",
    )(*flat_index(a), xp, data)
    return out[:p, :k]


# --------------------------------------------------------------------------------------------
# sampled dense x dense
# --------------------------------------------------------------------------------------------


def _sddmm_kernel(idx_ref, cnt_ref, a_ref, b_ref, o_ref, acc_ref, *, nd: int):
    del idx_ref
    row = pl.program_id(0)
    slot = pl.program_id(1)
    d = pl.program_id(2)

    @pl.when(d == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(slot < cnt_ref[row])
    def _accumulate():
        acc_ref[...] += jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

    @pl.when(d == nd - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def sddmm(
    a: Float[Array, "M D"],
    b: Float[Array, "D N"],
    like: BlockSparse,
    *,
    block_d: int = 512,
    interpret: Any = False,
) -> BlockSparse:
    """``(a @ b)`` evaluated only at the kept blocks of ``like``, with a Mosaic TPU kernel.

    Grid ``(n_block_rows, max_blocks_per_row, D_pad // td)``: block row ``i``, slot ``s``,
    reduction tile ``d`` (innermost; output block ``data[i, s]`` stays resident). ``a``'s
    ``[bm, td]`` tile and ``b``'s ``[td, bn]`` tile at block column ``like.indices[i, s]`` are
    fetched through scalar-prefetched index maps; padded slots map to the previous step's blocks
    (no DMA, no matmul) and are written as zeros.

    Args:
      a: Dense ``[M, D]``.
      b: Dense ``[D, N]``.
      like: BlockSparse ``[M, N]`` whose kept blocks are computed; its ``data`` is ignored.
      block_d: Reduction tile ``td`` (one tile if ``D <= block_d``; otherwise ``D`` is
        zero-padded to a multiple of it). Use a multiple of 128 on TPU.
      interpret: ``False`` on TPU; on CPU ``pltpu.InterpretParams()`` or ``True``.

    Returns:
      BlockSparse with ``like``'s indices, counts, shape and block shape, whose ``data`` holds the
      blocks of ``a @ b`` (common dtype of ``a`` and ``b``; padded slots zero).

    Raises:
      TypeError: If ``like`` is not a BlockSparse or a dtype is not float32/bfloat16/float16,
        or a tile is not an int.
      ValueError: If ``a``/``b`` are not 2-D, their shapes do not match ``like.shape`` or
        each other, or ``block_d < 1``.
    """
    m, n, nbr, maxb, bm, bn, mp, np_ = geometry(like, "like")
    check_rank(a, "a")
    check_rank(b, "b")
    block_d = check_tile(block_d, "block_d")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a.shape[1]={a.shape[1]} must equal b.shape[0]={b.shape[0]}.")
    if (a.shape[0], b.shape[1]) != (m, n):
        raise ValueError(f"a @ b has shape {(a.shape[0], b.shape[1])} but like.shape is {(m, n)}.")
    dtype = result_dtype("sddmm", a.dtype, b.dtype)
    dd = int(a.shape[1])
    if maxb == 0 or nbr == 0 or dd == 0:
        return like.replace(data=jnp.zeros(like.data.shape, dtype))
    td, dp = tile_and_padded(dd, block_d)
    nd = dp // td
    ap = pad_to(a.astype(dtype), (mp, dp))
    bp = pad_to(b.astype(dtype), (dp, np_))

    def _d_eff(i, s, d, cnt):
        # Padded slots keep the last reduction tile of the previous (kept) slot: no DMA.
        return jnp.where(s < cnt[i], d, nd - 1)

    def a_map(i, s, d, idx, cnt):
        del idx
        return i, _d_eff(i, s, d, cnt)

    def b_map(i, s, d, idx, cnt):
        return _d_eff(i, s, d, cnt), idx[i * maxb + s]

    def o_map(i, s, d, idx, cnt):
        del d, idx, cnt
        return i, s, 0, 0

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(nbr, maxb, nd),
        in_specs=[pl.BlockSpec((bm, td), a_map), pl.BlockSpec((td, bn), b_map)],
        out_specs=pl.BlockSpec((None, None, bm, bn), o_map),
        scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
    )
    data = pl.pallas_call(
        functools.partial(_sddmm_kernel, nd=nd),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((nbr, maxb, bm, bn), dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary", "arbitrary")
        ),
        interpret=interpret,
        name="sparsejax_sddmm",
    )(*flat_index(like), ap, bp)
    return like.replace(data=data)

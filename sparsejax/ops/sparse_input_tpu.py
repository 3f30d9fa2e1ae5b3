"""Pallas TPU kernel (Mosaic) for `sparsejax.ops.sparse_input_matmul`.

``y = x @ W`` for a mostly-zero ``x [B, K]`` and a dense ``W [K, N]`` left in HBM
(``memory_space=pl.ANY``). The kept inputs are compacted outside the kernel
(`sparsejax.ops.sparse_input.compact_inputs`); their count and ascending indices are
scalar-prefetched into SMEM. Grid ``(N // tn, Kp // tk)``: for column tile ``j`` and chunk ``c``
of the kept list, the kernel starts one DMA per kept row (``W[idx[c*tk + r], j*tn:(j+1)*tn]`` into
a ``[tk, tn]`` VMEM buffer), waits for them and adds ``x_chunk [Bp, tk] @ buffer`` to a float32
accumulator; a chunk past ``nnz`` issues no DMA and no product. The batch is zero-padded to a
multiple of 8 (GEMV for batch 1 and small batches: the MXU pass costs the same up to 8 rows).

Rows are fetched one ``[1, tn]`` DMA each, so the HBM traffic is ``nnz * N`` elements (plus the
few padding rows of the last chunk); ``tn`` must divide ``N`` (a multiple of 128, or ``N``
itself) so that no weight copy is ever made. Pure, forward-only; gradients come from
`sparsejax.ops.sparse_input`. On CPU pass ``interpret=True``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float

from sparsejax._backend import UnsupportedShapeError
from sparsejax._checks import must_be
from sparsejax._pallas import check_rank, check_tile, pad_to, result_dtype
from sparsejax.ops.sparse_input import compact_inputs

__all__ = ["MAX_BATCH", "sparse_input_matmul"]

MAX_BATCH = 256
"""Largest batch the kernel takes (``auto`` falls back to ``xla`` above it)."""


def _kernel(nnz_ref, idx_ref, x_ref, w_hbm, o_ref, buf, sem, acc_ref, *, tk, tn):
    j, c = pl.program_id(0), pl.program_id(1)

    @pl.when(c == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(c * tk < nnz_ref[0])
    def _accumulate():
        def copy(r):
            src = w_hbm.at[pl.ds(idx_ref[c * tk + r], 1), pl.ds(j * tn, tn)]
            return pltpu.make_async_copy(src, buf.at[pl.ds(r, 1)], sem.at[0])

        def start(r, carry):
            copy(r).start()
            return carry

        def wait(r, carry):
            copy(r).wait()
            return carry

        lax.fori_loop(0, tk, start, 0)
        lax.fori_loop(0, tk, wait, 0)
        w_rows = buf[...].astype(x_ref.dtype)
        acc_ref[...] += jnp.dot(x_ref[...], w_rows, preferred_element_type=jnp.float32)

    @pl.when(c == pl.num_programs(1) - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _column_tile(n: int, block_n: int) -> int:
    if n <= block_n:
        return n
    tn = block_n - block_n % 128
    while tn >= 128 and n % tn:
        tn -= 128
    if tn < 128:
        raise UnsupportedShapeError(must_be("w.shape[1]", f"<= block_n={block_n} or divisible "
                                            "by a multiple of 128 <= block_n", n))
    return tn


def sparse_input_matmul(
    x: Float[Array, "B K"],
    w: Float[Array, "K N"],
    *,
    block_k: int = 128,
    block_n: int = 512,
    interpret: Any = False,
) -> Float[Array, "B N"]:
    """``x @ w`` reading only the rows of ``w`` whose input is nonzero (Pallas TPU).

    Args:
        x: ``[B, K]`` with ``B <= MAX_BATCH``.
        w: ``[K, N]``; stays in HBM, only kept rows are copied.
        block_k: kept rows per grid step ``tk`` (a multiple of 128 on TPU).
        block_n: largest column tile; the tile is ``N`` itself when ``N <= block_n``, else the
            largest multiple of 128 ``<= block_n`` dividing ``N``.
        interpret: ``False`` on TPU; ``True`` (or ``pltpu.InterpretParams()``) on CPU.

    Returns:
        ``[B, N]`` in ``result_type(x, w)`` (float32 accumulation).

    Raises:
        TypeError: a dtype other than float32/bfloat16/float16 (`UnsupportedDtypeError`).
        ValueError: mismatched shapes; ``B > MAX_BATCH`` or an ``N`` no tile divides
            (`UnsupportedShapeError`).
    """
    check_rank(x, "x")
    check_rank(w, "w")
    tk = check_tile(block_k, "block_k")
    block_n = check_tile(block_n, "block_n")
    b, k = (int(d) for d in x.shape)
    n = int(w.shape[1])
    if int(w.shape[0]) != k:
        raise ValueError(must_be("w", f"an array [K, N] with K = x.shape[1] = {k}",
                                 f"shape {tuple(w.shape)}", raw=True))
    if b > MAX_BATCH:
        raise UnsupportedShapeError(must_be("x.shape[0]", f"at most {MAX_BATCH}", b))
    dtype = result_dtype("sparse_input_matmul", x.dtype, w.dtype)
    if b == 0 or k == 0 or n == 0:
        return jnp.zeros((b, n), dtype)
    tn = _column_tile(n, block_n)
    nnz, idx, xg = compact_inputs(x.astype(dtype), tk)
    kp = idx.shape[0]
    bp = -(-b // 8) * 8
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(n // tn, kp // tk),
        in_specs=[
            pl.BlockSpec((bp, tk), lambda j, c, cnt, idx: (0, c)),
            pl.BlockSpec(memory_space=pl.ANY),
        ],
        out_specs=pl.BlockSpec((bp, tn), lambda j, c, cnt, idx: (0, j)),
        scratch_shapes=[
            pltpu.VMEM((tk, tn), w.dtype),
            pltpu.SemaphoreType.DMA((1,)),
            pltpu.VMEM((bp, tn), jnp.float32),
        ],
    )
    out = pl.pallas_call(
        functools.partial(_kernel, tk=tk, tn=tn),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((bp, n), dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="sparsejax_sparse_input_matmul_tpu",
    )(nnz.reshape(1), idx, pad_to(xg, (bp, kp)), w)
    return out[:b]

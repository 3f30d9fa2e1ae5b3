"""Pallas GPU kernels (Triton lowering) for the CSR products (`sparsejax.formats.CSR`).

- `csr_matmul(a, x)`: row-split SpMM. Grid ``(M, N_pad // tn)``: program ``(i, j)`` computes
  output row ``order[i]`` on column tile ``j``, looping over that row's stored entries
  (``indptr[r]:indptr[r + 1]``), each a scalar value times one ``[1, tn]`` row of ``x``,
  accumulated in float32 registers. ``order`` lists the rows longest first (Sputnik's *row
  swizzle*, Gale et al. 2020): programs launched together have similar trip counts, so the long
  rows start first and the short ones fill the tail instead of one long row finishing last. The
  output is written in swizzled order (a static block index, no scalar prefetch on Triton) and
  un-permuted by one gather.
- `csr_sddmm(a, b, like)`: grid ``(M,)``: program ``r`` loops over row ``r``'s stored entries and
  computes each as the dot product of row ``r`` of ``a`` and column ``indices[k]`` of ``b`` (in
  ``td``-wide chunks), writing slot ``k``.

Both take float32/bfloat16/float16 (accumulation in float32; other dtypes raise
`sparsejax._backend.UnsupportedDtypeError`, which ``backend="auto"`` answers with ``xla``). They
are forward-only and jit-compatible; gradients come from `sparsejax.ops.csr`. Checked without a
GPU in interpret mode and by lowering to Triton (``lower(lowering_platforms=("cuda",))``), like
`sparsejax.ops.pallas_gpu`; not yet timed on a GPU.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float

from sparsejax._pallas import check_rank, check_tile, pad_to, pow2_tile, result_dtype

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from sparsejax.formats import CSR

__all__ = ["csr_matmul", "csr_sddmm", "row_swizzle"]


def _compiler_params(num_warps: int, num_stages: int) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def row_swizzle(indptr: Array) -> Array:
    """``int32 [M]``: the rows ordered by stored entries, longest first (ties by row index)."""
    return jnp.argsort(-jnp.diff(indptr), stable=True).astype(jnp.int32)


def _spmm_kernel(ptr_ref, idx_ref, val_ref, order_ref, x_ref, o_ref, *, tn):
    row = order_ref[pl.program_id(0)]

    def body(k, acc):
        col = idx_ref[k]
        v = val_ref[k].astype(jnp.float32)
        return acc + v * x_ref[pl.ds(col, 1), :].astype(jnp.float32)

    acc = lax.fori_loop(ptr_ref[row], ptr_ref[row + 1], body, jnp.zeros((1, tn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def csr_matmul(
    a: CSR,
    x: Float[Array, "K N"],
    *,
    block_n: int = 64,
    num_warps: int = 2,
    num_stages: int = 1,
    interpret: Any = False,
) -> Float[Array, "M N"]:
    """CSR ``a [M, K]`` times dense ``x [K, N]`` with a row-split Pallas Triton kernel.

    Args:
      a: the CSR left operand.
      x: dense ``[K, N]``.
      block_n: column tile ``tn`` (power of two >= 16; shrunk to cover a small ``N``).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      Dense ``[M, N]`` in the common dtype of ``a.data`` and ``x`` (f32 accumulation).

    Raises:
      UnsupportedDtypeError: a dtype other than float32/bfloat16/float16.
      ValueError: shapes that do not chain, a bad ``block_n``.
    """
    check_rank(x, "x")
    m, k = a.shape
    if x.shape[0] != k:
        raise ValueError(f"`x` must have shape [K, N] with K = a.shape[1] = {k}; got {x.shape}.")
    block_n = check_tile(block_n, "block_n")
    dtype = result_dtype("csr_matmul", a.data.dtype, x.dtype)
    n = int(x.shape[1])
    tn, np_ = pow2_tile(n, block_n, "block_n")
    if m == 0 or n == 0 or k == 0:
        return jnp.zeros((m, n), dtype)
    order = row_swizzle(a.indptr)
    nse = a.data.shape[0]
    out = pl.pallas_call(
        functools.partial(_spmm_kernel, tn=tn),
        grid=(m, np_ // tn),
        in_specs=[
            pl.BlockSpec((m + 1,), lambda i, j: (0,)),
            pl.BlockSpec((nse,), lambda i, j: (0,)),
            pl.BlockSpec((nse,), lambda i, j: (0,)),
            pl.BlockSpec((m,), lambda i, j: (0,)),
            pl.BlockSpec((k, tn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((1, tn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, np_), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_csr_matmul_gpu",
    )(a.indptr.astype(jnp.int32), a.indices.astype(jnp.int32), a.data.astype(dtype), order,
      pad_to(x.astype(dtype), (k, np_)))
    inverse = jnp.zeros((m,), jnp.int32).at[order].set(jnp.arange(m, dtype=jnp.int32))
    return out[inverse, :n]


def _sddmm_kernel(ptr_ref, idx_ref, a_ref, bt_ref, o_ref, *, td, nd):
    row = pl.program_id(0)
    a_row = [a_ref[pl.ds(row, 1), pl.ds(d * td, td)].astype(jnp.float32) for d in range(nd)]

    def body(k, carry):
        col = idx_ref[k]
        acc = jnp.zeros((1, td), jnp.float32)
        for d in range(nd):
            acc += a_row[d] * bt_ref[pl.ds(col, 1), pl.ds(d * td, td)].astype(jnp.float32)
        o_ref[pl.ds(k, 1)] = jnp.sum(acc, axis=1).astype(o_ref.dtype)
        return carry

    lax.fori_loop(ptr_ref[row], ptr_ref[row + 1], body, 0)


def csr_sddmm(
    a: Float[Array, "M Kd"],
    b: Float[Array, "Kd N"],
    like: CSR,
    *,
    block_d: int = 64,
    num_warps: int = 2,
    num_stages: int = 1,
    interpret: Any = False,
) -> Float[Array, " nse"]:
    """``(a @ b)`` at ``like``'s stored slots (zero in padded slots), one program per row.

    Args:
      a: dense ``[M, Kd]``.
      b: dense ``[Kd, N]``.
      like: the CSR pattern ``[M, N]``.
      block_d: reduction chunk ``td`` (power of two >= 16).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
      interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
      ``[nse]`` values in the common dtype of ``a`` and ``b``.

    Raises:
      UnsupportedDtypeError: a dtype other than float32/bfloat16/float16.
      ValueError: shapes that do not chain to ``like.shape``.
    """
    check_rank(a, "a")
    check_rank(b, "b")
    m, n = like.shape
    if a.shape[0] != m or b.shape[1] != n or a.shape[1] != b.shape[0]:
        raise ValueError(f"`a` [M, Kd] and `b` [Kd, N] must chain to like.shape {like.shape}; "
                         f"got a {a.shape} and b {b.shape}.")
    block_d = check_tile(block_d, "block_d")
    dtype = result_dtype("csr_sddmm", a.dtype, b.dtype)
    nse = like.data.shape[0]
    kd = int(a.shape[1])
    if m == 0 or n == 0 or kd == 0:
        return jnp.zeros((nse,), dtype)
    td, kdp = pow2_tile(kd, block_d, "block_d")
    out = pl.pallas_call(
        functools.partial(_sddmm_kernel, td=td, nd=kdp // td),
        grid=(m,),
        in_specs=[
            pl.BlockSpec((m + 1,), lambda r: (0,)),
            pl.BlockSpec((nse,), lambda r: (0,)),
            pl.BlockSpec((m, kdp), lambda r: (0, 0)),
            pl.BlockSpec((n, kdp), lambda r: (0, 0)),
        ],
        out_specs=pl.BlockSpec((nse,), lambda r: (0,)),
        out_shape=jax.ShapeDtypeStruct((nse,), dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sparsejax_csr_sddmm_gpu",
    )(like.indptr.astype(jnp.int32), like.indices.astype(jnp.int32),
      pad_to(a.astype(dtype), (m, kdp)), pad_to(b.T.astype(dtype), (n, kdp)))
    return jnp.where(jnp.arange(nse) < like.indptr[-1], out, jnp.zeros((), dtype))

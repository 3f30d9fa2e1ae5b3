"""Pallas TPU kernel (Mosaic lowering) for the CSR SpMM (`sparsejax.formats.CSR`).

`csr_matmul(a, x)`: grid ``(M_pad // 8, N_pad // tn)``; program ``(i, j)`` computes the 8
output rows ``8i .. 8i + 7`` (one sublane tile) on column tile ``j``. The row pointers, column
indices and values are scalar-prefetched into SMEM (values as float32, SMEM's word); the
``[K_pad, tn]`` panel of ``x`` sits in VMEM and each stored entry adds its value times one
dynamically indexed row of the panel to its row's float32 accumulator. Rows are split evenly
(8 per program); there is no row swizzle on TPU, whose grid runs sequentially per core.

The SDDMM has no TPU kernel: ``csr_sddmm(backend="pallas_tpu")`` runs the XLA gather path.
Inputs may be float32, bfloat16 or float16 (f32 accumulation). The whole ``nse`` must fit in SMEM
(a few hundred thousand stored entries); checked by lowering for TPU in the tests, not timed on a
TPU.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float

from sparsejax._pallas import check_spmm, pad_to, tile_and_padded
from sparsejax.ops import csr_xla

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from sparsejax.formats import CSR

__all__ = ["csr_matmul", "csr_sddmm"]

_ROWS = 8  # rows per program: one sublane tile


def _spmm_kernel(ptr_ref, idx_ref, val_ref, x_ref, o_ref, *, tn):
    base = pl.program_id(0) * _ROWS
    for r in range(_ROWS):
        row = base + r

        def body(k, acc):
            return acc + val_ref[k] * x_ref[pl.ds(idx_ref[k], 1), :].astype(jnp.float32)

        acc = lax.fori_loop(ptr_ref[row], ptr_ref[row + 1], body,
                            jnp.zeros((1, tn), jnp.float32))
        o_ref[pl.ds(r, 1), :] = acc.astype(o_ref.dtype)


def csr_matmul(
    a: CSR,
    x: Float[Array, "K N"],
    *,
    block_n: int = 512,
    interpret: Any = False,
) -> Float[Array, "M N"]:
    """CSR ``a [M, K]`` times dense ``x [K, N]`` with a Pallas TPU kernel (8 rows per program).

    Args:
      a: the CSR left operand.
      x: dense ``[K, N]``.
      block_n: column tile ``tn`` (the full ``N`` when it fits, else a multiple of 128).
      interpret: ``False`` on TPU; ``True`` / ``pltpu.InterpretParams()`` to run on CPU.

    Returns:
      Dense ``[M, N]`` in the common dtype of ``a.data`` and ``x`` (f32 accumulation).

    Raises:
      UnsupportedDtypeError: a dtype other than float32/bfloat16/float16.
      ValueError: shapes that do not chain, a bad ``block_n``.
    """
    m, k, n, dtype, block_n = check_spmm(a, x, block_n)
    if m == 0 or n == 0 or k == 0:
        return jnp.zeros((m, n), dtype)
    tn, np_ = tile_and_padded(n, max(128, block_n // 128 * 128))
    mp = -(-m // _ROWS) * _ROWS
    kp = -(-k // _ROWS) * _ROWS
    ptr = a.indptr.astype(jnp.int32)
    ptr = jnp.concatenate([ptr, jnp.broadcast_to(ptr[-1:], (mp - m,))])  # empty padded rows
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(mp // _ROWS, np_ // tn),
        in_specs=[pl.BlockSpec((kp, tn), lambda i, j, *_: (0, j))],
        out_specs=pl.BlockSpec((_ROWS, tn), lambda i, j, *_: (i, j)),
    )
    out = pl.pallas_call(
        functools.partial(_spmm_kernel, tn=tn),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((mp, np_), dtype),
        interpret=interpret,
        name="sparsejax_csr_matmul_tpu",
    )(ptr, a.indices.astype(jnp.int32), a.data.astype(jnp.float32),
      pad_to(x.astype(dtype), (kp, np_)))
    return out[:m, :n]


def csr_sddmm(a: Float[Array, "M Kd"], b: Float[Array, "Kd N"], like: CSR, *,
              interpret: Any = False) -> Float[Array, " nse"]:
    """No TPU SDDMM kernel: the XLA gather path (`sparsejax.ops.csr_xla.xla_csr_sddmm`)."""
    del interpret
    return csr_xla.xla_csr_sddmm(a, b, like)

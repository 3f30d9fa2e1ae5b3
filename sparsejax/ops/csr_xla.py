"""Reference and XLA implementations of the CSR products (`sparsejax.formats.CSR`).

``reference_*``: densify the CSR operand and call ``jnp`` (the test oracle).

``xla_*`` (cost scales with ``nse``, never with ``M * K``):

* ``A @ X``: every stored slot gathers its row of ``X`` (``X[indices]``, ``[nse, N]``), scales
  it by its value and a sorted segment sum over the slots' row ids (from the row pointers)
  forms each output row; padded slots carry row id ``M`` and are dropped. On the **CPU**
  platform a float32/float64 product instead runs JAX's native CSR SpMM kernel (the FFI call
  ``cpu_csr_sparse_dense_ffi`` behind ``jax.experimental.sparse.BCSR``; bfloat16/float16 are
  widened to float32 for it), because XLA:CPU's scatter makes the segment sum about 10x slower
  than that loop. The choice is made at lowering time (`jax.lax.platform_dependent`).
* ``X @ A`` is ``(A.T @ X.T).T`` (one sort of the slots for ``A.T``, then the row-parallel
  product).
* SDDMM: each stored slot is the dot product of one gathered row of ``a`` and one gathered
  column of ``b`` (``O(nse * Kd)``).

All accumulate in float32 and return ``jnp.result_type`` of the operands. The functions take
validated 2-D operands; `sparsejax.ops.csr` does the checks, dispatch and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse
from jaxtyping import Array, Float

from sparsejax.formats import CSR

__all__ = [
    "reference_csr_matmul",
    "reference_csr_sddmm",
    "reference_dense_csr_matmul",
    "xla_csr_matmul",
    "xla_csr_sddmm",
    "xla_dense_csr_matmul",
]

_HI = jax.lax.Precision.HIGHEST


def _acc_dtype(*dtypes) -> jnp.dtype:
    """float64 when an operand is float64 (x64 mode), float32 otherwise."""
    return jnp.dtype(jnp.float64) if jnp.dtype(jnp.float64) in map(jnp.dtype, dtypes) else (
        jnp.dtype(jnp.float32))


def _dot(x: Array, y: Array) -> Array:
    return jnp.matmul(x, y, preferred_element_type=_acc_dtype(x.dtype, y.dtype),
                      precision=_HI).astype(jnp.result_type(x, y))


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------


def reference_csr_matmul(a: CSR, x: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``a.to_dense() @ x``."""
    return _dot(a.to_dense(), x)


def reference_dense_csr_matmul(x: Float[Array, "P M"], a: CSR) -> Float[Array, "P N"]:
    """``x @ a.to_dense()``."""
    return _dot(x, a.to_dense())


def reference_csr_sddmm(a: Float[Array, "M Kd"], b: Float[Array, "Kd N"], like: CSR
                        ) -> Float[Array, " nse"]:
    """``(a @ b)`` formed densely, read at ``like``'s stored slots (zero in padded slots)."""
    full = _dot(a, b)
    rows = jnp.minimum(like.row_ids(), like.shape[0] - 1)
    return jnp.where(like.valid(), full[rows, like.indices], jnp.zeros((), full.dtype))


# --------------------------------------------------------------------------------------------
# XLA
# --------------------------------------------------------------------------------------------


def _segment_matmul(a: CSR, x: Array, acc: jnp.dtype) -> Array:
    """``A @ x`` by gather + sorted segment sum over the slots' row ids."""
    prod = a.data.astype(acc)[:, None] * jnp.take(x, a.indices, axis=0).astype(acc)
    return jax.ops.segment_sum(prod, a.row_ids(), num_segments=a.shape[0],
                               indices_are_sorted=True)


def _native_cpu_matmul(a: CSR, x: Array, acc: jnp.dtype) -> Array:
    """``A @ x`` with JAX's CPU CSR SpMM kernel (the lowering of ``BCSR @ dense`` on CPU)."""
    bcsr = jsparse.BCSR((a.data.astype(acc), a.indices, a.indptr), shape=a.shape)
    return jsparse.bcsr_dot_general(bcsr, x.astype(acc), dimension_numbers=(([1], [0]), ([], [])))


def xla_csr_matmul(a: CSR, x: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``A @ x``: native CSR kernel on CPU, gather + segment sum elsewhere."""
    out_dtype = jnp.result_type(a.data, x)
    acc = _acc_dtype(a.dtype, x.dtype)
    if a.nse == 0 or x.shape[1] == 0 or a.shape[0] == 0 or a.shape[1] == 0:
        return jnp.zeros((a.shape[0], x.shape[1]), out_dtype)
    out = jax.lax.platform_dependent(
        a, x, cpu=lambda a, x: _native_cpu_matmul(a, x, acc),
        default=lambda a, x: _segment_matmul(a, x, acc))
    return out.astype(out_dtype)


def xla_dense_csr_matmul(x: Float[Array, "P M"], a: CSR) -> Float[Array, "P N"]:
    """``x @ A`` as ``(A.T @ x.T).T``."""
    return xla_csr_matmul(a.transpose(), x.T).T


def xla_csr_sddmm(a: Float[Array, "M Kd"], b: Float[Array, "Kd N"], like: CSR
                  ) -> Float[Array, " nse"]:
    """``(a @ b)`` at ``like``'s stored slots: one gathered row times one gathered column each."""
    out_dtype = jnp.result_type(a, b)
    acc = _acc_dtype(a.dtype, b.dtype)
    if like.shape[0] == 0 or like.shape[1] == 0:
        return jnp.zeros((like.nse,), out_dtype)
    rows = jnp.minimum(like.row_ids(), like.shape[0] - 1)
    lhs = jnp.take(a, rows, axis=0).astype(acc)  # [nse, Kd]
    rhs = jnp.take(b, like.indices, axis=1).astype(acc)  # [Kd, nse]
    vals = jnp.einsum("sk,ks->s", lhs, rhs, precision=_HI)
    return jnp.where(like.valid(), vals, jnp.zeros((), acc)).astype(out_dtype)

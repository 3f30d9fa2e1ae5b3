"""Sparse products over `sparsejax.formats`: block-sparse matmul, SDDMM, N:M matmul.

One public API (`sparsejax.ops.api`) dispatching to backends: ``reference`` (densify +
``jnp``), ``xla`` (cost scales with kept blocks; the CPU default), ``pallas_tpu`` and
``pallas_gpu`` (Pallas kernels, imported lazily).
"""

from sparsejax.ops.api import (
    BACKENDS,
    bsr_matmul,
    dense_bsr_matmul,
    dense_nm_matmul,
    nm_matmul,
    resolve_backend,
    sddmm,
)

__all__ = [
    "BACKENDS",
    "bsr_matmul",
    "dense_bsr_matmul",
    "dense_nm_matmul",
    "nm_matmul",
    "resolve_backend",
    "sddmm",
]

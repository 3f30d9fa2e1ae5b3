"""Sparse products over `sparsejax.formats`: block-sparse matmul, SDDMM, N:M matmul.

One public API (`sparsejax.ops.api`) dispatching to backends: ``reference`` (densify +
``jnp``), ``xla`` (cost scales with kept blocks; the CPU default), ``pallas_tpu`` and
``pallas_gpu`` (Pallas kernels, imported lazily), chosen by the dispatcher shared with
`sparsejax.attention` (keyword-only ``backend=``, ``interpret=None``). `block_sparse_from_mask`
and `block_mask_from_sparse` convert between an attention `BlockMask` and a `BlockSparse`.
`sparse_input_matmul` is ``x @ W`` reading only the rows of a dense ``W`` whose input is nonzero
(activation sparsity, `sparsejax.activation`).
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
from sparsejax.ops.csr import (
    CSR_BACKENDS,
    csr_matmul,
    csr_sddmm,
    dense_csr_matmul,
    sparse_conv1x1,
)
from sparsejax.ops.layout import block_mask_from_sparse, block_sparse_from_mask
from sparsejax.ops.nm_transposable import dense_transposable_nm_matmul, transposable_nm_matmul
from sparsejax.ops.sparse_input import sparse_input_matmul

__all__ = [
    "BACKENDS",
    "CSR_BACKENDS",
    "block_mask_from_sparse",
    "block_sparse_from_mask",
    "bsr_matmul",
    "csr_matmul",
    "csr_sddmm",
    "dense_csr_matmul",
    "dense_bsr_matmul",
    "dense_nm_matmul",
    "dense_transposable_nm_matmul",
    "nm_matmul",
    "resolve_backend",
    "sddmm",
    "sparse_input_matmul",
    "sparse_conv1x1",
    "transposable_nm_matmul",
]

"""Flax NNX linear layers that store a compressed kernel and train through `sparsejax.ops`.

Both compute ``y = x @ W + b`` with ``W [in, out]`` (the Flax ``Dense`` layout):

* `BlockSparseLinear`: ``W`` in BSR (`sparsejax.formats.BlockSparse`); the forward is
  `sparsejax.ops.dense_bsr_matmul` and the weight gradient covers the kept blocks only
  (via SDDMM), so a training step never forms a dense ``[in, out]`` gradient.
* `NMLinear`: ``W`` N:M-compressed along its reduction axis (axis 0 of ``[in, out]``, the
  hardware 2:4 axis); the forward is `sparsejax.ops.dense_nm_matmul`, a gather of the kept inputs.

The Equinox layers of the same names are in `sparsejax.nn.eqx`.

The sparsity *structure* (block indices and counts, N:M positions) is fixed at construction and
stored in non-trainable `SparseStructure` variables (not ``nnx.Param``, so
``nnx.grad``/``nnx.Optimizer(wrt=nnx.Param)`` skip it). Only the kept values and the bias train, so
the structure is preserved exactly by any optimizer step.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.nn._weights import build_bsr, build_nm
from sparsejax.ops import dense_bsr_matmul, dense_nm_matmul

__all__ = ["BlockSparseLinear", "NMLinear", "SparseStructure"]


# --------------------------------------------------------------------------------------------
# Flax NNX
# --------------------------------------------------------------------------------------------


class SparseStructure(nnx.Variable):
    """A non-trainable variable holding sparsity structure (block indices/counts, N:M
    positions)."""


class BlockSparseLinear(nnx.Module):
    """Flax NNX linear layer with a block-sparse (BSR) kernel ``[in, out]``.

    Args:
        in_features: input size (a multiple of ``block_shape[0]``).
        out_features: output size (a multiple of ``block_shape[1]``).
        block_shape: ``(bm, bn)`` blocks of the kernel.
        density: fraction of blocks kept, chosen at random (ignored if ``block_mask`` is given).
        block_mask: bool ``[in/bm, out/bn]`` (or element-level ``[in, out]``) kept blocks.
        kernel: an initial dense kernel ``[in, out]`` (e.g. a trained ``Dense`` layer's);
            entries outside kept blocks are dropped. Default: LeCun-normal scaled to the kept
            fan-in.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.dense_bsr_matmul`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random mask or kernel.

    Attributes:
        data: ``nnx.Param [R, S, bm, bn]`` kept blocks (the trainable values).
        indices, counts: `SparseStructure` BSR metadata.
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *,
                 block_shape: tuple[int, int] = (32, 32), density: float | None = 0.5,
                 block_mask: Bool[Array, "R C"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        key = rngs.params() if rngs is not None else None
        w = build_bsr(in_features, out_features, tuple(block_shape), density, block_mask,
                       kernel, key, param_dtype)
        self.data = nnx.Param(w.data)
        self.indices = SparseStructure(w.indices)
        self.counts = SparseStructure(w.counts)
        self.shape = w.shape
        self.block_shape = w.block_shape
        self.backend = backend
        if use_bias:
            b = jnp.zeros((out_features,), w.dtype) if bias is None else jnp.asarray(bias)
            self.bias = nnx.Param(b)
        else:
            self.bias = None

    @property
    def weight(self) -> BlockSparse:
        """The kernel as a `sparsejax.formats.BlockSparse` ``[in, out]``."""
        return BlockSparse(self.data[...], self.indices[...], self.counts[...], self.shape,
                           self.block_shape)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = dense_bsr_matmul(x, self.weight, self.backend)
        return y if self.bias is None else y + self.bias[...]


class NMLinear(nnx.Module):
    """Flax NNX linear layer with an N:M kernel ``[in, out]`` grouped along ``in`` (axis 0).

    Args:
        in_features: input size (a multiple of ``m``).
        out_features: output size.
        n: kept entries per group of ``m`` (jaxpruner / SR-STE convention).
        m: group size.
        kernel: an initial dense kernel ``[in, out]``; the ``n`` largest ``|w|`` of each group
            are kept. Default: LeCun-normal scaled to the kept fan-in.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.dense_nm_matmul`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random kernel.

    Attributes:
        values: ``nnx.Param [in*n/m, out]`` kept values.
        indices: `SparseStructure` ``uint8`` positions.
    """

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        key = rngs.params() if rngs is not None else None
        w = build_nm(in_features, out_features, n, m, kernel, key, param_dtype)
        self.values = nnx.Param(w.values)
        self.indices = SparseStructure(w.indices)
        self.n, self.m, self.length = w.n, w.m, w.length
        self.backend = backend
        if use_bias:
            b = jnp.zeros((out_features,), w.dtype) if bias is None else jnp.asarray(bias)
            self.bias = nnx.Param(b)
        else:
            self.bias = None

    @property
    def weight(self) -> NMSparse:
        """The kernel as an `sparsejax.formats.NMSparse` ``[in, out]``."""
        return NMSparse(self.values[...], self.indices[...], self.n, self.m, -2, self.length)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = dense_nm_matmul(x, self.weight, self.backend)
        return y if self.bias is None else y + self.bias[...]

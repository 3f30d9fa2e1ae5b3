"""Equinox linear layers that store a compressed kernel and train through `sparsejax.ops`.

The Equinox counterparts of `sparsejax.nn.BlockSparseLinear` and `sparsejax.nn.NMLinear` (same
names, same arguments with ``key`` instead of ``rngs``), computing ``y = x @ W + b`` with
``W [in, out]``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.nn._weights import build_bsr, build_nm
from sparsejax.ops import dense_bsr_matmul, dense_nm_matmul

__all__ = ["BlockSparseLinear", "NMLinear"]


class BlockSparseLinear(eqx.Module):
    """Equinox linear layer with a block-sparse (BSR) kernel ``[in, out]``.

    Same arguments as `sparsejax.nn.BlockSparseLinear`, with ``key`` instead of ``rngs``. The integer
    BSR metadata are ordinary array fields that ``eqx.filter_grad`` / ``eqx.is_inexact_array``
    leave out, so only ``data`` and ``bias`` train.
    """

    data: Array
    indices: Array
    counts: Array
    bias: Array | None
    shape: tuple[int, int] = eqx.field(static=True)
    block_shape: tuple[int, int] = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *,
                 block_shape: tuple[int, int] = (32, 32), density: float | None = 0.5,
                 block_mask: Bool[Array, "R C"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32, key: jax.Array | None = None):
        w = build_bsr(in_features, out_features, tuple(block_shape), density, block_mask,
                       kernel, key, param_dtype)
        self.data, self.indices, self.counts = w.data, w.indices, w.counts
        self.shape, self.block_shape, self.backend = w.shape, w.block_shape, backend
        if use_bias:
            self.bias = jnp.zeros((out_features,), w.dtype) if bias is None else jnp.asarray(bias)
        else:
            self.bias = None

    @property
    def weight(self) -> BlockSparse:
        """The kernel as a `sparsejax.formats.BlockSparse` ``[in, out]``."""
        return BlockSparse(self.data, self.indices, self.counts, self.shape, self.block_shape)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = dense_bsr_matmul(x, self.weight, self.backend)
        return y if self.bias is None else y + self.bias


class NMLinear(eqx.Module):
    """Equinox linear layer with an N:M kernel ``[in, out]`` grouped along ``in`` (axis 0).

    Same arguments as `sparsejax.nn.NMLinear`, with ``key`` instead of ``rngs``.
    """

    values: Array
    indices: Array
    bias: Array | None
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    length: int = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32, key: jax.Array | None = None):
        w = build_nm(in_features, out_features, n, m, kernel, key, param_dtype)
        self.values, self.indices = w.values, w.indices
        self.n, self.m, self.length, self.backend = w.n, w.m, w.length, backend
        if use_bias:
            self.bias = jnp.zeros((out_features,), w.dtype) if bias is None else jnp.asarray(bias)
        else:
            self.bias = None

    @property
    def weight(self) -> NMSparse:
        """The kernel as an `sparsejax.formats.NMSparse` ``[in, out]``."""
        return NMSparse(self.values, self.indices, self.n, self.m, -2, self.length)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = dense_nm_matmul(x, self.weight, self.backend)
        return y if self.bias is None else y + self.bias

"""Linear layers that store a compressed weight and train through `sparsejax.ops`.

Four layers, all computing ``y = x @ W + b`` with ``W [in, out]`` (the Flax ``Dense`` layout):

* `BlockSparseLinear` (Flax NNX) and `EqxBlockSparseLinear` (Equinox): ``W`` in
  BSR (`sparsejax.formats.BlockSparse`); the forward is
  `sparsejax.ops.dense_bsr_matmul` and the weight gradient covers the kept blocks only
  (via SDDMM), so a training step never forms a dense ``[in, out]`` gradient.
* `NMLinear` (Flax NNX) and `EqxNMLinear` (Equinox): ``W`` N:M-compressed along its
  reduction axis (axis 0 of ``[in, out]``, the hardware 2:4 axis); the forward is
  `sparsejax.ops.dense_nm_matmul`, a gather of the kept inputs.

The sparsity *structure* (block indices and counts, N:M positions) is fixed at construction and
stored in non-trainable variables (NNX: `SparseStructure`, not an ``nnx.Param``, so
``nnx.grad``/``nnx.Optimizer(wrt=nnx.Param)`` skip it; Equinox: integer arrays, which
``eqx.filter_grad`` skips). Only the kept values and the bias train, so the structure is
preserved exactly by any optimizer step.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.ops import dense_bsr_matmul, dense_nm_matmul

__all__ = [
    "BlockSparseLinear",
    "EqxBlockSparseLinear",
    "EqxNMLinear",
    "NMLinear",
    "SparseStructure",
    "random_block_mask",
]


def random_block_mask(key: jax.Array, n_block_rows: int, n_block_cols: int,
                      density: float) -> Bool[Array, "R C"]:
    """A block mask with exactly ``max(1, round(density * R * C))`` kept blocks, at random.

    Raises:
        ValueError: ``density`` outside ``(0, 1]``.
    """
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"`density` must be in (0, 1]; got {density!r}.")
    total = n_block_rows * n_block_cols
    keep = max(1, int(round(float(density) * total)))
    order = jax.random.permutation(key, total)
    return (jnp.zeros(total, bool).at[order[:keep]].set(True)).reshape(n_block_rows,
                                                                      n_block_cols)


def _init_kernel(key: jax.Array, in_features: int, out_features: int, density: float,
                 dtype) -> Array:
    """LeCun-normal init scaled to the kept fan-in (``density * in_features``)."""
    std = 1.0 / math.sqrt(max(1.0, density * in_features))
    return jax.random.normal(key, (in_features, out_features), dtype) * std


def _check_features(in_features: int, out_features: int) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"`{name}` must be a positive int; got {v!r}.")


def _check_kernel(kernel: Array, in_features: int, out_features: int) -> Array:
    kernel = jnp.asarray(kernel)
    if kernel.shape != (in_features, out_features):
        raise ValueError(f"`kernel` must have shape [in, out] = {(in_features, out_features)}; "
                         f"got {kernel.shape}.")
    return kernel


def _build_bsr(in_features, out_features, block_shape, density, block_mask, kernel, key,
               dtype) -> BlockSparse:
    _check_features(in_features, out_features)
    bm, bn = block_shape
    if in_features % bm or out_features % bn:
        raise ValueError(f"[in, out] = {(in_features, out_features)} must be divisible by "
                         f"`block_shape` {tuple(block_shape)}.")
    k_mask, k_init = jax.random.split(key) if key is not None else (None, None)
    if block_mask is None:
        if density is None:
            raise ValueError("give `block_mask` or `density`.")
        if k_mask is None:
            raise ValueError("a random block mask (`density=`) needs a PRNG key / rngs.")
        block_mask = random_block_mask(k_mask, in_features // bm, out_features // bn, density)
    block_mask = jnp.asarray(block_mask)
    if kernel is None:
        if k_init is None:
            raise ValueError("initialising the kernel needs a PRNG key / rngs (or pass `kernel`).")
        d = float(jnp.mean(block_mask))
        kernel = _init_kernel(k_init, in_features, out_features, d, dtype)
    kernel = _check_kernel(kernel, in_features, out_features)
    return BlockSparse.from_dense(kernel, block_shape, block_mask)


def _build_nm(in_features, out_features, n, m, kernel, key, dtype) -> NMSparse:
    _check_features(in_features, out_features)
    if kernel is None:
        if key is None:
            raise ValueError("initialising the kernel needs a PRNG key / rngs (or pass `kernel`).")
        kernel = _init_kernel(key, in_features, out_features, n / m, dtype)
    kernel = _check_kernel(kernel, in_features, out_features)
    return NMSparse.from_dense(kernel, n, m, axis=0)


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
        indices: `SparseStructure` ``int32 [R, S]`` block columns (BSR metadata).
        counts: `SparseStructure` ``int32 [R]`` kept blocks per block row.
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *,
                 block_shape: tuple[int, int] = (32, 32), density: float | None = 0.5,
                 block_mask: Bool[Array, "R C"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        key = rngs.params() if rngs is not None else None
        w = _build_bsr(in_features, out_features, tuple(block_shape), density, block_mask,
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
        y = dense_bsr_matmul(x, self.weight, backend=self.backend)
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
        w = _build_nm(in_features, out_features, n, m, kernel, key, param_dtype)
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
        y = dense_nm_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias[...]


# --------------------------------------------------------------------------------------------
# Equinox
# --------------------------------------------------------------------------------------------


class EqxBlockSparseLinear(eqx.Module):
    """Equinox linear layer with a block-sparse (BSR) kernel ``[in, out]``.

    Same arguments as `BlockSparseLinear`, with ``key`` instead of ``rngs``. The integer
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
        w = _build_bsr(in_features, out_features, tuple(block_shape), density, block_mask,
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
        y = dense_bsr_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias


class EqxNMLinear(eqx.Module):
    """Equinox linear layer with an N:M kernel ``[in, out]`` grouped along ``in`` (axis 0).

    Same arguments as `NMLinear`, with ``key`` instead of ``rngs``.
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
        w = _build_nm(in_features, out_features, n, m, kernel, key, param_dtype)
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
        y = dense_nm_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias

"""Equinox linear layers that store a compressed kernel and train through `sparsejax.ops`.

The Equinox counterparts of `sparsejax.nn.BlockSparseLinear`, `sparsejax.nn.NMLinear` and
`sparsejax.nn.BDWPLinear` (same names, same arguments with ``key`` instead of ``rngs``),
computing ``y = x @ W + b`` with ``W [in, out]``. Unlike ``equinox.nn.Linear`` (``weight [out, in]``,
one unbatched input) the kernel is ``[in, out]`` and ``x`` may carry any leading axes
``[..., in]``.

The ``weight`` field *is* the format pytree (`sparsejax.formats.BlockSparse` /
`sparsejax.formats.NMSparse`), as ``equinox.nn.WeightNorm`` stores the layer it wraps. Its integer
leaves (block indices and counts, N:M positions) are left out by ``eqx.is_inexact_array``, so
``eqx.filter_grad`` and an optimizer over ``eqx.filter(model, eqx.is_inexact_array)`` train only
the kept values and the bias, and the sparsity structure is preserved exactly. (`BDWPLinear`
keeps a dense ``weight``: BDWP trains every weight and re-selects its masks from ``|W|``.)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_bool
from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.nn._weights import bdwp_kernel, build_bsr, build_nm, init_bias, transposable_nm
from sparsejax.ops import dense_bsr_matmul, dense_nm_matmul, dense_transposable_nm_matmul

__all__ = ["BDWPLinear", "BlockSparseLinear", "NMLinear"]


class BlockSparseLinear(eqx.Module):
    """Equinox linear layer with a block-sparse (BSR) kernel ``[in, out]``.

    Same arguments as `sparsejax.nn.BlockSparseLinear`, with ``key`` instead of ``rngs``.

    Attributes:
        weight: the `sparsejax.formats.BlockSparse` kernel ``[in, out]``.
        bias: ``[out]`` or ``None``.
        backend: passed to `sparsejax.ops.dense_bsr_matmul` (static).
    """

    weight: BlockSparse
    bias: Array | None
    backend: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *,
                 block_shape: tuple[int, int] = (32, 32), sparsity: float | None = 0.5,
                 block_mask: Bool[Array, "R C"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 key: jax.Array | None = None):
        self.weight = build_bsr(in_features, out_features, tuple(block_shape), sparsity,
                                block_mask, kernel, key, param_dtype)
        self.bias = init_bias(bias, use_bias, out_features, self.weight.dtype)
        self.backend = backend

    @property
    def in_features(self) -> int:
        """Input size."""
        return self.weight.shape[0]

    @property
    def out_features(self) -> int:
        """Output size."""
        return self.weight.shape[1]

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ W + b`` through `sparsejax.ops.dense_bsr_matmul`."""
        y = dense_bsr_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias


class NMLinear(eqx.Module):
    """Equinox linear layer with an N:M kernel ``[in, out]`` grouped along ``in`` (axis 0).

    Same arguments as `sparsejax.nn.NMLinear`, with ``key`` instead of ``rngs``
    (``transposable=True``: a transposable N:M kernel whose backward ``g @ W^T`` is N:M too).

    Attributes:
        weight: the `sparsejax.formats.NMSparse` kernel ``[in, out]``.
        bias: ``[out]`` or ``None``.
        backend: passed to `sparsejax.ops.dense_nm_matmul` (static).
        transposable: the product runs through `sparsejax.ops.dense_transposable_nm_matmul`
            (static).
    """

    weight: NMSparse
    bias: Array | None
    backend: str = eqx.field(static=True)
    transposable: bool = eqx.field(static=True, default=False)

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 mask: Bool[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 key: jax.Array | None = None, transposable: bool = False):
        check_bool(transposable, "transposable")
        if transposable:
            kernel, mask = transposable_nm(in_features, out_features, n, m, kernel, mask, key,
                                           param_dtype)
        self.weight = build_nm(in_features, out_features, n, m, kernel, mask, key, param_dtype)
        self.bias = init_bias(bias, use_bias, out_features, self.weight.dtype)
        self.backend = backend
        self.transposable = transposable

    @property
    def in_features(self) -> int:
        """Input size."""
        return self.weight.shape[0]

    @property
    def out_features(self) -> int:
        """Output size."""
        return self.weight.shape[1]

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ W + b`` through `sparsejax.ops.dense_nm_matmul` (or, with ``transposable``,
        `sparsejax.ops.dense_transposable_nm_matmul`)."""
        if self.transposable:
            y = dense_transposable_nm_matmul(x.reshape(-1, x.shape[-1]), self.weight)
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:
            y = dense_nm_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias


class BDWPLinear(eqx.Module):
    """Equinox linear layer trained with bidirectional N:M masks (BDWP), kernel ``[in, out]``.

    Same arguments and semantics as `sparsejax.nn.BDWPLinear`, with ``key`` instead of ``rngs``:
    forward ``x @ (W * M_f) + b`` (``M_f`` N:M along ``in``), input gradient through
    ``W * M_b`` (N:M along ``out``), dense weight gradient; masks from ``|W|`` at every call.

    Attributes:
        weight: the dense kernel ``[in, out]``.
        bias: ``[out]`` or ``None``.
        n: kept per group (static).
        m: group size (static).
    """

    weight: Array
    bias: Array | None
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 param_dtype: jnp.dtype = jnp.float32, key: jax.Array | None = None):
        self.weight = bdwp_kernel(in_features, out_features, n, m, kernel, key, param_dtype)
        self.bias = init_bias(bias, use_bias, out_features, self.weight.dtype)
        self.n, self.m = n, m

    @property
    def in_features(self) -> int:
        """Input size."""
        return self.weight.shape[0]

    @property
    def out_features(self) -> int:
        """Output size."""
        return self.weight.shape[1]

    def masks(self) -> tuple[Bool[Array, "in out"], Bool[Array, "in out"]]:
        """``(forward, backward)`` masks of the current kernel (`sparsejax.training.bdwp_masks`)."""
        from sparsejax.training.bdwp import bdwp_masks

        return bdwp_masks(self.weight, self.n, self.m)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ (W * M_f) + b`` with BDWP's gradients (`sparsejax.training.bdwp_matmul`)."""
        from sparsejax.training.bdwp import bdwp_matmul

        y = bdwp_matmul(x, self.weight, n=self.n, m=self.m)
        return y if self.bias is None else y + self.bias

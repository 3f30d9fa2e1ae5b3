"""Flax NNX linear layers that store a compressed kernel and train through `sparsejax.ops`.

Both compute ``y = x @ W + b`` with ``W [in, out]`` (the Flax ``nnx.Linear`` layout):

* `BlockSparseLinear`: ``W`` in BSR (`sparsejax.formats.BlockSparse`); the forward is
  `sparsejax.ops.dense_bsr_matmul` and the weight gradient covers the kept blocks only
  (via SDDMM), so a training step never forms a dense ``[in, out]`` gradient.
* `NMLinear`: ``W`` N:M-compressed along its reduction axis (axis 0 of ``[in, out]``, the
  hardware 2:4 axis) as a `sparsejax.formats.NMSparse`; the forward is
  `sparsejax.ops.dense_nm_matmul`, a gather of the kept inputs.
* `BDWPLinear`: a dense ``W`` trained with BDWP's two N:M masks
  (`sparsejax.training.bdwp_matmul`): the forward product N:M along ``in``, the input gradient's
  product N:M along ``out``, the weight gradient dense; the masks follow ``|W|`` at every call.

The Equinox layers of the same names are in `sparsejax.nn.eqx`.

The layer's ``kernel`` attribute *is* the format pytree, with NNX variables for leaves: its float
leaves (kept blocks / kept values) are ``nnx.Param`` and its integer leaves (block indices and
counts, N:M positions) are non-trainable `SparseStructure` variables, which
``nnx.grad``/``nnx.Optimizer(wrt=nnx.Param)`` skip. Only the kept values and the bias train, so any
optimizer step preserves the sparsity structure exactly. ``layer.weight`` is the same format with
plain arrays (what `sparsejax.ops` takes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_bool
from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.nn._weights import bdwp_kernel, build_bsr, build_nm, init_bias, transposable_nm
from sparsejax.ops import dense_bsr_matmul, dense_nm_matmul, dense_transposable_nm_matmul

__all__ = ["BDWPLinear", "BlockSparseLinear", "NMLinear", "SparseStructure"]


class SparseStructure(nnx.Variable):
    """A non-trainable variable holding sparsity structure (block indices/counts, N:M
    positions)."""


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _as_variables(w: Any) -> Any:
    """``w`` (a format pytree) with float leaves as ``nnx.Param``, the others `SparseStructure`."""
    return jax.tree.map(
        lambda x: nnx.Param(x) if jnp.issubdtype(x.dtype, jnp.inexact) else SparseStructure(x), w)


def _values(w: Any) -> Any:
    """The format pytree ``w`` with its variables replaced by their arrays."""
    return jax.tree.map(lambda v: v[...], w, is_leaf=_is_variable)


class _SparseLinear(nnx.Module):
    """Shared parts: the format kernel held as variables, the bias, the repr."""

    def _set(self, w: BlockSparse | NMSparse, bias: Array | None, backend: str) -> None:
        self.kernel = nnx.data(_as_variables(w))
        self.bias = None if bias is None else nnx.Param(bias)
        self.in_features, self.out_features = w.shape
        self.backend = backend

    @property
    def weight(self) -> Any:
        """The kernel as a format pytree of plain arrays (``[in, out]``)."""
        return _values(self.kernel)

    def __nnx_repr__(self):
        # the format's own repr reads leaf shapes, which NNX's repr replaces by placeholders
        from flax.nnx import reprlib

        yield reprlib.Object(type(self))
        yield reprlib.Attr("kernel", repr(self.weight))
        yield reprlib.Attr("bias", None if self.bias is None else self.bias)
        yield reprlib.Attr("backend", self.backend)


class BlockSparseLinear(_SparseLinear):
    """Flax NNX linear layer with a block-sparse (BSR) kernel ``[in, out]``.

    Args:
        in_features: input size (a multiple of ``block_shape[0]``).
        out_features: output size (a multiple of ``block_shape[1]``).
        block_shape: ``(bm, bn)`` blocks of the kernel.
        sparsity: fraction of blocks dropped, chosen at random, in ``[0, 1)`` (ignored if
            ``block_mask`` is given).
        block_mask: bool ``[in/bm, out/bn]`` (or element-level ``[in, out]``) kept blocks.
        kernel: an initial dense kernel ``[in, out]`` (e.g. a trained ``nnx.Linear``'s);
            entries outside kept blocks are dropped. Default: LeCun-normal scaled to the kept
            fan-in.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.dense_bsr_matmul`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random mask or kernel.

    Attributes:
        kernel: the `sparsejax.formats.BlockSparse` ``[in, out]`` with ``nnx.Param`` kept blocks
            (``kernel.data``) and `SparseStructure` block indices and counts.
        weight: the same `sparsejax.formats.BlockSparse` with plain arrays (read-only property).
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *,
                 block_shape: tuple[int, int] = (32, 32), sparsity: float | None = 0.5,
                 block_mask: Bool[Array, "R C"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        key = rngs.params() if rngs is not None else None
        w = build_bsr(in_features, out_features, tuple(block_shape), sparsity, block_mask,
                      kernel, key, param_dtype)
        self._set(w, init_bias(bias, use_bias, out_features, w.dtype), backend)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ W + b`` through `sparsejax.ops.dense_bsr_matmul`."""
        y = dense_bsr_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias[...]


class NMLinear(_SparseLinear):
    """Flax NNX linear layer with an N:M kernel ``[in, out]`` grouped along ``in`` (axis 0).

    Args:
        in_features: input size (a multiple of ``m``).
        out_features: output size.
        n: kept entries per group of ``m`` (jaxpruner / SR-STE convention).
        m: group size.
        kernel: an initial dense kernel ``[in, out]``. Default: LeCun-normal scaled to the kept
            fan-in.
        mask: bool ``[in, out]`` kept entries of ``kernel``, at most ``n`` per group of ``m``
            along ``in`` (e.g. from ``sparsejax.masks.nm(scores, n, m, axis=0)``). Default: the
            ``n`` largest ``|kernel|`` of each group.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.dense_nm_matmul`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random kernel.
        transposable: keep the kernel on a transposable N:M mask (N:M along ``out`` as well;
            default mask `sparsejax.masks.nm_transposable` of ``|kernel|``, ``out`` a multiple of
            ``m``) and run the product through `sparsejax.ops.dense_transposable_nm_matmul`, whose
            backward ``g @ W^T`` is an N:M product too (``backend`` is then not used).

    Attributes:
        kernel: the `sparsejax.formats.NMSparse` ``[in, out]`` with ``nnx.Param`` kept values
            (``kernel.values``, ``[in*n/m, out]``) and `SparseStructure` ``uint8`` positions.
        weight: the same `sparsejax.formats.NMSparse` with plain arrays (read-only property).
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 mask: Bool[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None, transposable: bool = False):
        key = rngs.params() if rngs is not None else None
        check_bool(transposable, "transposable")
        if transposable:
            kernel, mask = transposable_nm(in_features, out_features, n, m, kernel, mask, key,
                                           param_dtype)
        w = build_nm(in_features, out_features, n, m, kernel, mask, key, param_dtype)
        self._set(w, init_bias(bias, use_bias, out_features, w.dtype), backend)
        self.transposable = transposable

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ W + b`` through `sparsejax.ops.dense_nm_matmul` (or, with ``transposable``,
        `sparsejax.ops.dense_transposable_nm_matmul`)."""
        if self.transposable:
            lead = x.shape[:-1]
            y = dense_transposable_nm_matmul(x.reshape(-1, x.shape[-1]), self.weight)
            y = y.reshape(*lead, y.shape[-1])
        else:
            y = dense_nm_matmul(x, self.weight, backend=self.backend)
        return y if self.bias is None else y + self.bias[...]


class BDWPLinear(nnx.Module):
    """Flax NNX linear layer trained with bidirectional N:M masks (BDWP), kernel ``[in, out]``.

    ``y = x @ (W * M_f) + b`` with ``M_f`` N:M along ``in``; the input gradient is
    ``g @ (W * M_b)^T`` with ``M_b`` N:M along ``out``, the weight gradient the dense ``x^T g``
    (`sparsejax.training.bdwp_matmul`). Both masks are the magnitude masks of the current kernel
    (`sparsejax.training.bdwp_masks`), recomputed at every call, so the pattern follows training.
    For inference, deploy the forward mask: ``NMLinear(in, out, kernel=layer.kernel[...],
    mask=layer.masks()[0])``.

    Args:
        in_features: input size (a multiple of ``m``).
        out_features: output size (a multiple of ``m``).
        n: kept entries per group of ``m`` in both masks.
        m: group size.
        kernel: an initial dense kernel ``[in, out]``. Default: LeCun-normal scaled to the kept
            fan-in.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random kernel.

    Attributes:
        kernel: ``nnx.Param [in, out]``, dense.
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        key = rngs.params() if rngs is not None else None
        kernel = bdwp_kernel(in_features, out_features, n, m, kernel, key, param_dtype)
        self.kernel = nnx.Param(kernel)
        bias = init_bias(bias, use_bias, out_features, kernel.dtype)
        self.bias = None if bias is None else nnx.Param(bias)
        self.in_features, self.out_features, self.n, self.m = in_features, out_features, n, m

    def masks(self) -> tuple[Bool[Array, "in out"], Bool[Array, "in out"]]:
        """``(forward, backward)`` masks of the current kernel (`sparsejax.training.bdwp_masks`)."""
        from sparsejax.training.bdwp import bdwp_masks

        return bdwp_masks(self.kernel[...], self.n, self.m)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ (W * M_f) + b`` with BDWP's gradients (`sparsejax.training.bdwp_matmul`)."""
        from sparsejax.training.bdwp import bdwp_matmul

        y = bdwp_matmul(x, self.kernel[...], n=self.n, m=self.m)
        return y if self.bias is None else y + self.bias[...]

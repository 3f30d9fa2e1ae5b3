"""Flax NNX layers with an unstructured sparse (CSR) weight: `SparseLinear`, `SparseConv1x1`.

Both store the weight as a `sparsejax.formats.CSR` of shape ``[out, in]`` (one row per output
unit, the layout XNNPACK's sparse kernels use), built from a Flax-layout kernel ``[in, out]`` and
a mask, so a model pruned by `sparsejax.training` or `sparsejax.oneshot` deploys on them
unchanged (`sparsejax.nn.to_sparse` with ``format="csr"``). The forward is the row-parallel
`sparsejax.ops.csr_matmul` (``W @ x.T``) / `sparsejax.ops.sparse_conv1x1`; the weight gradient
covers the stored entries only (an SDDMM). The stored values are ``nnx.Param`` and the row
pointers and column indices non-trainable `sparsejax.nn.SparseStructure` variables, so an
optimizer step keeps the sparsity pattern exactly.

The Equinox layers of the same names are in `sparsejax.nn.eqx`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from sparsejax._checks import must_be
from sparsejax.nn._csr_weights import build_csr, check_data_format
from sparsejax.nn._weights import init_bias
from sparsejax.nn.linear import _SparseLinear
from sparsejax.ops import csr_matmul, sparse_conv1x1

__all__ = ["SparseConv1x1", "SparseLinear", "from_dense_layer", "to_dense_layer"]


class _CSRLayer(_SparseLinear):
    def _init(self, in_features, out_features, density, mask, kernel, bias, use_bias, backend,
              param_dtype, rngs):
        key = rngs.params() if rngs is not None else None
        w = build_csr(in_features, out_features, density, mask, kernel, key, param_dtype)
        self._set(w, init_bias(bias, use_bias, out_features, w.dtype), backend)
        self.in_features, self.out_features = in_features, out_features

    def dense_kernel(self) -> Float[Array, "in out"]:
        """The dense Flax-layout kernel ``[in, out]`` (zeros where nothing is stored)."""
        return self.weight.to_dense().T


class SparseLinear(_CSRLayer):
    """Flax NNX linear layer ``y = x @ W + b`` with an unstructured sparse (CSR) weight.

    Args:
        in_features: input size.
        out_features: output size.
        density: fraction of weights kept at random (used when neither ``mask`` nor ``kernel``
            is given).
        mask: bool ``[in, out]`` kept entries (e.g. a `sparsejax.training` / `sparsejax.oneshot`
            mask of an ``nnx.Linear`` kernel); stored zeros are kept, so the pattern is exactly
            the mask.
        kernel: an initial dense kernel ``[in, out]``; without ``mask`` its nonzeros are kept.
            Default: LeCun-normal scaled to the kept fan-in.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.csr_matmul`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random mask or kernel.

    Attributes:
        kernel: the `sparsejax.formats.CSR` weight ``[out, in]`` (note: transposed w.r.t.
            ``nnx.Linear``) with ``nnx.Param`` values and `SparseStructure` indices/pointers.
        weight: the same CSR with plain arrays (read-only property).
        bias: ``nnx.Param [out]`` or ``None``.
    """

    def __init__(self, in_features: int, out_features: int, *, density: float | None = 0.1,
                 mask: Bool[Array, "in out"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self._init(in_features, out_features, density, mask, kernel, bias, use_bias, backend,
                   param_dtype, rngs)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``x @ W + b`` as ``(W_csr @ x.T).T`` through `sparsejax.ops.csr_matmul`."""
        lead = x.shape[:-1]
        y = csr_matmul(self.weight, x.reshape(-1, x.shape[-1]).T, backend=self.backend).T
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias[...]


class SparseConv1x1(_CSRLayer):
    """Flax NNX 1x1 convolution (stride 1) with an unstructured sparse (CSR) weight.

    The sparse counterpart of ``nnx.Conv(in, out, kernel_size=(1, 1))`` (whose kernel
    ``[1, 1, in, out]`` is ``kernel`` here without its spatial axes), computed by
    `sparsejax.ops.sparse_conv1x1`.

    Args:
        in_features: input channels.
        out_features: output channels.
        data_format: ``"NHWC"`` (Flax's layout, default) or ``"NCHW"``.
        density: see `SparseLinear`.
        mask: bool ``[in, out]`` kept entries.
        kernel: an initial dense kernel ``[in, out]``.
        bias: an initial bias ``[out]``; default zeros.
        use_bias: add a bias.
        backend: passed to `sparsejax.ops.sparse_conv1x1`.
        param_dtype: dtype of a freshly initialised kernel.
        rngs: needed for a random mask or kernel.

    Attributes:
        kernel: the `sparsejax.formats.CSR` weight ``[out, in]``.
        weight: the same CSR with plain arrays (read-only property).
        bias: ``nnx.Param [out]`` or ``None``.
        data_format: ``"NHWC"`` or ``"NCHW"``.
    """

    def __init__(self, in_features: int, out_features: int, *, data_format: str = "NHWC",
                 density: float | None = 0.1, mask: Bool[Array, "in out"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.data_format = check_data_format(data_format)
        self._init(in_features, out_features, density, mask, kernel, bias, use_bias, backend,
                   param_dtype, rngs)

    def __call__(self, x: Float[Array, "B ..."]) -> Float[Array, "B ..."]:
        """The 1x1 convolution plus bias (on the channel axis)."""
        y = sparse_conv1x1(x, self.weight, data_format=self.data_format, backend=self.backend)
        if self.bias is None:
            return y
        b = self.bias[...]
        return y + (b if self.data_format == "NHWC" else b.reshape(-1, *([1] * (y.ndim - 2))))


# --------------------------------------------------------------------------------------------
# model surgery (used by `sparsejax.nn.to_sparse` / `to_dense` with format="csr")
# --------------------------------------------------------------------------------------------


def _check_pointwise(key: str, conv: nnx.Conv) -> None:
    ones = lambda v: v is None or all(int(s) == 1 for s in (v if isinstance(v, tuple | list)  # noqa: E731
                                                             else (v,)))
    ok = (conv.kernel[...].shape[:-2] == (1,) * (conv.kernel[...].ndim - 2)
          and ones(conv.strides) and ones(conv.input_dilation) and ones(conv.kernel_dilation)
          and conv.feature_group_count == 1 and conv.padding in ("SAME", "VALID", 0, ((0, 0),) * 2))
    if not ok:
        raise ValueError(must_be(f"masks['{key}']", "on a pointwise nnx.Conv (kernel size 1, "
                                 "stride 1, no dilation or groups) for format='csr'",
                                 f"a mask on nnx.Conv with kernel {conv.kernel[...].shape}, "
                                 f"strides {conv.strides}", raw=True))


def from_dense_layer(key: str, layer: nnx.Module, mask: Array, backend: str) -> nnx.Module:
    """The CSR layer replacing an ``nnx.Linear`` / pointwise ``nnx.Conv`` kept at ``mask``
    (the kernel's shape); the same bias."""
    kernel = layer.kernel[...]
    bias = None if layer.bias is None else layer.bias[...]
    common = dict(bias=bias, use_bias=bias is not None, backend=backend)
    if isinstance(layer, nnx.Conv):
        _check_pointwise(key, layer)
        mask = jnp.asarray(mask).reshape(kernel.shape[-2:])
        kernel = kernel.reshape(kernel.shape[-2:])
        return SparseConv1x1(*kernel.shape, kernel=kernel, mask=mask, **common)
    return SparseLinear(*kernel.shape, kernel=kernel, mask=mask, **common)


def to_dense_layer(layer: SparseLinear | SparseConv1x1) -> nnx.Module:
    """The ``nnx.Linear`` / pointwise ``nnx.Conv`` (NHWC) computing what ``layer`` computes."""
    kernel = layer.dense_kernel()
    bias = None if layer.bias is None else layer.bias[...]
    common = dict(use_bias=bias is not None, param_dtype=kernel.dtype,
                  bias_init=lambda *_, b=bias: b, rngs=nnx.Rngs(0))
    if isinstance(layer, SparseConv1x1):
        if layer.data_format != "NHWC":
            raise ValueError(must_be("layer.data_format", "'NHWC' to become an nnx.Conv",
                                     layer.data_format))
        return nnx.Conv(*kernel.shape, kernel_size=(1, 1),
                        kernel_init=lambda *_, k=kernel: k[None, None], **common)
    return nnx.Linear(*kernel.shape, kernel_init=lambda *_, k=kernel: k, **common)

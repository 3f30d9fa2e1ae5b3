"""Equinox layers with an unstructured sparse (CSR) weight: `SparseLinear`, `SparseConv1x1`.

The Equinox counterparts of `sparsejax.nn.SparseLinear` / `sparsejax.nn.SparseConv1x1` (same
names, same arguments with ``key`` instead of ``rngs``). The ``weight`` field is the
`sparsejax.formats.CSR` ``[out, in]`` (``equinox.nn.Linear``'s layout); its integer leaves are
left out by ``eqx.is_inexact_array``, so ``eqx.filter_grad`` trains only the stored values and
the bias, and the sparsity pattern is preserved exactly.

`SparseLinear` accepts ``[in]`` (like ``eqx.nn.Linear``) or ``[..., in]``; `SparseConv1x1`
accepts an unbatched ``[C_in, H, W]`` (like ``eqx.nn.Conv2d``, ``data_format="NCHW"``, the
default) or a batched input.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import must_be
from sparsejax.formats import CSR
from sparsejax.nn._csr_weights import build_csr, check_data_format
from sparsejax.nn._weights import init_bias
from sparsejax.ops import csr_matmul, sparse_conv1x1

__all__ = ["SparseConv1x1", "SparseLinear", "from_dense_layer", "to_dense_layer"]


class SparseLinear(eqx.Module):
    """Equinox linear layer ``y = W @ x + b`` with a CSR weight ``[out, in]``.

    Same arguments as `sparsejax.nn.SparseLinear` (``mask``/``kernel`` in the ``[in, out]``
    layout), with ``key`` instead of ``rngs``.

    Attributes:
        weight: the `sparsejax.formats.CSR` weight ``[out, in]``.
        bias: ``[out]`` or ``None``.
        backend: passed to `sparsejax.ops.csr_matmul` (static).
    """

    weight: CSR
    bias: Array | None
    backend: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, density: float | None = 0.1,
                 mask: Bool[Array, "in out"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 key: jax.Array | None = None):
        self.weight = build_csr(in_features, out_features, density, mask, kernel, key,
                                param_dtype)
        self.bias = init_bias(bias, use_bias, out_features, self.weight.dtype)
        self.backend = backend

    @property
    def in_features(self) -> int:
        """Input size."""
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        """Output size."""
        return self.weight.shape[0]

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        """``W @ x + b`` through `sparsejax.ops.csr_matmul` (row-parallel)."""
        lead = x.shape[:-1]
        y = csr_matmul(self.weight, x.reshape(-1, x.shape[-1]).T, backend=self.backend).T
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias


class SparseConv1x1(eqx.Module):
    """Equinox 1x1 convolution (stride 1) with a CSR weight ``[out, in]``.

    The sparse counterpart of ``eqx.nn.Conv2d(in, out, kernel_size=1)`` (whose weight
    ``[out, in, 1, 1]`` is the dense ``weight`` here). Same arguments as
    `sparsejax.nn.SparseConv1x1` with ``key`` instead of ``rngs``; ``data_format`` defaults to
    ``"NCHW"`` (Equinox's channels-first layout).

    Attributes:
        weight: the `sparsejax.formats.CSR` weight ``[out, in]``.
        bias: ``[out]`` or ``None``.
        data_format: ``"NCHW"`` or ``"NHWC"`` (static).
        backend: passed to `sparsejax.ops.sparse_conv1x1` (static).
    """

    weight: CSR
    bias: Array | None
    data_format: str = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, data_format: str = "NCHW",
                 density: float | None = 0.1, mask: Bool[Array, "in out"] | None = None,
                 kernel: Float[Array, "in out"] | None = None,
                 bias: Float[Array, " out"] | None = None, use_bias: bool = True,
                 backend: str = "auto", param_dtype: jnp.dtype = jnp.float32,
                 key: jax.Array | None = None):
        self.data_format = check_data_format(data_format)
        self.weight = build_csr(in_features, out_features, density, mask, kernel, key,
                                param_dtype)
        self.bias = init_bias(bias, use_bias, out_features, self.weight.dtype)
        self.backend = backend

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        """The 1x1 convolution plus bias; an unbatched ``[C_in, H, W]`` (NCHW) or
        ``[H, W, C_in]`` (NHWC) input gets a batch axis for the call."""
        unbatched = x.ndim == 3
        xb = x[None] if unbatched else x
        y = sparse_conv1x1(xb, self.weight, data_format=self.data_format, backend=self.backend)
        if self.bias is not None:
            y = y + (self.bias if self.data_format == "NHWC"
                     else self.bias.reshape(-1, *([1] * (y.ndim - 2))))
        return y[0] if unbatched else y


# --------------------------------------------------------------------------------------------
# model surgery (used by `sparsejax.nn.eqx.to_sparse` / `to_dense` with format="csr")
# --------------------------------------------------------------------------------------------


def from_dense_layer(key: str, layer: eqx.Module, mask: Array, backend: str) -> eqx.Module:
    """The CSR layer replacing an ``eqx.nn.Linear`` / pointwise ``eqx.nn.Conv2d`` whose weight
    (``[out, in]`` / ``[out, in, 1, 1]``) is kept at ``mask`` (the weight's shape)."""
    w = layer.weight
    common = dict(bias=None if layer.bias is None else layer.bias.reshape(-1),
                  use_bias=layer.bias is not None, backend=backend)
    if isinstance(layer, eqx.nn.Conv):
        pointwise = (w.ndim == 4 and w.shape[2:] == (1, 1) and tuple(layer.stride) == (1, 1)
                     and tuple(layer.dilation) == (1, 1) and layer.groups == 1
                     and all(p == (0, 0) for p in layer.padding))
        if not pointwise:
            raise ValueError(must_be(f"masks['{key}']", "on a pointwise eqx.nn.Conv2d (kernel "
                                     "size 1, stride 1, no padding, dilation or groups) for "
                                     "format='csr'", f"a mask on a conv with weight {w.shape}",
                                     raw=True))
        w, mask = w[:, :, 0, 0], jnp.asarray(mask)[:, :, 0, 0]
        return SparseConv1x1(w.shape[1], w.shape[0], kernel=w.T, mask=mask.T, **common)
    return SparseLinear(w.shape[1], w.shape[0], kernel=w.T, mask=jnp.asarray(mask).T, **common)


def to_dense_layer(layer: SparseLinear | SparseConv1x1) -> eqx.Module:
    """The ``eqx.nn.Linear`` / pointwise ``eqx.nn.Conv2d`` computing what ``layer`` computes."""
    w = layer.weight.to_dense()  # [out, in]
    out_f, in_f = w.shape
    if isinstance(layer, SparseConv1x1):
        if layer.data_format != "NCHW":
            raise ValueError(must_be("layer.data_format", "'NCHW' to become an eqx.nn.Conv2d",
                                     layer.data_format))
        new = eqx.nn.Conv2d(in_f, out_f, 1, use_bias=layer.bias is not None, dtype=w.dtype,
                            key=jax.random.PRNGKey(0))
        new = eqx.tree_at(lambda x: x.weight, new, w[:, :, None, None])
        bias = None if layer.bias is None else layer.bias.reshape(-1, 1, 1)
    else:
        new = eqx.nn.Linear(in_f, out_f, use_bias=layer.bias is not None, dtype=w.dtype,
                            key=jax.random.PRNGKey(0))
        new = eqx.tree_at(lambda x: x.weight, new, w)
        bias = layer.bias
    return new if bias is None else eqx.tree_at(lambda x: x.bias, new, bias)

"""Unstructured sparse products over `sparsejax.formats.CSR`, with backend dispatch and gradients.

* `csr_matmul` ``A @ X`` (sparse x dense), also ``a @ x`` on a ``CSR``;
* `dense_csr_matmul` ``X @ A`` (dense x sparse), also ``x @ a``;
* `csr_sddmm` ``(a @ b)`` sampled at the stored entries of ``like`` (the gradient with respect
  to the values);
* `sparse_conv1x1` a 1x1 convolution (NHWC or NCHW) with a CSR weight ``[C_out, C_in]``, the
  "Fast Sparse ConvNets" layer.

Backends (keyword-only ``backend=``, the one dispatcher `sparsejax._backend`): ``"reference"``
(densify + ``jnp``), ``"xla"`` (cost scales with the stored entries; see
`sparsejax.ops.csr_xla`), ``"pallas_gpu"`` (Triton kernels, `sparsejax.ops.csr_pallas_gpu`),
``"pallas_tpu"`` (a Mosaic SpMM kernel, `sparsejax.ops.csr_pallas_tpu`; its SDDMM is the XLA
gather path) and ``"auto"`` (``pallas_gpu`` on GPU, ``pallas_tpu`` on TPU, ``xla`` elsewhere; a
dtype a kernel does not take falls back to ``xla``).

Gradients are ``jax.custom_vjp`` rules made of the other products of the same backend: for
``y = A @ X``, ``dA.data = csr_sddmm(dy, X.T, like=A)`` (stored entries only, never a dense
weight gradient) and ``dX = A.T @ dy``; for ``y = X @ A``, ``dX = dy @ A.T`` and
``dA.data = csr_sddmm(X.T, dy, like=A)``. The cotangent of a ``CSR`` is a ``CSR`` whose ``data``
holds the gradient of the stored values (zero in padded slots) and whose integer leaves are
``float0``: differentiate with respect to ``a.data``
(``jax.grad(lambda d: loss(a.replace(data=d)))``) or pass ``allow_int=True``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._backend import Resolved, resolve
from sparsejax._checks import check_choice, check_float_array, must_be
from sparsejax.formats import CSR
from sparsejax.ops import csr_xla
from sparsejax.ops._dispatch import dispatched_vjp, float0_like, run

__all__ = ["CSR_BACKENDS", "csr_matmul", "csr_sddmm", "dense_csr_matmul", "sparse_conv1x1"]

CSR_BACKENDS = ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")  # = _backend.backends("csr_matmul")
"""Accepted ``backend=`` values of the CSR products."""


def _transpose_product(backend: Resolved, interpret: Any, x: Array, a: CSR) -> Array:
    """``x @ A`` as ``(A.T @ x.T).T`` (reference: densify)."""
    if backend.name == "reference":
        return csr_xla.reference_dense_csr_matmul(x, a)
    return run(backend, "csr_matmul", interpret)(a.transpose(), x.T).T


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_csr(a: Any, name: str) -> CSR:
    if not isinstance(a, CSR):
        raise TypeError(must_be(name, "a sparsejax.formats.CSR", type(a).__name__, raw=True))
    if a.data.ndim != 1 or a.indices.shape != a.data.shape or a.indptr.shape != (
            a.shape[0] + 1,):
        raise ValueError(must_be(name, "an unbatched CSR (data/indices [nse], indptr [M + 1]; "
                                 "use jax.vmap over the dense operand for stacks)",
                                 f"data {a.data.shape}, indices {a.indices.shape}, indptr "
                                 f"{a.indptr.shape} for shape {a.shape}", raw=True))
    a = jax.tree.map(jnp.asarray, a)
    check_float_array(a.data, f"{name}.data")
    return a


def _csr_cotangent(a: CSR, data: Array) -> CSR:
    return a.replace(data=data.astype(a.data.dtype), indices=float0_like(a.indices),
                     indptr=float0_like(a.indptr))


# --------------------------------------------------------------------------------------------
# products with custom VJPs
# --------------------------------------------------------------------------------------------


def _csr_mm_bwd(backend, interpret, res, g):
    a, x = res
    g = jnp.asarray(g, jnp.result_type(a.data, x))
    da = run(backend, "csr_sddmm", interpret)(g, x.T, a)
    dx = _transpose_product(backend, interpret, g.T, a).T
    return _csr_cotangent(a, da), dx.astype(x.dtype)


_csr_mm = dispatched_vjp("csr_matmul", _csr_mm_bwd)


def _dense_csr_mm_bwd(backend, interpret, res, g):
    x, a = res
    g = jnp.asarray(g, jnp.result_type(x, a.data))
    dx = run(backend, "csr_matmul", interpret)(a, g.T).T
    da = run(backend, "csr_sddmm", interpret)(x.T, g, a)
    return dx.astype(x.dtype), _csr_cotangent(a, da)


_dense_csr_mm = dispatched_vjp(_transpose_product, _dense_csr_mm_bwd)


def _sddmm_bwd(backend, interpret, res, g):
    a, b, like = res
    gs = like.replace(data=jnp.where(like.valid(), jnp.asarray(g, jnp.result_type(a, b)), 0))
    da = run(backend, "csr_matmul", interpret)(gs, b.T)
    db = _transpose_product(backend, interpret, a.T, gs)
    return (da.astype(a.dtype), db.astype(b.dtype),
            _csr_cotangent(like, jnp.zeros_like(like.data)))


_sddmm = dispatched_vjp("csr_sddmm", _sddmm_bwd)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def csr_matmul(
    a: CSR,
    x: Float[Array, "K ..."],
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "M ..."]:
    """Sparse x dense: ``A @ x`` for a CSR ``A [M, K]``.

    Args:
        a: the CSR left operand ``[M, K]``.
        x: dense ``[K, N]`` (or a vector ``[K]``).
        backend: ``"auto"``, ``"reference"``, ``"xla"``, ``"pallas_tpu"`` or ``"pallas_gpu"``.
        interpret: run a Pallas backend in interpret mode; ``None``: exactly on CPU.

    Returns:
        ``[M, N]`` (or ``[M]``) in ``result_type(a.dtype, x.dtype)``, accumulated in float32.

    Raises:
        TypeError: ``a`` not a ``CSR``, non-float ``x`` or values.
        ValueError: ``x.shape[0] != K``, ``x`` not 1-D/2-D, unknown backend.
    """
    a = _check_csr(a, "a")
    x = check_float_array(jnp.asarray(x), "x")
    backend = resolve("csr_matmul", backend)
    if x.ndim not in (1, 2) or x.shape[0] != a.shape[1]:
        raise ValueError(must_be("x", f"of shape [K] or [K, N] with K = a.shape[1] = "
                                 f"{a.shape[1]}", f"shape {x.shape}", raw=True))
    if x.ndim == 1:
        return _csr_mm(backend, interpret, a, x[:, None])[:, 0]
    return _csr_mm(backend, interpret, a, x)


def dense_csr_matmul(
    x: Float[Array, "... M"],
    a: CSR,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "... N"]:
    """Dense x sparse: ``x @ A`` for a CSR ``A [M, N]``.

    Runs ``(A.T @ x.T).T``: the transpose costs one sort of the ``nse`` slots per call. For a
    layer, store the weight as ``[out, in]`` and call `csr_matmul` instead (as `SparseLinear`
    does).

    Args:
        x: dense ``[..., M]``; leading axes are flattened into one batch axis.
        a: the CSR right operand ``[M, N]``.
        backend: see `csr_matmul`.
        interpret: see `csr_matmul`.

    Returns:
        ``[..., N]`` in ``result_type(x.dtype, a.dtype)``.

    Raises:
        TypeError: ``a`` not a ``CSR``, non-float ``x``.
        ValueError: ``x.shape[-1] != M``, unknown backend.
    """
    a = _check_csr(a, "a")
    x = check_float_array(jnp.asarray(x), "x")
    backend = resolve("csr_matmul", backend)
    if x.ndim < 1 or x.shape[-1] != a.shape[0]:
        raise ValueError(must_be("x", f"of shape [..., M] with M = a.shape[0] = {a.shape[0]}",
                                 f"shape {x.shape}", raw=True))
    lead = x.shape[:-1]
    out = _dense_csr_mm(backend, interpret, x.reshape(-1, x.shape[-1]), a)
    return out.reshape(*lead, a.shape[1])


def csr_sddmm(
    a: Float[Array, "M Kd"],
    b: Float[Array, "Kd N"],
    like: CSR,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> CSR:
    """Sampled dense-dense product: ``a @ b`` computed only at the stored entries of ``like``.

    This is the gradient of ``csr_matmul(A, X)`` with respect to ``A``'s values:
    ``csr_sddmm(dy, X.T, like=A)``.

    Args:
        a: dense ``[M, Kd]``.
        b: dense ``[Kd, N]``.
        like: a ``CSR [M, N]`` whose pattern (``indices``, ``indptr``) is used; its ``data``
            is ignored.
        backend: see `csr_matmul`.
        interpret: see `csr_matmul`.

    Returns:
        A ``CSR`` with ``like``'s pattern holding ``(a @ b)`` at the stored entries (zero in
        padded slots), dtype ``result_type(a, b)``.

    Raises:
        TypeError: ``like`` not a ``CSR``, non-float ``a``/``b``.
        ValueError: shapes that do not chain to ``like.shape``, unknown backend.
    """
    like = _check_csr(like, "like")
    a = check_float_array(jnp.asarray(a), "a")
    b = check_float_array(jnp.asarray(b), "b")
    backend = resolve("csr_matmul", backend)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or (
            a.shape[0], b.shape[1]) != like.shape:
        raise ValueError(must_be("a, b", f"[M, Kd] and [Kd, N] chaining to like.shape "
                                 f"{like.shape}", f"a {a.shape} and b {b.shape}", raw=True))
    return like.replace(data=_sddmm(backend, interpret, a, b, like))


def sparse_conv1x1(
    x: Float[Array, "B H W C_in"] | Float[Array, "B C_in H W"],
    w: CSR,
    *,
    data_format: str = "NHWC",
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "B H W C_out"] | Float[Array, "B C_out H W"]:
    """A 1x1 convolution (stride 1, no bias) with a CSR weight ``w [C_out, C_in]``.

    Equals ``lax.conv_general_dilated(x, w.to_dense()[:, :, None, None], (1, 1), "VALID",
    dimension_numbers=(data_format, "OIHW", data_format))``. The product is ``W @ X`` with
    ``X`` the ``[C_in, B*H*W]`` pixel matrix, row-parallel over the output channels as in
    XNNPACK's sparse kernels ("Fast Sparse ConvNets"): NCHW with ``B = 1`` needs no
    transposition; NHWC transposes ``X`` and the result.

    Args:
        x: ``[B, H, W, C_in]`` (NHWC) or ``[B, C_in, H, W]`` (NCHW); any number of spatial axes
            (``H, W`` may be one axis or several).
        w: ``CSR [C_out, C_in]`` (the ``OI`` of an ``OIHW`` kernel; a Flax ``HWIO`` kernel
            ``k`` is ``k[0, 0].T``).
        data_format: ``"NHWC"`` (channels last) or ``"NCHW"`` (channels first).
        backend: see `csr_matmul`.
        interpret: see `csr_matmul`.

    Returns:
        ``[B, H, W, C_out]`` or ``[B, C_out, H, W]`` in ``result_type(x, w)``.

    Raises:
        TypeError: ``w`` not a ``CSR``, non-float ``x``.
        ValueError: ``data_format`` unknown, ``x`` with fewer than 3 axes or the wrong number
            of input channels.
    """
    w = _check_csr(w, "w")
    x = check_float_array(jnp.asarray(x), "x")
    data_format = check_choice(data_format, "data_format", ("NHWC", "NCHW"))
    cin = w.shape[1]
    axis = -1 if data_format == "NHWC" else 1
    if x.ndim < 3 or x.shape[axis] != cin:
        raise ValueError(must_be("x", f"[B, ..., C_in] ({data_format}) with C_in = "
                                 f"w.shape[1] = {cin}" if axis == -1 else
                                 f"[B, C_in, ...] (NCHW) with C_in = w.shape[1] = {cin}",
                                 f"shape {x.shape}", raw=True))
    if data_format == "NHWC":
        pixels = x.reshape(-1, cin).T  # [C_in, B*H*W]
        out = csr_matmul(w, pixels, backend=backend, interpret=interpret)
        return out.T.reshape(*x.shape[:-1], w.shape[0])
    b, spatial = x.shape[0], x.shape[2:]
    pixels = jnp.moveaxis(x.reshape(b, cin, -1), 1, 0).reshape(cin, -1)  # [C_in, B*HW]
    out = csr_matmul(w, pixels, backend=backend, interpret=interpret)  # [C_out, B*HW]
    out = jnp.moveaxis(out.reshape(w.shape[0], b, -1), 0, 1)
    return out.reshape(b, w.shape[0], *spatial)


def _register_operators() -> None:
    CSR.__matmul__ = lambda self, x: csr_matmul(self, x)
    CSR.__rmatmul__ = lambda self, x: dense_csr_matmul(x, self)


_register_operators()

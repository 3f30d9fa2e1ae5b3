"""Public sparse products with backend dispatch and gradients.

Products (``A`` block-sparse `sparsejax.formats.BlockSparse`, ``W``
`sparsejax.formats.NMSparse`):

* `bsr_matmul` ``A @ b`` (sparse x dense), also ``A @ b`` on a ``BlockSparse`` (this module
  registers the ``@`` operators of `BlockSparse` and `NMSparse`; `sparsejax.formats` itself
  imports nothing from ``ops``);
* `dense_bsr_matmul` ``x @ A`` (dense x sparse), also ``x @ A``;
* `sddmm` ``(a @ b)`` sampled at the kept blocks of ``like`` (a ``BlockSparse``);
* `nm_matmul` ``W @ x`` and `dense_nm_matmul` ``x @ W``.

Backends (keyword-only ``backend=``, dispatched by `sparsejax._backend`, the same dispatcher
`sparsejax.attention.attention` uses):

* ``"reference"``: densify + ``jnp`` (the test oracle);
* ``"xla"``: cost scales with the kept blocks (the CPU default);
* ``"pallas_tpu"`` / ``"pallas_gpu"``: Pallas kernels in ``sparsejax.ops.pallas_tpu`` /
  ``sparsejax.ops.pallas_gpu``, imported lazily; ``interpret=None`` (default) runs them in Pallas
  interpret mode exactly on CPU, ``True``/``False`` force it;
* ``"auto"``: ``pallas_tpu`` on TPU, ``pallas_gpu`` on GPU (``gpu``/``cuda``/``rocm``), ``xla``
  elsewhere; when the chosen kernel raises `sparsejax._backend.NotSupportedError` (a block shape
  or dtype it cannot tile, raised eagerly) ``auto`` falls back to ``xla``. Naming a Pallas backend
  explicitly raises instead.

N:M products have ``reference``, ``xla`` and ``pallas_gpu`` backends (``auto``: ``pallas_gpu`` on
GPU, ``xla`` elsewhere); the Pallas kernel is forward-only and its VJP is the XLA gather path's.

Gradients: the block-sparse products are ``jax.custom_vjp`` functions whose backward passes
are the other products of the same backend: for ``y = A @ b``,
``dA = sddmm(dy, b.T, like=A)`` (kept blocks only, never a dense weight gradient) and
``db = (dy.T @ A).T``; for ``y = x @ A``, ``dx = (A @ dy.T).T`` and ``dA = sddmm(x.T, dy, like=A)``.
The cotangent of a ``BlockSparse`` is a ``BlockSparse`` whose ``data`` holds the gradient of the
kept blocks (zero in padded slots) and whose integer leaves are ``float0``; differentiate with
respect to ``a.data`` (e.g. ``jax.grad(lambda d: loss(a.replace(data=d)))``) or pass
``allow_int=True``. N:M products are differentiated by JAX through the gather, which yields the
gradient of the kept ``values`` only.

Shapes: the sparse operand's dimensions are multiples of its block by construction (the format
rejects anything else; nothing is padded); the dense operand's free dimension is arbitrary for the
``reference`` and ``xla`` backends.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._backend import (
    BACKENDS,
    Resolved,
    resolve,
    resolve_backend,
    with_fallback,
)
from sparsejax._checks import check_float_array
from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.ops import reference, xla
from sparsejax.ops._dispatch import dispatched_vjp, float0_like, run

__all__ = [
    "BACKENDS",
    "bsr_matmul",
    "dense_bsr_matmul",
    "dense_nm_matmul",
    "nm_matmul",
    "resolve_backend",
    "sddmm",
]

# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_bsr(a: Any, name: str) -> BlockSparse:
    if not isinstance(a, BlockSparse):
        raise TypeError(f"`{name}` must be a sparsejax.formats.BlockSparse; got "
                        f"{type(a).__name__}.")
    return jax.tree.map(jnp.asarray, a)


def _bsr_cotangent(a: BlockSparse, data: Array) -> BlockSparse:
    return a.replace(data=data.astype(a.data.dtype), indices=float0_like(a.indices),
                     counts=float0_like(a.counts))


# --------------------------------------------------------------------------------------------
# block-sparse products with custom VJPs
# --------------------------------------------------------------------------------------------


def _bsr_mm_bwd(backend, interpret, res, g):
    a, b = res
    g = jnp.asarray(g, jnp.result_type(a.data, b))
    da = run(backend, "sddmm", interpret)(g, b.T, a)
    db = run(backend, "dense_bsr_matmul", interpret)(g.T, a).T
    return _bsr_cotangent(a, da.data), db.astype(b.dtype)


_bsr_mm = dispatched_vjp("bsr_matmul", _bsr_mm_bwd)


def _dense_bsr_mm_bwd(backend, interpret, res, g):
    x, a = res
    g = jnp.asarray(g, jnp.result_type(x, a.data))
    dx = run(backend, "bsr_matmul", interpret)(a, g.T).T
    da = run(backend, "sddmm", interpret)(x.T, g, a)
    return dx.astype(x.dtype), _bsr_cotangent(a, da.data)


_dense_bsr_mm = dispatched_vjp("dense_bsr_matmul", _dense_bsr_mm_bwd)


def _sddmm_data(backend: Resolved, interpret: Any, a: Array, b: Array, like: BlockSparse) -> Array:
    return run(backend, "sddmm", interpret)(a, b, like).data


def _sddmm_bwd(backend, interpret, res, g):
    a, b, like = res
    gs = like.replace(data=jnp.asarray(g, jnp.result_type(a, b)))
    da = run(backend, "bsr_matmul", interpret)(gs, b.T)
    db = run(backend, "dense_bsr_matmul", interpret)(a.T, gs)
    return (da.astype(a.dtype), db.astype(b.dtype),
            _bsr_cotangent(like, jnp.zeros_like(like.data)))


_sddmm = dispatched_vjp(_sddmm_data, _sddmm_bwd)


def bsr_matmul(
    a: BlockSparse,
    b: Float[Array, "K ..."],
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "M ..."]:
    """Sparse x dense: ``A @ b`` for a BSR ``A [M, K]``.

    Args:
        a: the block-sparse left operand ``[M, K]``.
        b: dense ``[K, N]`` (or a vector ``[K]``).
        backend: ``"auto"``, ``"reference"``, ``"xla"``, ``"pallas_tpu"`` or ``"pallas_gpu"``.
        interpret: run a Pallas backend in interpret mode; ``None``: exactly on CPU.

    Returns:
        ``[M, N]`` (or ``[M]``) in ``result_type(a.dtype, b.dtype)``, accumulated in float32.

    Raises:
        TypeError: ``a`` not a ``BlockSparse``, non-float ``b``.
        ValueError: ``b.shape[0] != K``, ``b`` not 1-D/2-D, unknown backend.
    """
    a = _check_bsr(a, "a")
    b = check_float_array(jnp.asarray(b), "b")
    backend = resolve("bsr_matmul", backend)
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[1]:
        raise ValueError(f"`b` must have shape [K] or [K, N] with K = a.shape[1] = {a.shape[1]}; "
                         f"got {b.shape}.")
    if b.ndim == 1:
        return _bsr_mm(backend, interpret, a, b[:, None])[:, 0]
    return _bsr_mm(backend, interpret, a, b)


def dense_bsr_matmul(
    x: Float[Array, "... M"],
    a: BlockSparse,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "... N"]:
    """Dense x sparse: ``x @ A`` for a BSR ``A [M, N]`` (a layer's forward pass).

    Args:
        x: dense ``[..., M]``; leading axes are flattened into one batch axis.
        a: the block-sparse right operand ``[M, N]``.
        backend: see `bsr_matmul`.
        interpret: see `bsr_matmul`.

    Returns:
        ``[..., N]`` in ``result_type(x.dtype, a.dtype)``.

    Raises:
        TypeError: ``a`` not a ``BlockSparse``, non-float ``x``.
        ValueError: ``x.shape[-1] != M``, unknown backend.
    """
    a = _check_bsr(a, "a")
    x = check_float_array(jnp.asarray(x), "x")
    backend = resolve("dense_bsr_matmul", backend)
    if x.ndim < 1 or x.shape[-1] != a.shape[0]:
        raise ValueError(f"`x` must have shape [..., M] with M = a.shape[0] = {a.shape[0]}; "
                         f"got {x.shape}.")
    lead = x.shape[:-1]
    out = _dense_bsr_mm(backend, interpret, x.reshape(-1, x.shape[-1]), a)
    return out.reshape(*lead, a.shape[1])


def sddmm(
    a: Float[Array, "M Kd"],
    b: Float[Array, "Kd N"],
    like: BlockSparse,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> BlockSparse:
    """Sampled dense-dense product: ``a @ b`` computed only at the kept blocks of ``like``.

    Args:
        a: dense ``[M, Kd]``.
        b: dense ``[Kd, N]``.
        like: a ``BlockSparse [M, N]`` whose structure (indices, counts, block shape) is used;
            its ``data`` is ignored.
        backend: see `bsr_matmul`.
        interpret: see `bsr_matmul`.

    Returns:
        A ``BlockSparse`` with ``like``'s structure holding ``(a @ b)``'s kept blocks (zero in
        padded slots), dtype ``result_type(a, b)``.

    Raises:
        TypeError: ``like`` not a ``BlockSparse``, non-float ``a``/``b``.
        ValueError: shapes that do not chain to ``like.shape``, unknown backend.
    """
    like = _check_bsr(like, "like")
    a = check_float_array(jnp.asarray(a), "a")
    b = check_float_array(jnp.asarray(b), "b")
    backend = resolve("sddmm", backend)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or (
            a.shape[0], b.shape[1]) != like.shape:
        raise ValueError(f"`a` [M, Kd] and `b` [Kd, N] must chain to like.shape {like.shape}; "
                         f"got a {a.shape} and b {b.shape}.")
    data = _sddmm(backend, interpret, a, b, like)
    return like.replace(data=data)


# --------------------------------------------------------------------------------------------
# N:M products
# --------------------------------------------------------------------------------------------


def _nm_pallas_gpu_bwd(backend, interpret, res, g):
    """The Pallas kernel is forward-only: its VJP is the XLA gather path's."""
    w, x = res
    _, vjp = jax.vjp(xla.nm_matmul, w, x)
    return vjp(jnp.asarray(g, jnp.result_type(w.values, x)))


# ``W @ x`` (``W`` grouped along its last axis) with the Pallas GPU kernel
_nm_pallas_gpu = dispatched_vjp("nm_matmul", _nm_pallas_gpu_bwd)


def _nm_gpu(backend: Resolved, interpret: Any, w: NMSparse, x: Array) -> Array:
    """``W @ x`` through the Pallas GPU kernel; when ``auto`` chose it, a geometry or dtype the
    kernel does not support falls back to the XLA gather path."""
    kernel = functools.partial(_nm_pallas_gpu, Resolved("pallas_gpu"), interpret)
    return with_fallback(kernel, xla.nm_matmul, auto=backend.auto)(w, x)


def _nm_transpose(w: NMSparse) -> NMSparse:
    """The 2-D transpose of ``w`` (the grouped axis moves with it)."""
    return NMSparse(w.values.T, w.indices.T, w.n, w.m, -1 if w.axis == -2 else -2, w.length)


def _check_nmsparse(w: Any) -> NMSparse:
    if not isinstance(w, NMSparse):
        raise TypeError(f"`w` must be a sparsejax.formats.NMSparse; got {type(w).__name__}.")
    if w.values.ndim != 2:
        raise ValueError(f"`w` must be a 2-D NMSparse; got values of shape {w.values.shape} "
                         "(use jax.vmap for stacks).")
    return jax.tree.map(jnp.asarray, w)


def nm_matmul(
    w: NMSparse,
    x: Float[Array, "K ..."],
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "M ..."]:
    """``W @ x`` for a 2-D N:M-compressed ``W [M, K]``.

    With ``W`` compressed along its reduction axis (``axis=1``, the torch ``[out, in]`` layout)
    the ``xla`` backend gathers the kept rows of ``x`` (``K * n / m`` products per output); a
    ``W`` compressed along axis 0 is not grouped along the reduction and is densified.

    Args:
        w: ``NMSparse`` of dense shape ``[M, K]``.
        x: dense ``[K, N]`` or ``[K]``.
        backend: ``"auto"`` (``"pallas_gpu"`` on GPU, else ``"xla"``), ``"xla"``,
            ``"pallas_gpu"`` or ``"reference"``.
        interpret: see `bsr_matmul`.

    Returns:
        ``[M, N]`` (or ``[M]``) in ``result_type(w.dtype, x.dtype)``.

    Raises:
        TypeError: ``w`` not an ``NMSparse``, non-float ``x``.
        ValueError: non-2-D ``w``, ``x.shape[0] != K``, unknown backend.
    """
    w = _check_nmsparse(w)
    x = check_float_array(jnp.asarray(x), "x")
    backend = resolve("nm_matmul", backend)
    k = w.shape[1]
    if x.ndim not in (1, 2) or x.shape[0] != k:
        raise ValueError(f"`x` must have shape [K] or [K, N] with K = {k}; got {x.shape}.")
    if x.ndim == 1:
        return _nm_matmul_2d(w, x[:, None], backend, interpret)[:, 0]
    return _nm_matmul_2d(w, x, backend, interpret)


def _nm_matmul_2d(w: NMSparse, x: Array, backend: Resolved, interpret: Any) -> Array:
    if backend.name == "reference" or w.axis != -1:
        return reference.nm_matmul(w, x)
    if backend.name == "pallas_gpu":
        return _nm_gpu(backend, interpret, w, x)
    return xla.nm_matmul(w, x)


def dense_nm_matmul(
    x: Float[Array, "... K"],
    w: NMSparse,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "... N"]:
    """``x @ W`` for a 2-D N:M-compressed ``W [K, N]`` (a Flax ``Dense`` kernel ``[in, out]``).

    With ``W`` compressed along axis 0 (its reduction axis: ``NMSparse.from_dense(w, n, m,
    axis=0)``) the ``xla`` backend gathers the kept inputs; otherwise ``W`` is
    densified.

    Args:
        x: dense ``[..., K]``.
        w: ``NMSparse`` of dense shape ``[K, N]``.
        backend: ``"auto"`` (``"pallas_gpu"`` on GPU, else ``"xla"``), ``"xla"``,
            ``"pallas_gpu"`` (runs ``(W.T @ x.T).T``) or ``"reference"``.
        interpret: see `bsr_matmul`.

    Returns:
        ``[..., N]`` in ``result_type(x.dtype, w.dtype)``.

    Raises:
        TypeError: ``w`` not an ``NMSparse``, non-float ``x``.
        ValueError: non-2-D ``w``, ``x.shape[-1] != K``, unknown backend.
    """
    w = _check_nmsparse(w)
    x = check_float_array(jnp.asarray(x), "x")
    backend = resolve("nm_matmul", backend)
    k = w.shape[0]
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"`x` must have shape [..., K] with K = {k}; got {x.shape}.")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if backend.name == "reference" or w.axis != -2:
        out = reference.dense_nm_matmul(x2, w)
    elif backend.name == "pallas_gpu":
        out = _nm_gpu(backend, interpret, _nm_transpose(w), x2.T).T
    else:
        out = xla.dense_nm_matmul(x2, w)
    return out.reshape(*lead, w.shape[1])


# --------------------------------------------------------------------------------------------
# ``@`` on the formats (registered here so that `sparsejax.formats` imports nothing from ops)
# --------------------------------------------------------------------------------------------


def _register_operators() -> None:
    BlockSparse.__matmul__ = lambda self, b: bsr_matmul(self, b)
    BlockSparse.__rmatmul__ = lambda self, x: dense_bsr_matmul(x, self)
    NMSparse.__matmul__ = lambda self, x: nm_matmul(self, x)
    NMSparse.__rmatmul__ = lambda self, x: dense_nm_matmul(x, self)


_register_operators()

"""Public sparse products with backend dispatch and gradients.

Products (``A`` block-sparse `sparsejax.formats.BlockSparse`, ``W``
`sparsejax.formats.NMSparse`):

* `bsr_matmul` ``A @ b`` (sparse x dense), also ``A @ b`` on a ``BlockSparse``;
* `dense_bsr_matmul` ``x @ A`` (dense x sparse), also ``x @ A``;
* `sddmm` ``(a @ b)`` sampled at the kept blocks of ``like`` (a ``BlockSparse``);
* `nm_matmul` ``W @ x`` and `dense_nm_matmul` ``x @ W``.

Backends (``backend=``):

* ``"reference"``: densify + ``jnp`` (the test oracle);
* ``"xla"``: cost scales with the kept blocks (the CPU default);
* ``"pallas_tpu"`` / ``"pallas_gpu"``: Pallas kernels in ``sparsejax.ops.pallas_tpu`` /
  ``sparsejax.ops.pallas_gpu``, imported lazily; ``interpret=True`` runs them in Pallas
  interpret mode on CPU;
* ``"auto"``: ``xla`` on CPU, ``pallas_tpu`` on TPU, ``pallas_gpu`` on GPU (by
  `jax.default_backend`); when the chosen kernel rejects the operands (a block shape or
  dtype it cannot tile, raised eagerly as ``ValueError``/``TypeError``) ``auto`` falls back to
  ``xla``. Naming a Pallas backend explicitly raises instead.

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
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.ops import reference, xla

__all__ = [
    "BACKENDS",
    "bsr_matmul",
    "dense_bsr_matmul",
    "dense_nm_matmul",
    "nm_matmul",
    "resolve_backend",
    "sddmm",
]

BACKENDS = ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")
_NM_BACKENDS = ("auto", "reference", "xla", "pallas_gpu")


def resolve_backend(backend: str) -> str:
    """The concrete backend ``backend="auto"`` stands for on the default JAX platform.

    Raises:
        ValueError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}; got {backend!r}.")
    if backend != "auto":
        return backend
    platform = jax.default_backend()
    if platform == "tpu":
        return "pallas_tpu"
    if platform in ("gpu", "cuda", "rocm"):
        return "pallas_gpu"
    return "xla"


def _dispatch(backend: str) -> str:
    """``resolve_backend``, except that an ``"auto"`` that picks a Pallas backend is marked
    ``"auto:<backend>"``: such a call falls back to ``xla`` when the kernel rejects the operands'
    geometry or dtype (e.g. blocks the Triton kernels cannot tile)."""
    resolved = resolve_backend(backend)
    return f"auto:{resolved}" if backend == "auto" and resolved.startswith("pallas") else resolved


def _impl(backend: str, name: str, interpret: bool) -> Callable:
    if backend.startswith("auto:"):
        kernel = _impl(backend[len("auto:"):], name, interpret)
        fallback = getattr(xla, name)

        def with_fallback(*args):
            try:
                return kernel(*args)
            except (ValueError, TypeError):
                return fallback(*args)

        return with_fallback
    if backend == "reference":
        return getattr(reference, name)
    if backend == "xla":
        return getattr(xla, name)
    try:
        module = importlib.import_module(f"sparsejax.ops.{backend}")
    except ImportError as err:  # pragma: no cover - depends on the installed modules
        raise ValueError(f"backend {backend!r} is not available: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:  # pragma: no cover - depends on the installed modules
        raise ValueError(f"backend {backend!r} has no `{name}`.")
    return functools.partial(fn, interpret=interpret)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_bsr(a: Any, name: str) -> BlockSparse:
    if not isinstance(a, BlockSparse):
        raise TypeError(f"`{name}` must be a sparsejax.formats.BlockSparse; got "
                        f"{type(a).__name__}.")
    return jax.tree.map(jnp.asarray, a)


def _check_dense(x: Any, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}.")
    return x


def _float0_like(x: Array) -> np.ndarray:
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _bsr_cotangent(a: BlockSparse, data: Array) -> BlockSparse:
    return a.replace(data=data.astype(a.data.dtype), indices=_float0_like(a.indices),
                     counts=_float0_like(a.counts))


# --------------------------------------------------------------------------------------------
# block-sparse products with custom VJPs
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bsr_mm(backend: str, interpret: bool, a: BlockSparse, b: Array) -> Array:
    return _impl(backend, "bsr_matmul", interpret)(a, b)


def _bsr_mm_fwd(backend, interpret, a, b):
    return _bsr_mm(backend, interpret, a, b), (a, b)


def _bsr_mm_bwd(backend, interpret, res, g):
    a, b = res
    g = jnp.asarray(g, jnp.result_type(a.data, b))
    da = _impl(backend, "sddmm", interpret)(g, b.T, a)
    db = _impl(backend, "dense_bsr_matmul", interpret)(g.T, a).T
    return _bsr_cotangent(a, da.data), db.astype(b.dtype)


_bsr_mm.defvjp(_bsr_mm_fwd, _bsr_mm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dense_bsr_mm(backend: str, interpret: bool, x: Array, a: BlockSparse) -> Array:
    return _impl(backend, "dense_bsr_matmul", interpret)(x, a)


def _dense_bsr_mm_fwd(backend, interpret, x, a):
    return _dense_bsr_mm(backend, interpret, x, a), (x, a)


def _dense_bsr_mm_bwd(backend, interpret, res, g):
    x, a = res
    g = jnp.asarray(g, jnp.result_type(x, a.data))
    dx = _impl(backend, "bsr_matmul", interpret)(a, g.T).T
    da = _impl(backend, "sddmm", interpret)(x.T, g, a)
    return dx.astype(x.dtype), _bsr_cotangent(a, da.data)


_dense_bsr_mm.defvjp(_dense_bsr_mm_fwd, _dense_bsr_mm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sddmm(backend: str, interpret: bool, a: Array, b: Array, like: BlockSparse) -> Array:
    return _impl(backend, "sddmm", interpret)(a, b, like).data


def _sddmm_fwd(backend, interpret, a, b, like):
    return _sddmm(backend, interpret, a, b, like), (a, b, like)


def _sddmm_bwd(backend, interpret, res, g):
    a, b, like = res
    gs = like.replace(data=jnp.asarray(g, jnp.result_type(a, b)))
    da = _impl(backend, "bsr_matmul", interpret)(gs, b.T)
    db = _impl(backend, "dense_bsr_matmul", interpret)(a.T, gs)
    return (da.astype(a.dtype), db.astype(b.dtype),
            _bsr_cotangent(like, jnp.zeros_like(like.data)))


_sddmm.defvjp(_sddmm_fwd, _sddmm_bwd)


def bsr_matmul(
    a: BlockSparse,
    b: Float[Array, "K ..."],
    backend: str = "auto",
    *,
    interpret: bool = False,
) -> Float[Array, "M ..."]:
    """Sparse x dense: ``A @ b`` for a BSR ``A [M, K]``.

    Args:
        a: the block-sparse left operand ``[M, K]``.
        b: dense ``[K, N]`` (or a vector ``[K]``).
        backend: ``"auto"``, ``"reference"``, ``"xla"``, ``"pallas_tpu"`` or ``"pallas_gpu"``.
        interpret: run a Pallas backend in interpret mode (CPU testing).

    Returns:
        ``[M, N]`` (or ``[M]``) in ``result_type(a.dtype, b.dtype)``, accumulated in float32.

    Raises:
        TypeError: ``a`` not a ``BlockSparse``, non-float ``b``.
        ValueError: ``b.shape[0] != K``, ``b`` not 1-D/2-D, unknown backend.
    """
    a = _check_bsr(a, "a")
    b = _check_dense(b, "b")
    backend = _dispatch(backend)
    if b.ndim not in (1, 2) or b.shape[0] != a.shape[1]:
        raise ValueError(f"`b` must have shape [K] or [K, N] with K = a.shape[1] = {a.shape[1]}; "
                         f"got {b.shape}.")
    if b.ndim == 1:
        return _bsr_mm(backend, interpret, a, b[:, None])[:, 0]
    return _bsr_mm(backend, interpret, a, b)


def dense_bsr_matmul(
    x: Float[Array, "... M"],
    a: BlockSparse,
    backend: str = "auto",
    *,
    interpret: bool = False,
) -> Float[Array, "... N"]:
    """Dense x sparse: ``x @ A`` for a BSR ``A [M, N]`` (a layer's forward pass).

    Args:
        x: dense ``[..., M]``; leading axes are flattened into one batch axis.
        a: the block-sparse right operand ``[M, N]``.
        backend: see `bsr_matmul`.
        interpret: run a Pallas backend in interpret mode.

    Returns:
        ``[..., N]`` in ``result_type(x.dtype, a.dtype)``.

    Raises:
        TypeError: ``a`` not a ``BlockSparse``, non-float ``x``.
        ValueError: ``x.shape[-1] != M``, unknown backend.
    """
    a = _check_bsr(a, "a")
    x = _check_dense(x, "x")
    backend = _dispatch(backend)
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
    backend: str = "auto",
    *,
    interpret: bool = False,
) -> BlockSparse:
    """Sampled dense-dense product: ``a @ b`` computed only at the kept blocks of ``like``.

    Args:
        a: dense ``[M, Kd]``.
        b: dense ``[Kd, N]``.
        like: a ``BlockSparse [M, N]`` whose structure (indices, counts, block shape) is used;
            its ``data`` is ignored.
        backend: see `bsr_matmul`.
        interpret: run a Pallas backend in interpret mode.

    Returns:
        A ``BlockSparse`` with ``like``'s structure holding ``(a @ b)``'s kept blocks (zero in
        padded slots), dtype ``result_type(a, b)``.

    Raises:
        TypeError: ``like`` not a ``BlockSparse``, non-float ``a``/``b``.
        ValueError: shapes that do not chain to ``like.shape``, unknown backend.
    """
    like = _check_bsr(like, "like")
    a = _check_dense(a, "a")
    b = _check_dense(b, "b")
    backend = _dispatch(backend)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or (
            a.shape[0], b.shape[1]) != like.shape:
        raise ValueError(f"`a` [M, Kd] and `b` [Kd, N] must chain to like.shape {like.shape}; "
                         f"got a {a.shape} and b {b.shape}.")
    data = _sddmm(backend, interpret, a, b, like)
    return like.replace(data=data)


# --------------------------------------------------------------------------------------------
# N:M products
# --------------------------------------------------------------------------------------------


def _check_nm_backend(backend: str) -> str:
    if backend not in _NM_BACKENDS:
        raise ValueError(f"`backend` for N:M products must be one of {_NM_BACKENDS}; "
                         f"got {backend!r}.")
    if backend == "auto":
        return "auto:pallas_gpu" if resolve_backend("auto") == "pallas_gpu" else "xla"
    return backend


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _nm_pallas_gpu(interpret: bool, w: NMSparse, x: Array) -> Array:
    """``W @ x`` (``W`` grouped along its last axis) with the Pallas GPU kernel."""
    return _impl("pallas_gpu", "nm_matmul", interpret)(w, x)


def _nm_gpu(backend: str, interpret: bool, w: NMSparse, x: Array) -> Array:
    """``W @ x`` through the Pallas GPU kernel; with ``backend="auto:pallas_gpu"`` a geometry or
    dtype the kernel rejects falls back to the XLA gather path."""
    if backend == "pallas_gpu":
        return _nm_pallas_gpu(interpret, w, x)
    try:
        return _nm_pallas_gpu(interpret, w, x)
    except (ValueError, TypeError):
        return xla.nm_matmul(w, x)


def _nm_pallas_gpu_fwd(interpret, w, x):
    return _nm_pallas_gpu(interpret, w, x), (w, x)


def _nm_pallas_gpu_bwd(interpret, res, g):
    w, x = res
    _, vjp = jax.vjp(xla.nm_matmul, w, x)
    return vjp(jnp.asarray(g, jnp.result_type(w.values, x)))


_nm_pallas_gpu.defvjp(_nm_pallas_gpu_fwd, _nm_pallas_gpu_bwd)


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
    backend: str = "auto",
    *,
    interpret: bool = False,
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
        interpret: run the Pallas kernel in interpret mode (CPU testing).

    Returns:
        ``[M, N]`` (or ``[M]``) in ``result_type(w.dtype, x.dtype)``.

    Raises:
        TypeError: ``w`` not an ``NMSparse``, non-float ``x``.
        ValueError: non-2-D ``w``, ``x.shape[0] != K``, unknown backend.
    """
    w = _check_nmsparse(w)
    x = _check_dense(x, "x")
    backend = _check_nm_backend(backend)
    k = w.shape[1]
    if x.ndim not in (1, 2) or x.shape[0] != k:
        raise ValueError(f"`x` must have shape [K] or [K, N] with K = {k}; got {x.shape}.")
    if x.ndim == 1:
        return nm_matmul(w, x[:, None], backend, interpret=interpret)[:, 0]
    if backend == "reference" or w.axis != -1:
        return reference.nm_matmul(w, x)
    if backend.endswith("pallas_gpu"):
        return _nm_gpu(backend, interpret, w, x)
    return xla.nm_matmul(w, x)


def dense_nm_matmul(
    x: Float[Array, "... K"],
    w: NMSparse,
    backend: str = "auto",
    *,
    interpret: bool = False,
) -> Float[Array, "... N"]:
    """``x @ W`` for a 2-D N:M-compressed ``W [K, N]`` (a Flax ``Dense`` kernel ``[in, out]``).

    With ``W`` compressed along axis 0 (its reduction axis, the default of
    `NMSparse.from_dense`) the ``xla`` backend gathers the kept inputs; otherwise ``W`` is
    densified.

    Args:
        x: dense ``[..., K]``.
        w: ``NMSparse`` of dense shape ``[K, N]``.
        backend: ``"auto"`` (``"pallas_gpu"`` on GPU, else ``"xla"``), ``"xla"``,
            ``"pallas_gpu"`` (runs ``(W.T @ x.T).T``) or ``"reference"``.
        interpret: run the Pallas kernel in interpret mode (CPU testing).

    Returns:
        ``[..., N]`` in ``result_type(x.dtype, w.dtype)``.

    Raises:
        TypeError: ``w`` not an ``NMSparse``, non-float ``x``.
        ValueError: non-2-D ``w``, ``x.shape[-1] != K``, unknown backend.
    """
    w = _check_nmsparse(w)
    x = _check_dense(x, "x")
    backend = _check_nm_backend(backend)
    k = w.shape[0]
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"`x` must have shape [..., K] with K = {k}; got {x.shape}.")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if backend == "reference" or w.axis != -2:
        out = reference.dense_nm_matmul(x2, w)
    elif backend.endswith("pallas_gpu"):
        out = _nm_gpu(backend, interpret, _nm_transpose(w), x2.T).T
    else:
        out = xla.dense_nm_matmul(x2, w)
    return out.reshape(*lead, w.shape[1])

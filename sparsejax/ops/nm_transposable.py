"""N:M products whose backward runs N:M too: a transposable ``W`` serves ``W x`` and ``W^T g``.

With a weight stored on a transposable N:M mask (`sparsejax.masks.nm_transposable`), the input
cotangent of ``W x`` is ``W^T g``, an N:M product over `sparsejax.formats.NMSparse.transpose`;
the weight cotangent is the dense ``g x^T`` sampled at the stored positions (the cotangent of the
kept values only, as for `sparsejax.ops.nm_matmul`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, must_be
from sparsejax.formats import NMSparse
from sparsejax.ops._dispatch import float0_like
from sparsejax.ops.api import _check_nmsparse, dense_nm_matmul, nm_matmul

__all__ = ["dense_transposable_nm_matmul", "transposable_nm_matmul"]


def _kept(w: NMSparse, dense: Array) -> Array:
    """``dense`` (shaped like ``w``) at ``w``'s stored positions, in ``w.values``' layout."""
    return NMSparse.from_dense(dense, w.n, w.m, w.axis, mask=w.mask()).values.astype(w.dtype)


@jax.custom_vjp
def _wx(w: NMSparse, x: Array) -> Array:
    return nm_matmul(w, x)


def _wx_fwd(w, x):
    return nm_matmul(w, x), (w, x)


def _wx_bwd(res, g):
    w, x = res
    dx = nm_matmul(w.transpose(), g).astype(x.dtype)  # W^T g, N:M along W's output axis
    dw = w.replace(values=_kept(w, g @ x.T), indices=float0_like(w.indices))
    return dw, dx


_wx.defvjp(_wx_fwd, _wx_bwd)


@jax.custom_vjp
def _xw(x: Array, w: NMSparse) -> Array:
    return dense_nm_matmul(x, w)


def _xw_fwd(x, w):
    return dense_nm_matmul(x, w), (x, w)


def _xw_bwd(res, g):
    x, w = res
    dx = dense_nm_matmul(g, w.transpose()).astype(x.dtype)  # g W^T, N:M along W's output axis
    dw = w.replace(values=_kept(w, x.T @ g), indices=float0_like(w.indices))
    return dx, dw


_xw.defvjp(_xw_fwd, _xw_bwd)


def _check(w: NMSparse, axis: int, layout: str) -> NMSparse:
    w = _check_nmsparse(w)
    if w.axis != axis:
        raise ValueError(must_be("w", f"compressed along axis {axis + 2} ({layout})",
                                 f"axis {w.axis + 2}", raw=True))
    if w.shape[0] % w.m or w.shape[1] % w.m:
        raise ValueError(must_be("w", f"of a shape divisible by m={w.m} on both axes (a "
                                 "transposable mask)", f"shape {w.shape}", raw=True))
    return w


def transposable_nm_matmul(w: NMSparse, x: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``W @ x`` for ``W [M, K]`` on a transposable N:M mask, grouped along ``K`` (``axis=1``, the
    torch ``[out, in]`` layout); the backward's ``W^T g`` is an N:M product too.

    Args:
        w: 2-D ``NMSparse`` from ``NMSparse.from_dense(w, n, m, axis=1,
            mask=masks.nm_transposable(scores, n, m))``.
        x: dense ``[K, N]``.

    Returns:
        ``[M, N]``; gradients: the kept values' and ``x``'s, equal to those of the dense masked
        product.

    Raises:
        TypeError / ValueError: as `sparsejax.ops.nm_matmul`; ``w`` not grouped along axis 1 or
            not divisible by ``m`` on both axes. The transposability itself is checked by
            ``w.transpose()`` (eagerly when concrete).
    """
    w = _check(w, -1, "the [out, in] layout; use dense_transposable_nm_matmul for [in, out]")
    x = check_float_array(jnp.asarray(x), "x", min_ndim=2)
    if x.ndim != 2 or x.shape[0] != w.shape[1]:
        raise ValueError(must_be("x", f"of shape [K, N] with K = {w.shape[1]}", f"shape {x.shape}",
                                 raw=True))
    return _wx(w, x)


def dense_transposable_nm_matmul(x: Float[Array, "B K"], w: NMSparse) -> Float[Array, "B N"]:
    """``x @ W`` for ``W [K, N]`` on a transposable N:M mask, grouped along ``K`` (``axis=0``, a
    Flax ``[in, out]`` kernel); the backward's ``g @ W^T`` is an N:M product too.

    Args:
        x: dense ``[B, K]``.
        w: 2-D ``NMSparse`` from ``NMSparse.from_dense(kernel, n, m, axis=0,
            mask=masks.nm_transposable(scores, n, m))``.

    Returns:
        ``[B, N]``; gradients as `transposable_nm_matmul`.

    Raises:
        TypeError / ValueError: as `sparsejax.ops.dense_nm_matmul`; ``w`` not grouped along axis
            0 or not divisible by ``m`` on both axes.
    """
    w = _check(w, -2, "the [in, out] layout; use transposable_nm_matmul for [out, in]")
    x = check_float_array(jnp.asarray(x), "x", min_ndim=2)
    if x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(must_be("x", f"of shape [B, K] with K = {w.shape[0]}", f"shape {x.shape}",
                                 raw=True))
    return _xw(x, w)

"""Bidirectional N:M masks (BDWP, Zhang et al. 2023): N:M in the forward *and* the backward product.

A layer ``y = x @ W`` (Flax ``[in, out]`` kernel) trains with two masks of ``W``:

* the forward mask, N:M along ``in`` (the forward reduction axis): ``y = x @ (W * M_f)``;
* the backward mask, N:M along ``out`` (the reduction axis of the input gradient):
  ``dx = g @ (W * M_b)^T``;
* the weight gradient is the dense ``x^T g`` (straight through to every weight, as in SR-STE), so
  pruned weights keep learning and the masks can change.

Both products are N:M along their reduction axis, so both can run on sparse hardware. A
transposable mask (`sparsejax.masks.nm_transposable`) is the single-mask alternative:
``M_f = M_b`` is N:M along both axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax import masks as _masks
from sparsejax._checks import check_bool_array, check_float_array, check_nm, must_be

__all__ = ["bdwp_masks", "bdwp_matmul"]


def bdwp_masks(kernel: Float[Array, "K N"], n: int = 2, m: int = 4
               ) -> tuple[Bool[Array, "K N"], Bool[Array, "K N"]]:
    """BDWP's two magnitude masks of a Flax ``[in, out]`` kernel.

    Args:
        kernel: ``[K, N]`` weight; ``K`` and ``N`` divisible by ``m``.
        n: kept per group.
        m: group size.

    Returns:
        ``(forward, backward)``: ``nm(|W|, n, m, axis=0)`` (along ``in``) and
        ``nm(|W|, n, m, axis=1)`` (along ``out``).
    """
    kernel = check_float_array(kernel, "kernel", min_ndim=2)
    n, m = check_nm(n, m)
    score = jnp.abs(kernel)
    return _masks.nm(score, n, m, axis=0), _masks.nm(score, n, m, axis=1)


@jax.custom_vjp
def _bdwp(x, w, fwd, bwd):
    return x @ jnp.where(fwd, w, jnp.zeros((), w.dtype))


def _bdwp_fwd(x, w, fwd, bwd):
    return _bdwp(x, w, fwd, bwd), (x, w, bwd)


def _bdwp_bwd(res, g):
    x, w, bwd = res
    dx = g @ jnp.where(bwd, w, jnp.zeros((), w.dtype)).T
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    return dx.astype(x.dtype), (x2.T @ g2).astype(w.dtype), None, None


_bdwp.defvjp(_bdwp_fwd, _bdwp_bwd)


def bdwp_matmul(x: Float[Array, "... K"], kernel: Float[Array, "K N"],
                forward_mask: Bool[Array, "K N"] | None = None,
                backward_mask: Bool[Array, "K N"] | None = None, *, n: int = 2,
                m: int = 4) -> Float[Array, "... N"]:
    """``x @ W`` with BDWP's gradients: forward ``x @ (W * M_f)``, input gradient
    ``g @ (W * M_b)^T``, weight gradient the dense ``x^T g``.

    Use it inside the loss in place of ``x @ kernel``; without masks they are `bdwp_masks` of the
    current kernel (re-selected every step, as the reference does), computed without gradient.

    Args:
        x: ``[..., K]`` inputs.
        kernel: ``[K, N]`` dense weight (Flax ``[in, out]`` layout).
        forward_mask: bool ``[K, N]``, N:M along axis 0, or ``None``.
        backward_mask: bool ``[K, N]``, N:M along axis 1, or ``None``.
        n: kept per group when the masks are computed here.
        m: group size when the masks are computed here.

    Returns:
        ``[..., N]``.

    Raises:
        TypeError / ValueError: non-float ``x``/``kernel``, masks not bool or not of the kernel's
            shape, only one mask given, ``x.shape[-1] != K``.
    """
    kernel = check_float_array(kernel, "kernel", min_ndim=2)
    x = check_float_array(x, "x", min_ndim=1)
    if kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(must_be("x", f"of shape [..., {kernel.shape[0]}] for a kernel of shape "
                                 f"{kernel.shape}", f"shape {x.shape}", raw=True))
    if (forward_mask is None) != (backward_mask is None):
        raise ValueError(must_be("backward_mask", "given together with forward_mask (or both "
                                 "None)", "only one of them", raw=True))
    if forward_mask is None:
        forward_mask, backward_mask = bdwp_masks(jax.lax.stop_gradient(kernel), n, m)
    for name, mk in (("forward_mask", forward_mask), ("backward_mask", backward_mask)):
        mk = check_bool_array(jnp.asarray(mk), name)
        if mk.shape != kernel.shape:
            raise ValueError(must_be(name, f"of the kernel's shape {kernel.shape}",
                                     f"shape {mk.shape}", raw=True))
    return _bdwp(x, kernel, jnp.asarray(forward_mask), jnp.asarray(backward_mask))

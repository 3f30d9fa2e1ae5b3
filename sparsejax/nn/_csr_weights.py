"""The CSR weight of `SparseLinear` / `SparseConv1x1` (shared by the NNX and Equinox layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax import masks
from sparsejax._checks import check_bool_array, check_choice, check_float_array, must_be
from sparsejax.formats import CSR
from sparsejax.nn._weights import check_features, init_kernel

DATA_FORMATS = ("NHWC", "NCHW")


def build_csr(in_features: int, out_features: int, density: float | None,
              mask: Bool[Array, "in out"] | None, kernel: Float[Array, "in out"] | None,
              key: jax.Array | None, dtype) -> CSR:
    """The CSR weight ``[out, in]`` (rows = output units) of ``kernel [in, out]`` kept at
    ``mask`` (default: a random mask of ``density``, or ``kernel``'s nonzeros)."""
    check_features(in_features, out_features)
    k_mask, k_init = jax.random.split(key) if key is not None else (None, None)
    shape = (in_features, out_features)
    if mask is None and kernel is None:
        if density is None or not 0.0 < float(density) <= 1.0:
            raise ValueError(must_be("density", "in (0, 1] (or pass `mask` / `kernel`)",
                                     density))
        if k_mask is None:
            raise ValueError("a random mask (`density=`) needs a PRNG key / rngs.")
        mask = masks.random(k_mask, shape, 1.0 - float(density))
    if mask is not None:
        mask = check_bool_array(jnp.asarray(mask), "mask")
        if mask.shape != shape:
            raise ValueError(must_be("mask", f"of the kernel's shape [in, out] = {shape}",
                                     f"shape {mask.shape}", raw=True))
    if kernel is None:
        if k_init is None:
            raise ValueError("initialising the kernel needs a PRNG key / rngs (or pass `kernel`).")
        kernel = init_kernel(k_init, in_features, out_features, float(jnp.mean(mask)), dtype)
    kernel = check_float_array(jnp.asarray(kernel), "kernel")
    if kernel.shape != shape:
        raise ValueError(must_be("kernel", f"of shape [in, out] = {shape}",
                                 f"shape {kernel.shape}", raw=True))
    if mask is None:
        return CSR.from_dense(kernel.T)
    return CSR.from_mask(kernel.T, mask.T)


def check_data_format(data_format: str) -> str:
    return check_choice(data_format, "data_format", DATA_FORMATS)

"""Building the compressed kernel of a sparse linear layer (shared by the NNX and Equinox layers)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax import masks
from sparsejax._checks import (
    check_divisible,
    check_float,
    check_int,
    check_nm,
    is_concrete,
    must_be,
)
from sparsejax.formats import BlockSparse, NMSparse


def init_kernel(key: jax.Array, in_features: int, out_features: int, sparsity: float,
                dtype) -> Float[Array, "in out"]:
    """LeCun-normal init scaled to the kept fan-in (``(1 - sparsity) * in_features``)."""
    std = 1.0 / math.sqrt(max(1.0, (1.0 - sparsity) * in_features))
    return jax.random.normal(key, (in_features, out_features), dtype) * std


def check_features(in_features: int, out_features: int) -> None:
    check_int(in_features, "in_features", minimum=1)
    check_int(out_features, "out_features", minimum=1)


def _check_kernel(kernel: Array, in_features: int, out_features: int) -> Array:
    kernel = jnp.asarray(kernel)
    if kernel.shape != (in_features, out_features):
        raise ValueError(f"`kernel` must have shape [in, out] = {(in_features, out_features)}; "
                         f"got {kernel.shape}.")
    return kernel


def build_bsr(in_features, out_features, block_shape, sparsity, block_mask, kernel, key,
              dtype) -> BlockSparse:
    """The `BlockSparse` kernel ``[in, out]`` of a block-sparse layer (see its docstring)."""
    check_features(in_features, out_features)
    bm, bn = block_shape
    if in_features % bm or out_features % bn:
        raise ValueError(f"[in, out] = {(in_features, out_features)} must be divisible by "
                         f"`block_shape` {tuple(block_shape)}.")
    k_mask, k_init = jax.random.split(key) if key is not None else (None, None)
    if block_mask is None:
        if sparsity is None:
            raise ValueError(must_be("sparsity", "a float in [0, 1) when no `block_mask` is given",
                                     None))
        sparsity = check_float(sparsity, "sparsity", minimum=0.0, maximum=1.0,
                               exclusive_maximum=True)
        if k_mask is None:
            raise ValueError("a random block mask (`sparsity=`) needs a PRNG key / rngs.")
        block_mask = masks.random_mask(k_mask, (in_features // bm, out_features // bn), sparsity)
    block_mask = jnp.asarray(block_mask)
    if kernel is None:
        if k_init is None:
            raise ValueError("initialising the kernel needs a PRNG key / rngs (or pass `kernel`).")
        dropped = 1.0 - float(jnp.mean(block_mask))
        kernel = init_kernel(k_init, in_features, out_features, dropped, dtype)
    kernel = _check_kernel(kernel, in_features, out_features)
    return BlockSparse.from_dense(kernel, block_shape, block_mask)


def _nm_kernel(in_features, out_features, n, m, kernel, key, dtype) -> Array:
    """The dense initial kernel of an N:M layer: ``kernel`` checked, or a fresh one."""
    check_features(in_features, out_features)
    if kernel is None:
        if key is None:
            raise ValueError("initialising the kernel needs a PRNG key / rngs (or pass `kernel`).")
        kernel = init_kernel(key, in_features, out_features, 1.0 - n / m, dtype)
    return _check_kernel(kernel, in_features, out_features)


def build_nm(in_features, out_features, n, m, kernel, mask, key, dtype) -> NMSparse:
    """The `NMSparse` kernel ``[in, out]`` (grouped along ``in``) of an N:M layer."""
    kernel = _nm_kernel(in_features, out_features, n, m, kernel, key, dtype)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != kernel.shape:
            raise ValueError(f"`mask` must have the kernel's shape [in, out] = {kernel.shape}; "
                             f"got {mask.shape}.")
    return NMSparse.from_dense(kernel, n, m, axis=0, mask=mask)


def transposable_nm(in_features, out_features, n, m, kernel, mask, key, dtype):
    """``(kernel, mask)`` of a transposable N:M layer: the mask `sparsejax.masks.nm_transposable`
    of ``|kernel|`` by default; a given concrete mask must be N:M along both axes."""
    kernel = _nm_kernel(in_features, out_features, n, m, kernel, key, dtype)
    if out_features % m:
        raise ValueError(f"`out_features` must be a multiple of m={m} for a transposable N:M "
                         f"kernel; got {out_features}.")
    if mask is None:
        return kernel, masks.nm_transposable(jnp.abs(kernel), n, m)
    mask = jnp.asarray(mask)
    if mask.shape == kernel.shape and is_concrete(mask) and not bool(
            masks.satisfies_nm(mask, n, m, axis=1)):
        raise ValueError(f"`mask` must keep at most n={n} of every m={m} along out as well for a "
                         "transposable kernel (sparsejax.masks.nm_transposable); it does not.")
    return kernel, mask


def bdwp_kernel(in_features, out_features, n, m, kernel, key, dtype) -> Array:
    """The dense kernel ``[in, out]`` of a BDWP layer: ``in`` and ``out`` multiples of ``m`` (the
    forward mask groups along ``in``, the backward mask along ``out``)."""
    n, m = check_nm(n, m)
    kernel = _nm_kernel(in_features, out_features, n, m, kernel, key, dtype)
    check_divisible(in_features, m, "in_features", "m")
    check_divisible(out_features, m, "out_features", "m")
    return kernel


def init_bias(bias, use_bias: bool, out_features: int, dtype) -> Array | None:
    """The bias ``[out]``: ``bias`` if given, else zeros; ``None`` without ``use_bias``."""
    if not use_bias:
        return None
    if bias is None:
        return jnp.zeros((out_features,), dtype)
    bias = jnp.asarray(bias)
    if bias.shape != (out_features,):
        raise ValueError(f"`bias` must have shape [out] = {(out_features,)}; got {bias.shape}.")
    return bias

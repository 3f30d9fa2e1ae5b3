"""The prologue shared by every Pallas kernel (`sparsejax.ops` and `sparsejax.attention`).

Argument checks, the block geometry of a `sparsejax.BlockSparse` operand, tile choice and
zero padding, written once. Limitations of a kernel (a dtype it does not implement, a tile Triton
cannot lower) raise the `sparsejax._backend.NotSupportedError` subclasses, which
``backend="auto"`` answers by falling back to ``xla``; every other check raises a plain
``TypeError``/``ValueError``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparsejax._backend import UnsupportedDtypeError, UnsupportedShapeError
from sparsejax._checks import check_int, must_be

KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
"""Dtypes every Pallas kernel implements (accumulation is float32)."""


def check_block_sparse(a: Any, name: str) -> None:
    """``TypeError`` unless ``a`` looks like an unbatched `sparsejax.BlockSparse`."""
    for attr in ("data", "indices", "counts", "shape", "block_shape"):
        if not hasattr(a, attr):
            raise TypeError(must_be(name, "a sparsejax.formats.BlockSparse",
                                    f"{type(a).__name__} (missing attribute {attr!r})", raw=True))
    if a.data.ndim != 4:
        raise ValueError(must_be(f"{name}.data", "of rank 4 [n_block_rows, max_blocks_per_row, "
                                 "bm, bn] (batch BlockSparse operands with jax.vmap)",
                                 f"shape {tuple(a.data.shape)}", raw=True))


def check_rank(x: Any, name: str, ndim: int = 2) -> None:
    """``TypeError`` for a non-array, ``ValueError`` for another rank."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(must_be(name, "an array", type(x).__name__, raw=True))
    if x.ndim != ndim:
        raise ValueError(must_be(name, f"an array of rank {ndim}", f"shape {tuple(x.shape)}",
                                 raw=True))


def result_dtype(name: str, *dtypes: Any) -> jnp.dtype:
    """Common dtype of the operands; `UnsupportedDtypeError` outside `KERNEL_DTYPES`."""
    for dt in dtypes:
        if jnp.dtype(dt) not in KERNEL_DTYPES:
            raise UnsupportedDtypeError(must_be(f"{name} operands", "float32, bfloat16 or "
                                                "float16 (the Pallas kernels' dtypes)",
                                                f"dtype {jnp.dtype(dt)}", raw=True))
    return jnp.dtype(jnp.result_type(*dtypes))


def check_tile(value: Any, name: str) -> int:
    """A tile size: a Python int >= 1."""
    return check_int(value, name, minimum=1)


def check_pow2(value: int, name: str) -> None:
    """`UnsupportedShapeError` unless ``value`` is a power of two >= 16 (Triton's ``tl.dot``)."""
    if value < 16 or value & (value - 1):
        raise UnsupportedShapeError(must_be(name, "a power of two >= 16 (Triton's tl.dot)",
                                            value))


def tile_and_padded(length: int, tile: int) -> tuple[int, int]:
    """Tile size and padded length: the full length if it fits in one tile, else ``tile``."""
    if length <= tile:
        return max(length, 1), max(length, 1)
    return tile, -(-length // tile) * tile


def pow2_tile(length: int, tile: int, name: str) -> tuple[int, int]:
    """Power-of-two tile (>= 16, at most ``tile``) covering a small ``length``, and the padded
    length it divides (the GPU kernels' `tile_and_padded`)."""
    check_pow2(tile, name)
    t = 16
    while t < min(length, tile):
        t *= 2
    return t, -(-max(length, 1) // t) * t


def pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Zero-pad ``x`` at the end of every axis up to ``shape``."""
    pads = [(0, t - s) for s, t in zip(x.shape, shape, strict=True)]
    if any(p for _, p in pads):
        return jnp.pad(x, pads)
    return x


def pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Zero-pad ``x`` along ``axis`` up to ``size``."""
    shape = list(x.shape)
    shape[axis] = size
    return pad_to(x, tuple(shape))


class Geometry(NamedTuple):
    """Block geometry of a BlockSparse ``[M, K]``: ``R`` block rows, ``S`` slots, ``(bm, bn)``
    blocks and the block-padded sizes ``Mp``, ``Kp``."""

    m: int
    k: int
    nbr: int
    maxb: int
    bm: int
    bn: int
    mp: int
    kp: int


def geometry(a: Any, name: str = "a") -> Geometry:
    """Check ``a`` (`check_block_sparse`) and return its `Geometry`."""
    check_block_sparse(a, name)
    m, k = (int(d) for d in a.shape)
    nbr, maxb, bm, bn = (int(d) for d in a.data.shape)
    if tuple(int(d) for d in a.block_shape) != (bm, bn):
        raise ValueError(
            f"{name}.block_shape={tuple(a.block_shape)} does not match "
            f"{name}.data.shape[2:]={(bm, bn)}."
        )
    nbc = -(-k // bn)
    if nbr != -(-m // bm):
        raise ValueError(
            f"{name}.data.shape[0]={nbr} block rows does not match shape {(m, k)} with block "
            f"{(bm, bn)} (expected {-(-m // bm)})."
        )
    return Geometry(m, k, nbr, maxb, bm, bn, nbr * bm, nbc * bn)


def flat_index(a: Any) -> tuple[jax.Array, jax.Array]:
    """The scalar-prefetch operands of a BlockSparse: flattened int32 ``indices`` and ``counts``."""
    return a.indices.reshape(-1).astype(jnp.int32), a.counts.astype(jnp.int32)


def check_spmm(a: Any, x: Any, block_n: Any) -> tuple[int, int, int, jnp.dtype, int]:
    """The prologue of a CSR SpMM kernel ``a [M, K] @ x [K, N]`` (`sparsejax.formats.CSR`):
    ``(M, K, N, dtype, block_n)``; errors for a non-2-D ``x``, shapes that do not chain, a bad
    tile or a dtype outside `KERNEL_DTYPES`."""
    check_rank(x, "x")
    m, k = (int(d) for d in a.shape)
    if x.shape[0] != k:
        raise ValueError(must_be("x", f"of shape [K, N] with K = a.shape[1] = {k}",
                                 f"shape {tuple(x.shape)}", raw=True))
    block_n = check_tile(block_n, "block_n")
    dtype = result_dtype("csr_matmul", a.data.dtype, x.dtype)
    return m, k, int(x.shape[1]), dtype, block_n


__all__ = [
    "KERNEL_DTYPES",
    "Geometry",
    "check_block_sparse",
    "check_pow2",
    "check_rank",
    "check_spmm",
    "check_tile",
    "flat_index",
    "geometry",
    "pad_axis",
    "pad_to",
    "pow2_tile",
    "result_dtype",
    "tile_and_padded",
]

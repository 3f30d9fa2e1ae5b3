"""Mask layouts: the pattern a mask follows (detected from the mask) and its compressed size."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import _is_none, check_mask_tree, check_same_structure
from sparsejax.select import unwrap_variables

__all__ = ["detect_pattern", "is_array", "is_bool", "is_float", "is_key", "leaf_nbytes", "mask_pairs",
           "nbytes"]

PyTree = Any


def is_array(x: Any) -> bool:
    """A JAX or NumPy array."""
    return isinstance(x, jax.Array | np.ndarray)


def is_float(x: Any) -> bool:
    """A floating-point array."""
    return is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)


def is_bool(x: Any) -> bool:
    """A bool array."""
    return is_array(x) and x.dtype == jnp.bool_


def is_key(x: Any) -> bool:
    """A typed PRNG key array."""
    return is_array(x) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _runs(mask: np.ndarray) -> tuple[int, ...]:
    """Per axis, the largest run length ``b`` such that ``mask`` is constant on runs of ``b``
    starting at 0 (the gcd of the positions where it changes; the whole axis if it never does)."""
    out = []
    for ax in range(mask.ndim):
        d = mask.shape[ax]
        moved = np.moveaxis(mask, ax, 0).reshape(d, -1)
        pos = np.nonzero((moved[1:] != moved[:-1]).any(axis=1))[0] + 1
        out.append(int(np.gcd.reduce(pos)) if pos.size else d)
    return tuple(out)


def _nm_of(mask: np.ndarray) -> tuple[int, int, int] | None:
    for m in (2, 4, 8, 16):
        for axis in range(mask.ndim):
            if mask.shape[axis] % m:
                continue
            moved = np.moveaxis(mask, axis, -1)
            counts = moved.reshape(*moved.shape[:-1], -1, m).sum(-1)
            n = counts.flat[0]
            if n < m and (counts == n).all():
                return int(n), m, axis
    return None


def detect_pattern(mask: np.ndarray) -> tuple[str, Any]:
    """``(kind, detail)``: ``("dense", None)``, ``("empty", None)``, ``("channel", axis)``,
    ``("nm", (n, m, axis))``, ``("block", tile_shape)`` or ``("unstructured", None)``."""
    if mask.size == 0 or mask.all():
        return "dense", None
    if not mask.any():
        return "empty", None
    runs = _runs(mask)
    changing = [ax for ax, (b, d) in enumerate(zip(runs, mask.shape)) if b < d]
    if mask.ndim >= 2 and len(changing) == 1:
        return "channel", changing[0]
    nm = _nm_of(mask)
    if nm is not None:
        return "nm", nm
    if math.prod(runs) > 1:
        return "block", runs
    return "unstructured", None


def _label(kind: str, detail: Any) -> str:
    if kind == "channel":
        return f"channel (axis {detail})"
    if kind == "nm":
        return f"{detail[0]}:{detail[1]} (axis {detail[2]})"
    if kind == "block":
        return f"block {tuple(detail)}"
    return kind


def leaf_nbytes(x, m) -> tuple[int, int, str]:
    """``(dense_bytes, compressed_bytes, pattern label)`` of one leaf under its mask."""
    item = np.dtype(x.dtype).itemsize
    dense = x.size * item
    if m is None:
        return dense, dense, "dense"
    mk = np.asarray(m)
    kept = int(mk.sum())
    kind, detail = detect_pattern(mk)
    if kind == "dense":
        return dense, dense, "dense"
    if kind == "empty":
        return dense, 0, "empty"
    if kind == "nm":  # NMSparse: kept values + one uint8 index each
        return dense, kept * (item + 1), _label(kind, detail)
    if kind == "channel":  # kept slices + one int32 index per kept channel
        others = tuple(i for i in range(mk.ndim) if i != detail)
        return dense, kept * item + 4 * int(mk.any(axis=others).sum()), _label(kind, detail)
    if kind == "block":  # BSR: kept values + int32 index per kept tile + int32 count per tile row
        origins = mk[tuple(slice(None, None, b) for b in detail)]
        rows = math.prod(origins.shape[:-1])
        return dense, kept * item + 4 * int(origins.sum()) + 4 * rows, _label(kind, detail)
    return dense, kept * item + math.ceil(x.size / 8), "unstructured"  # values + bitmap


def mask_pairs(params: PyTree, masks: PyTree | None) -> list[tuple[tuple, Any, Any]]:
    """``(path, leaf, mask)`` for every leaf of ``params`` (mask ``None`` without ``masks``)."""
    params = unwrap_variables(params)
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]
    if masks is None:
        return [(p, x, None) for p, x in flat]
    masks = unwrap_variables(masks)
    check_same_structure(params, masks, "masks")
    check_mask_tree(masks)
    return [(p, x, m) for (p, x), m in zip(flat, jax.tree.leaves(masks, is_leaf=_is_none))]


def nbytes(params: PyTree, masks: PyTree | None = None) -> tuple[int, int]:
    """``(dense_bytes, compressed_bytes)`` of the array leaves of ``params`` under ``masks``.

    The compressed size follows `summary`'s per-pattern layouts; unmasked leaves (and integer
    leaves) count dense; PRNG key leaves are skipped.
    """
    dense = sparse = 0
    for _, x, m in mask_pairs(params, masks):
        if is_array(x) and not is_key(x):
            d, s, _ = leaf_nbytes(x, m)
            dense, sparse = dense + d, sparse + s
    return dense, sparse

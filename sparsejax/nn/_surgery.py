"""Model surgery shared by the Flax NNX and Equinox helpers: mask lookup and format checks."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sparsejax._checks import _is_none, check_int
from sparsejax.select import path_str

FORMATS = ("nm", "block", "csr")


def check_format(format: Any, n: Any, m: Any, block_shape: Any) -> dict[str, Any]:
    """Validate ``format`` and its arguments; the keyword arguments of the sparse layer."""
    if format == "csr":  # unstructured: any mask fits
        return {}
    if format == "nm":
        n, m = check_int(n, "n", minimum=0), check_int(m, "m", minimum=1)
        if n > m:
            raise ValueError(f"`n` must be at most m={m}; got {n}.")
        return {"n": n, "m": m}
    if format == "block":
        if block_shape is None:
            raise ValueError("`block_shape` must be given for format='block' (a pair of positive "
                             "ints, e.g. (32, 32)); got None.")
        if not isinstance(block_shape, tuple | list) or len(block_shape) != 2:
            raise ValueError(f"`block_shape` must be a pair of positive ints; got {block_shape!r}.")
        return {"block_shape": tuple(check_int(b, "block_shape", minimum=1) for b in block_shape)}
    raise ValueError(f"`format` must be one of {FORMATS}; got {format!r}.")


def mask_table(masks: Any) -> dict[str, Any]:
    """``{slash path: mask}`` for the non-``None`` leaves of a mask tree (or a flat dict)."""
    leaves = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)[0]
    return {path_str(p): x for p, x in leaves if x is not None}


def join(path: tuple, name: str) -> str:
    """The slash path of attribute ``name`` of the module at ``path``."""
    return "/".join([*(str(p) for p in path), name])


def concrete_mask(key: str, mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as a numpy bool array of ``shape``; clear errors otherwise."""
    if isinstance(mask, jax.core.Tracer):
        raise TypeError(f"`masks['{key}']` must be a concrete bool array (convert models outside "
                        f"jit); got a traced value.")
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"`masks['{key}']` must be a bool array; got dtype {arr.dtype}.")
    if arr.shape != tuple(shape):
        raise ValueError(f"`masks['{key}']` must have the weight's shape {tuple(shape)}; got "
                         f"{arr.shape}.")
    return arr


def sparse_kwargs(key: str, mask: np.ndarray, fmt: str, spec: dict[str, Any],
                  axis_hint: int) -> dict[str, Any]:
    """The sparse layer's keyword arguments for a kernel ``[in, out]`` kept where ``mask``.

    Raises a ``ValueError`` naming ``masks[key]`` when the mask does not fit the format: N:M
    needs at most ``n`` kept in every group of ``m`` along ``in``; block needs a mask constant on
    every block. ``axis_hint`` is the model's input axis, quoted in the N:M message.
    """
    k_in, k_out = mask.shape
    if fmt == "csr":
        return {"mask": mask}
    if fmt == "nm":
        n, m = spec["n"], spec["m"]
        if k_in % m:
            raise ValueError(f"`masks['{key}']` must have an input size divisible by m={m} for "
                             f"format='nm'; got {k_in}.")
        most = int(mask.reshape(k_in // m, m, k_out).sum(1).max(initial=0))
        if most > n:
            raise ValueError(
                f"`masks['{key}']` must keep at most n={n} of every m={m} entries along the input "
                f"axis for format='nm' (compute_masks(..., 'nm', n={n}, m={m}, axis={axis_hint})); "
                f"got a group keeping {most}.")
        return {**spec, "mask": mask}
    bm, bn = spec["block_shape"]
    if k_in % bm or k_out % bn:
        raise ValueError(f"`masks['{key}']` must have a shape [in, out] divisible by "
                         f"block_shape={(bm, bn)} for format='block'; got {(k_in, k_out)}.")
    tiles = mask.reshape(k_in // bm, bm, k_out // bn, bn).sum((1, 3))
    partial = int(((tiles > 0) & (tiles < bm * bn)).sum())
    if partial:
        raise ValueError(
            f"`masks['{key}']` must keep whole {bm}x{bn} blocks for format='block' (a block mask "
            f"from compute_masks(..., 'block', block_shape={(bm, bn)})); got {partial} of "
            f"{tiles.size} blocks partly kept.")
    return {"block_shape": (bm, bn), "block_mask": tiles > 0}


def check_all_used(table: dict[str, Any], layer: str) -> None:
    """Raise if masks were left over: leaves that are not the weight of a ``layer``."""
    if table:
        raise ValueError(f"`masks` must only mask the weights of {layer} layers (to_sparse converts "
                         f"those; restrict the masks with where=...); got masks for "
                         f"{sorted(table)}.")

"""Shared argument checks and layout helpers of the per-layer one-shot methods."""

from __future__ import annotations

from typing import Any

import jax

from sparsejax._checks import (
    check_divisible,
    check_float_array,
    check_nm,
    check_sparsity,
    is_concrete,
    must_be,
    normalize_axis,
)
from sparsejax.oneshot.stats import LayerStats

AXIS_HELP = ("given: the input-feature (reduction) axis of the weight, 0 for a Flax [in, out] "
             "kernel, 1 for an Equinox or torch [out, in] weight (nothing tells the two layouts "
             "apart on a square weight, so there is no default)")


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """The required input axis of a weight of rank ``ndim``, non-negative."""
    if axis is None:
        raise ValueError(must_be(name, AXIS_HELP, None))
    return normalize_axis(axis, ndim, name)


def check_weight(w: Any, axis: Any) -> tuple[jax.Array, int]:
    """A 2-D float weight and its non-negative input axis (required)."""
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(must_be("w", "a 2-D weight ([in, out] with axis=0, [out, in] with "
                                 "axis=1)", f"shape {tuple(w.shape)}", raw=True))
    return w, check_axis(axis, 2)


def check_stats(stats: Any, w: jax.Array, axis: int, *, gram: bool = False) -> LayerStats:
    """``stats`` is a `LayerStats` over ``w.shape[axis]`` features (with a Gram if ``gram``)."""
    if not isinstance(stats, LayerStats):
        raise TypeError(must_be("stats", "a sparsejax.oneshot.LayerStats", type(stats).__name__,
                                raw=True))
    if stats.features != w.shape[axis]:
        raise ValueError(must_be("stats", f"statistics of w.shape[{axis}] = {w.shape[axis]} "
                                 f"input features (axis={axis})",
                                 f"statistics of {stats.features} features", raw=True))
    if is_concrete(stats.count) and int(stats.count) == 0:
        raise ValueError(must_be("stats", "statistics of at least one calibration token",
                                 "statistics of 0 tokens (an empty batch, or every token masked "
                                 "out by `where`)", raw=True))
    if gram and stats.gram is None:
        raise ValueError(must_be("stats", "statistics with the Gram matrix X^T X for this method "
                                 "(LayerStats.from_inputs(x, gram=True))",
                                 "statistics made with gram=False", raw=True))
    return stats


def check_pattern(sparsity: Any, n: Any, m: Any, w: jax.Array,
                  axis: int) -> tuple[Any, int | None, int | None]:
    """Exactly one of ``sparsity`` or ``(n, m)``; ``m`` divides the input axis."""
    if sparsity is not None and (n is not None or m is not None):
        raise ValueError(must_be("sparsity", "None when `n` and `m` are given (unstructured or N:M, "
                                 "not both)", f"sparsity={sparsity!r}, n={n!r}, m={m!r}", raw=True))
    if sparsity is not None:
        return check_sparsity(sparsity), None, None
    if n is None or m is None:
        raise ValueError(must_be("sparsity", "a float in [0, 1], or None with both `n` and `m` "
                                 "given (N:M)", f"sparsity=None, n={n!r}, m={m!r}", raw=True))
    n, m = check_nm(n, m)
    check_divisible(w.shape[axis], m, f"w.shape[{axis}]", "m")
    return None, n, m


def to_rows(w: jax.Array, axis: int) -> jax.Array:
    """The ``[out, in]`` view (one row per output) of a weight with input axis ``axis``."""
    return w.T if axis == 0 else w

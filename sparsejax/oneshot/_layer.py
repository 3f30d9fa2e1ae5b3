"""Shared argument checks and layout helpers of the per-layer one-shot methods."""

from __future__ import annotations

from typing import Any

import jax

from sparsejax._checks import (
    check_divisible,
    check_float_array,
    check_nm,
    check_sparsity,
    must_be,
    normalize_axis,
)
from sparsejax.oneshot.stats import LayerStats


def check_weight(w: Any, in_axis: Any) -> tuple[jax.Array, int]:
    """A 2-D float weight and its non-negative input axis."""
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(must_be("w", "a 2-D weight ([in, out] with in_axis=0, [out, in] with "
                                 "in_axis=1)", f"shape {tuple(w.shape)}", raw=True))
    return w, normalize_axis(in_axis, 2, "in_axis")


def check_stats(stats: Any, w: jax.Array, in_axis: int, *, gram: bool = False) -> LayerStats:
    """``stats`` is a `LayerStats` over ``w.shape[in_axis]`` features (with a Gram if ``gram``)."""
    if not isinstance(stats, LayerStats):
        raise TypeError(must_be("stats", "a sparsejax.oneshot.LayerStats", type(stats).__name__,
                                raw=True))
    if stats.features != w.shape[in_axis]:
        raise ValueError(must_be("stats", f"statistics of w.shape[{in_axis}] = {w.shape[in_axis]} "
                                 f"input features (in_axis={in_axis})",
                                 f"statistics of {stats.features} features", raw=True))
    if gram and stats.gram is None:
        raise ValueError(must_be("stats", "statistics with the Gram matrix X^T X for this method "
                                 "(LayerStats.from_inputs(x, gram=True))",
                                 "statistics made with gram=False", raw=True))
    return stats


def check_pattern(sparsity: Any, n: Any, m: Any, w: jax.Array,
                  in_axis: int) -> tuple[Any, int | None, int | None]:
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
    check_divisible(w.shape[in_axis], m, f"w.shape[{in_axis}]", "m")
    return None, n, m


def to_rows(w: jax.Array, in_axis: int) -> jax.Array:
    """The ``[out, in]`` view (one row per output) of a weight with input axis ``in_axis``."""
    return w.T if in_axis == 0 else w

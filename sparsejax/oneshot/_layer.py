"""Shared argument checks and layout helpers of the per-layer one-shot methods."""

from __future__ import annotations

from typing import Any

import jax

from sparsejax._checks import check_float_array, check_int, check_sparsity, normalize_axis
from sparsejax.oneshot.stats import LayerStats


def check_weight(w: Any, in_axis: Any) -> tuple[jax.Array, int]:
    """A 2-D float weight and its non-negative input axis."""
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"`w` must be a 2-D weight ([in, out] with in_axis=0, [out, in] with "
                         f"in_axis=1); got shape {w.shape}.")
    return w, normalize_axis(in_axis, 2, "in_axis")


def check_stats(stats: Any, w: jax.Array, in_axis: int, *, gram: bool = False) -> LayerStats:
    """``stats`` is a `LayerStats` over ``w.shape[in_axis]`` features (with a Gram if ``gram``)."""
    if not isinstance(stats, LayerStats):
        raise TypeError(f"`stats` must be a sparsejax.oneshot.LayerStats; got "
                        f"{type(stats).__name__}.")
    if stats.features != w.shape[in_axis]:
        raise ValueError(f"`stats` must describe w.shape[{in_axis}] = {w.shape[in_axis]} input "
                         f"features (in_axis={in_axis}); got statistics of {stats.features} "
                         f"features.")
    if gram and stats.gram is None:
        raise ValueError("`stats` must hold the Gram matrix X^T X for this method; got stats made "
                         "with gram=False (use LayerStats.from_inputs(x, gram=True)).")
    return stats


def check_pattern(sparsity: Any, n: Any, m: Any, w: jax.Array,
                  in_axis: int) -> tuple[Any, int | None, int | None]:
    """Exactly one of ``sparsity`` or ``(n, m)``; ``m`` divides the input axis."""
    if sparsity is not None and (n is not None or m is not None):
        raise ValueError(f"give `sparsity` (unstructured) or `n` and `m` (N:M), not both; got "
                         f"sparsity={sparsity!r}, n={n!r}, m={m!r}.")
    if sparsity is not None:
        return check_sparsity(sparsity), None, None
    if n is None or m is None:
        raise ValueError(f"give `sparsity` (unstructured) or both `n` and `m` (N:M); got "
                         f"sparsity=None, n={n!r}, m={m!r}.")
    m = check_int(m, "m", minimum=1)
    n = check_int(n, "n", minimum=0)
    if n > m:
        raise ValueError(f"`n` must be in [0, m] (it counts kept entries per group of m = {m}); "
                         f"got {n}.")
    if w.shape[in_axis] % m:
        raise ValueError(f"`w.shape[{in_axis}]` (the input axis) must be divisible by m = {m}; "
                         f"got {w.shape[in_axis]} (w shape {w.shape}).")
    return None, n, m


def to_rows(w: jax.Array, in_axis: int) -> jax.Array:
    """The ``[out, in]`` view (one row per output) of a weight with input axis ``in_axis``."""
    return w.T if in_axis == 0 else w

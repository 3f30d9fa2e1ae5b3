"""DSnoT (Zhang et al., 2024): training-free prune-and-grow on top of any one-shot mask."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

from sparsejax._checks import (
    check_bool,
    check_bool_array,
    check_divisible,
    check_float,
    check_int,
    check_positive_int,
    check_shape,
)
from sparsejax.oneshot._layer import check_stats, check_weight, to_rows
from sparsejax.oneshot.stats import LayerStats

__all__ = ["dsnot_prune", "reconstruction_error"]


def dsnot_prune(
    w: Float[Array, "a b"],
    stats: LayerStats,
    mask: Bool[Array, "a b"],
    *,
    m: int | None = None,
    axis: int | None = None,
    max_cycles: int = 50,
    update_threshold: float = 0.0,
    pow_of_var: float = 1.0,
    guard: bool = True,
    same_sign: bool = True,
) -> tuple[Float[Array, "a b"], Bool[Array, "a b"]]:
    """DSnoT: swap pruned and kept weights of each output to cancel its expected output shift.

    Follows ``prune_DSnoT`` of zyxxmu/DSnoT. For output ``i`` the expected reconstruction error is
    ``e_i = sum_{j pruned} W_ij E[x_j]``. Each cycle, every output with ``|e_i| > update_threshold``
    *grows* the pruned weight with the largest ``sign(e_i) W_ij E[x_j] / Var(x_j)**pow_of_var`` and
    *prunes* a kept one:

    * unstructured (``m=None``): the kept weight of lowest Wanda score ``|W_ij| ||X_j||`` among those
      with ``W_ij E[x_j]`` of sign opposite to ``e_i``;
    * N:M (``m`` given): the kept weight of lowest Wanda score in the grown weight's group of ``m``.

    With ``same_sign`` (default) a swap is made only while it keeps ``e_i``'s initial sign (the
    reference's N:M rule, and its unstructured rule without ``--without_same_sign``), so ``|e_i|``
    only shrinks. An output stops at the first swap refused, when no candidate of the right sign is
    left, or after ``max_cycles`` cycles. Every swap keeps the output's kept count (and each N:M
    group's), so the sparsity and pattern of ``mask`` are preserved exactly.

    Differences from the reference: ``E[x]`` is the per-*token* mean (the reference sums over the
    2048 tokens of a sample, so its default threshold 0.1 is about ``5e-5`` here; the default 0
    relies on the sign rule to stop); weights that start kept are never grown and weights that
    start pruned are never pruned; with ``guard=True`` (and a Gram in ``stats``) an output whose
    true reconstruction error ``||X (W_i - W'_i)||^2`` got worse is reverted to its starting mask,
    so DSnoT never increases the layer's error.

    Args:
        w: the *dense* weight ``[in, out]`` (``axis=0``) or ``[out, in]`` (``axis=1``).
        stats: `LayerStats` of the layer's calibration inputs.
        mask: starting mask (``True`` = kept), e.g. from `wanda`, `magnitude` or `sparsegpt`.
        m: N:M group size along the input axis when ``mask`` is N:M; ``None`` for unstructured.
        axis: the input-feature axis of ``w``.
        max_cycles: most prune-and-grow cycles (the reference's ``max_cycle_time``, 50).
        update_threshold: an output stops once ``|e_i|`` is at most this (per-token units, 0).
        pow_of_var: power of ``Var(x_j)`` dividing the growing score (reference 1).
        guard: revert outputs whose reconstruction error increased (needs ``stats.gram``).
        same_sign: refuse swaps that would flip the sign of ``e_i``.

    Returns:
        ``(w * new_mask, new_mask)`` shaped like ``w``.
    """
    w, axis = check_weight(w, axis)
    stats = check_stats(stats, w, axis, gram=guard is True)
    mask = check_bool_array(mask, "mask")
    check_shape(mask, w.shape, "mask")
    if m is not None:
        m = check_positive_int(m, "m")
        check_divisible(w.shape[axis], m, f"w.shape[{axis}]", "m")
    max_cycles = check_int(max_cycles, "max_cycles", minimum=0)
    update_threshold = check_float(update_threshold, "update_threshold", minimum=0.0)
    pow_of_var = check_float(pow_of_var, "pow_of_var", minimum=0.0)
    guard, same_sign = check_bool(guard, "guard"), check_bool(same_sign, "same_sign")
    if not guard:
        stats = dataclasses.replace(stats, gram=None)
    return _dsnot_layer(w, mask, stats, jnp.asarray(update_threshold, jnp.float32),
                        jnp.asarray(pow_of_var, jnp.float32), m, max_cycles, bool(same_sign),
                        axis)


@partial(jax.jit, static_argnums=(5, 6, 7, 8))
def _dsnot_layer(w, mask, stats, threshold, power, m, max_cycles, same_sign, axis):
    """`_dsnot` on the ``[out, in]`` rows, back in ``w``'s layout: one program per layer shape."""
    keep = _dsnot(to_rows(w, axis).astype(jnp.float32), to_rows(mask, axis), stats.mean,
                  stats.var, stats.norms, stats.gram, threshold, power, m, max_cycles, same_sign)
    keep = keep.T if axis == 0 else keep
    return jnp.where(keep, w, jnp.zeros((), w.dtype)), keep


def reconstruction_error(
    w: Float[Array, "a b"],
    w_pruned: Float[Array, "a b"],
    gram: Float[Array, "features features"],
    *,
    axis: int | None = None,
) -> Float[Array, " out"]:
    """Per-output squared reconstruction error ``||X w_i - X w'_i||^2 = d_i^T (X^T X) d_i``.

    Args:
        w: dense weight; ``w_pruned`` the pruned one, same shape and layout.
        gram: ``X^T X`` of the calibration inputs (`LayerStats.gram`).
        axis: the input-feature axis of ``w``.

    Returns:
        ``[out]`` float32 errors; their sum is ``||X W - X W'||_F^2``.
    """
    w, axis = check_weight(w, axis)
    w_pruned, _ = check_weight(w_pruned, axis)
    d = to_rows(w, axis).astype(jnp.float32) - to_rows(w_pruned, axis).astype(jnp.float32)
    return _row_errors(d, gram)


def _row_errors(d: jax.Array, gram: jax.Array) -> jax.Array:
    return jnp.sum(jnp.matmul(d, gram, precision=lax.Precision.HIGHEST) * d, axis=1)


def _masked_arg(values: jax.Array, allowed: jax.Array, largest: jax.Array) -> tuple:
    """Per row: index of the largest (or smallest) allowed value, and whether one exists."""
    key = jnp.where(largest[:, None], values, -values)
    key = jnp.where(allowed, key, -jnp.inf)
    idx = jnp.argmax(key, axis=1)
    return idx, jnp.any(allowed, axis=1)


@partial(jax.jit, static_argnums=(8, 9, 10))
def _dsnot(w, keep0, mean, var, norms, gram, threshold, power, m, max_cycles, same_sign):
    rows, cols = w.shape
    metric = w * mean[None, :]                       # W_ij E[x_j]: contribution to e_i
    grow_score = metric / jnp.maximum(var, 1e-12)[None, :] ** power
    wanda = jnp.abs(w) * norms[None, :]
    e0 = jnp.sum(jnp.where(keep0, 0.0, metric), axis=1)
    sign0 = jnp.sign(e0)
    row = jnp.arange(rows)
    col = jnp.arange(cols)

    def cond(state):
        cycle, _, _, active = state
        return (cycle < max_cycles) & jnp.any(active)

    def body(state):
        cycle, keep, e, active = state
        positive = e > 0
        # grow: a pruned weight (pruned from the start) whose contribution has the sign of e
        growable = ~keep & ~keep0 & (jnp.sign(metric) == jnp.sign(e)[:, None])
        g, has_g = _masked_arg(grow_score, growable, positive)
        if m is None:
            prunable = keep & keep0 & (jnp.sign(metric) == -jnp.sign(e)[:, None])
        else:
            same_group = (col[None, :] // m) == (g // m)[:, None]
            prunable = keep & keep0 & same_group
        p, has_p = _masked_arg(wanda, prunable, jnp.zeros(rows, bool))
        e_after = e + metric[row, p] - metric[row, g]
        update = active & has_g & has_p & (jnp.abs(e) > threshold)
        if same_sign:
            update = update & (jnp.sign(e_after) == sign0)
        keep = keep.at[row, g].set(keep[row, g] | update).at[row, p].set(keep[row, p] & ~update)
        return cycle + 1, keep, jnp.where(update, e_after, e), update

    if m is None and same_sign and max_cycles > 0:
        keep = _dsnot_in_order(metric, grow_score, wanda, keep0, e0, threshold, max_cycles)
    else:
        init = (jnp.int32(0), keep0, e0, jnp.ones(rows, bool))
        _, keep, _, _ = lax.while_loop(cond, body, init)
    if gram is not None:
        worse = (_row_errors(jnp.where(keep, 0.0, w), gram)
                 > _row_errors(jnp.where(keep0, 0.0, w), gram))
        keep = jnp.where(worse[:, None], keep0, keep)
    return keep


def _argmax_order(x: jax.Array) -> jax.Array:
    """int32 keys of float32 ``x`` ordered as `jnp.argmax` ranks the floats: ``NaN`` above
    everything, ``-0.0`` equal to ``0.0``."""
    bits = lax.bitcast_convert_type(x + jnp.float32(0.0), jnp.int32)  # -0.0 + 0.0 = +0.0
    key = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)  # negatives: reversed order
    return jnp.where(jnp.isnan(x), jnp.iinfo(jnp.int32).max, key)


def _dsnot_in_order(metric, grow_score, wanda, keep0, e0, threshold, max_cycles):
    """The unstructured ``same_sign`` cycle of `_dsnot` without rescanning the layer every cycle.

    There a row's error keeps the sign of ``e0`` while the row is active, so the set it grows from
    (pruned-at-start weights whose contribution has that sign) and the set it prunes from only
    lose the weights already swapped: each cycle's argmax is the next entry of one fixed order.
    Both orders come from one ``lax.top_k`` each (ties by lower index, as argmax; `_argmax_order`),
    and the cycles run as a scan over the rows' scalars, the same arithmetic in the same order, so
    the mask is the one of the cycle-by-cycle loop."""
    rows, cols = metric.shape
    k = min(max_cycles, cols)  # a row cannot grow more than cols weights
    sign0 = jnp.sign(e0)
    low = jnp.iinfo(jnp.int32).min
    growable = ~keep0 & (jnp.sign(metric) == sign0[:, None])
    grow_key = jnp.where((e0 > 0)[:, None], grow_score, -grow_score)
    g_key, g_idx = lax.top_k(jnp.where(growable, _argmax_order(grow_key), low), k)
    prunable = keep0 & (jnp.sign(metric) == -sign0[:, None])
    p_key, p_idx = lax.top_k(jnp.where(prunable, _argmax_order(-wanda), low), k)
    row = jnp.arange(rows)

    def cycle(carry, t):
        e, active, swaps = carry
        g, p = g_idx[:, t], p_idx[:, t]
        e_after = e + metric[row, p] - metric[row, g]
        update = (active & (g_key[:, t] > low) & (p_key[:, t] > low) & (jnp.abs(e) > threshold)
                  & (jnp.sign(e_after) == sign0))
        return (jnp.where(update, e_after, e), update, swaps + update), None

    (_, _, swaps), _ = lax.scan(cycle, (e0, jnp.ones(rows, bool), jnp.zeros(rows, jnp.int32)),
                                jnp.arange(k))
    done = (jnp.arange(k)[None, :] < swaps[:, None]).astype(jnp.int32)  # the swaps made, a prefix
    grown = jnp.zeros((rows, cols), jnp.int32).at[row[:, None], g_idx].add(done) > 0
    pruned = jnp.zeros((rows, cols), jnp.int32).at[row[:, None], p_idx].add(done) > 0
    return (keep0 | grown) & ~pruned

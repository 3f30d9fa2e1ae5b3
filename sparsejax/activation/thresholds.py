"""Magnitude thresholds for activation sparsity (TEAL, CATS, R-Sparse) and `sparsify`.

A threshold ``tau`` turns a dense activation into a sparse one: `sparsify` zeroes every entry with
``|x| <= tau``; `calibrate_thresholds` picks ``tau`` from calibration activations so that a target
fraction of entries is zeroed. Three conventions, one per reference code (all agree up to the
resolution of a histogram):

* ``"exact"`` (default; R-Sparse ``R_Sparse_Linear._getting_threshold``): ``tau`` is the
  ``k``-th smallest ``|x|`` with ``k = int(n * sparsity)``, so ``|x| <= tau`` zeroes at least ``k``
  entries (exactly ``k`` without ties); ``k = 0`` gives ``tau = 0`` (only exact zeros);
* ``"teal"`` (FasterDecoding/TEAL ``utils/utils.py``: ``ActivationModule.find_histogram`` +
  ``Distribution.icdf``): a 10000-bin histogram of the *signed* values (1% outliers on each side
  in the two end bins), ``tau = icdf(0.5 + sparsity / 2)`` by linear interpolation of the
  cumulative counts (it assumes a zero-mean symmetric distribution);
* ``"cats"`` (ScalingIntelligence/CATS ``sparse_silu.py``: ``collect_stats`` + ``get_threshold``):
  a histogram of ``|x|`` over edges ``[-inf, linspace(-2, 2, 19998), inf]``; ``tau`` is the edge
  at ``searchsorted(cdf, sparsity, side="right")``.

Thresholds are per tensor (one scalar per linear input, as in all three papers) or, with
``axis=``, per channel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax._checks import check_choice, check_float_array, check_int, check_sparsity

__all__ = ["PREFILL_RULES", "THRESHOLD_METHODS", "calibrate_thresholds", "sparsify",
           "teal_sparsify"]

PREFILL_RULES = ("half", "none", "all")
"""Accepted values of ``teal_sparsify(prefill=...)``."""

THRESHOLD_METHODS = ("exact", "teal", "cats")
"""Accepted values of ``calibrate_thresholds(method=...)``."""


def sparsify(x: Float[Array, "*shape"], tau: Any) -> Float[Array, "*shape"]:
    """Zero the entries of ``x`` with ``|x| <= tau`` (TEAL's ``x.abs().gt(tau) * x``).

    Args:
        x: activations, any shape and float dtype.
        tau: threshold, a scalar or an array broadcasting against ``x`` (e.g. ``[features]``).

    Returns:
        ``x`` with the small entries set to zero (same shape and dtype).
    """
    x = check_float_array(x, "x")
    return jnp.where(jnp.abs(x) > jnp.asarray(tau, x.dtype), x, jnp.zeros((), x.dtype))


def teal_sparsify(
    x: Float[Array, "*batch seq features"], tau: Any, *, prefill: str = "half"
) -> Float[Array, "*batch seq features"]:
    """`sparsify` with TEAL's rule for prompts (FasterDecoding/TEAL ``utils.py::SparsifyFn``).

    A decoding step (``seq == 1``) is always sparsified. A prompt (``seq > 1``) is sparsified
    according to ``prefill``: ``"half"`` (TEAL's ``apply_prefill=True``, the setting of its
    evaluations, including the greedy search) zeroes only in the last ``seq // 2`` tokens and
    leaves the first ``seq - seq // 2`` dense; ``"none"`` (``apply_prefill=False``) leaves the
    prompt dense; ``"all"`` sparsifies every token (plain `sparsify`).

    Args:
        x: activations ``[..., seq, features]`` (a 1-D ``x`` is one decoding step).
        tau: threshold, a scalar or an array broadcasting against ``x``.
        prefill: ``"half"``, ``"none"`` or ``"all"``.

    Returns:
        ``x`` with the entries ``|x| <= tau`` zeroed where the rule applies (same shape/dtype).

    Raises:
        TypeError: non-float ``x``.
        ValueError: unknown ``prefill``.
    """
    x = check_float_array(x, "x")
    check_choice(prefill, "prefill", PREFILL_RULES)
    seq = x.shape[-2] if x.ndim >= 2 else 1
    if seq == 1 or prefill == "all":
        return sparsify(x, tau)
    if prefill == "none":
        return x
    tail = seq // 2
    keep_dense = (jnp.arange(seq) < seq - tail)[:, None]
    return jnp.where(keep_dense, x, sparsify(x, tau))


def _exact(a: np.ndarray, sparsity: float) -> float:
    k = int(a.size * sparsity)
    if k == 0:
        return 0.0
    return float(np.partition(a, k - 1)[k - 1])


def _teal(x: np.ndarray, sparsity: float, num_bins: int = 10000, outliers: float = 0.01) -> float:
    if sparsity == 0.0:  # TEAL's set_threshold: sparsity 0 -> threshold 0
        return 0.0
    acts = np.sort(x.astype(np.float32))
    n = acts.size
    lower, upper = acts[int(outliers * n)], acts[-int(outliers * n)]
    main = np.linspace(lower, upper, num_bins - 1, dtype=np.float32)
    bins = np.concatenate([[acts[0]], main, [acts[-1]]]).astype(np.float32)
    counts, _ = np.histogram(acts, bins=bins)
    centers = ((bins[:-1] + bins[1:]) / 2).astype(np.float32)
    cum = np.cumsum(counts.astype(np.float64))
    target = (0.5 + sparsity / 2) * cum[-1]
    idx = int(np.searchsorted(cum, target))  # torch.searchsorted: left side
    if idx == 0:
        return float(centers[0])
    if idx == len(centers):
        return float(centers[-1])
    lo_c, hi_c = cum[idx - 1], cum[idx]
    frac = (target - lo_c) / (hi_c - lo_c)
    return float(centers[idx - 1] + frac * (centers[idx] - centers[idx - 1]))


def _cats(a: np.ndarray, sparsity: float, num_bins: int = 20000) -> float:
    edges = np.concatenate([[-np.inf], np.linspace(-2, 2, num_bins - 2, dtype=np.float32),
                            [np.inf]])
    counts, _ = np.histogram(a.astype(np.float32), bins=edges)
    cdf = np.cumsum(counts / counts.sum())
    return float(edges[int(np.searchsorted(cdf, sparsity, side="right"))])


_METHODS = {"exact": lambda x, s: _exact(np.abs(x), s), "teal": _teal,
            "cats": lambda x, s: _cats(np.abs(x), s)}


def calibrate_thresholds(
    acts: Float[Array, "*tokens features"],
    sparsity: Any,
    *,
    method: str = "exact",
    axis: int | None = None,
    scale: Float[Array, " features"] | None = None,
) -> Float[Array, "..."]:
    """Threshold(s) ``tau`` such that ``|x| <= tau`` zeroes ``sparsity`` of calibration activations.

    Runs eagerly on concrete values (NumPy, float64 arithmetic for ``"exact"``); not traceable.

    Args:
        acts: calibration activations of one linear input (tokens x features, any leading axes).
        sparsity: target fraction in ``[0, 1]``, a float or a 1-D array of fractions (one
            threshold per fraction; TEAL's greedy search and R-Sparse's search use many).
        method: ``"exact"``, ``"teal"`` or ``"cats"`` (see the module docstring).
        axis: ``None`` (one threshold over all entries, as the papers do) or the feature axis
            ``-1`` (one threshold per channel, over the tokens).
        scale: optional per-feature multiplier (R-Sparse's ``c_j``): thresholds are taken on
            ``|acts * scale|``.

    Returns:
        float32 thresholds of shape ``sparsity.shape`` (``axis=None``) or
        ``sparsity.shape + (features,)`` (``axis=-1``).

    Raises:
        TypeError: non-float ``acts``.
        ValueError: a sparsity outside ``[0, 1]``, an unknown ``method``, ``axis`` not
            ``None``/``-1``, empty ``acts``, ``scale`` not ``[features]``.
    """
    acts = check_float_array(acts, "acts", min_ndim=1)
    check_choice(method, "method", THRESHOLD_METHODS)
    if axis is not None:
        check_int(axis, "axis", minimum=-1, maximum=-1)
    x = np.asarray(jax.device_get(acts), np.float64).reshape(-1, acts.shape[-1])
    if x.size == 0:
        raise ValueError("`acts` must hold at least one value; got an empty array.")
    if scale is not None:
        scale = np.asarray(check_float_array(scale, "scale"), np.float64)
        if scale.shape != (x.shape[1],):
            raise ValueError(f"`scale` must have shape ({x.shape[1]},); got {scale.shape}.")
        x = x * scale
    fracs = np.asarray(sparsity, np.float64)
    for s in fracs.reshape(-1):
        check_sparsity(float(s), "sparsity")
    fn = _METHODS[method]
    if axis is None:
        flat = x.reshape(-1)
        out = [fn(flat, float(s)) for s in fracs.reshape(-1)]
        return jnp.asarray(np.asarray(out, np.float32).reshape(fracs.shape))
    out = [[fn(x[:, j], float(s)) for j in range(x.shape[1])] for s in fracs.reshape(-1)]
    return jnp.asarray(np.asarray(out, np.float32).reshape(*fracs.shape, x.shape[1]))

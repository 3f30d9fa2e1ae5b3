"""R-Sparse: rank-aware activation sparsity (VITA-Group/R-Sparse ``R_Sparse_Linear``).

For a linear layer ``y = x @ W + b`` (``W [in, out]``, the Flax layout; the reference's torch
weight is ``W.T``) with SVD ``W = U S V^T``:

    m = |x * c| > tau,      c_j = ||(U S)_j||   (row j of U S; the reference's ``(V S)_j`` of W.T)
    y = (x * m) @ W + b + ((x * (1 - m)) @ U_r S_r) @ V_r^T

The sparse part reads only the kept rows of ``W`` (`sparsejax.ops.sparse_input_matmul`); the
rank-``r`` part covers the rest. ``c`` uses all singular values (as the reference's
``prepare_low_rank_weight.py``), ``tau`` comes from calibration on ``|x * c|``
(`sparsejax.activation.calibrate_thresholds` with ``scale=c``; the reference's
``_getting_threshold`` is the ``"exact"`` method). Exactness: ``tau = 0`` keeps every nonzero
input (the dense layer); ``tau = inf`` keeps none (the rank-``r`` SVD layer ``x @ W_r + b``).

`rsparse_tap` applies R-Sparse through the ``tap`` hook of a model that only lets the *input* be
changed: it returns ``x' = x * m + ((x * (1 - m)) @ U_r) @ U_r^T``, and ``x' @ W`` equals the
R-Sparse output because ``U_r^T W = S_r V_r^T`` (same result, not the fast path).

The per-layer rank and sparsity come from a search in the paper (evolutionary); `rsparse_search`
is a documented greedy substitute: for each layer and a grid of ranks, the sparsity is set so
that the layer's *weight reads* match a budget, and the rank with the lowest output error on
calibration inputs wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, check_int, check_sparsity, must_be
from sparsejax.activation.thresholds import calibrate_thresholds
from sparsejax.ops.sparse_input import sparse_input_matmul

__all__ = ["RSparse", "rsparse_factors", "rsparse_linear", "rsparse_search", "rsparse_tap"]


class RSparse(NamedTuple):
    """The R-Sparse factors of one ``W [in, out]``.

    Attributes:
        us: ``U_r S_r`` ``[in, r]``.
        vt: ``V_r^T`` ``[r, out]``.
        u: ``U_r`` ``[in, r]`` (for `rsparse_tap`).
        scale: ``c [in]``, row norms of ``U S`` (all singular values).
        tau: threshold on ``|x * c|`` (scalar).
    """

    us: Float[Array, "in r"]
    vt: Float[Array, "r out"]
    u: Float[Array, "in r"]
    scale: Float[Array, " in"]
    tau: Float[Array, ""]


def rsparse_factors(w: Float[Array, "in out"], rank: int, tau: Any = 0.0) -> RSparse:
    """SVD factors of ``w`` for R-Sparse (computed in float64 on the host, as the reference).

    Args:
        w: weight ``[in, out]``.
        rank: ``r`` in ``[0, min(in, out)]``.
        tau: threshold on ``|x * c|`` (set it from calibration, see the module docstring).

    Returns:
        `RSparse` (float32 factors).

    Raises:
        TypeError: non-float ``w``, non-int ``rank``.
        ValueError: ``w`` not 2-D, ``rank`` out of range.
    """
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(must_be("w", "a 2-D array [in, out]", f"shape {tuple(w.shape)}",
                                 raw=True))
    rank = check_int(rank, "rank", minimum=0, maximum=min(w.shape))
    u, s, vt = np.linalg.svd(np.asarray(jax.device_get(w), np.float64), full_matrices=False)
    scale = np.linalg.norm(u * s, axis=1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return RSparse(f32(u[:, :rank] * s[:rank]), f32(vt[:rank]), f32(u[:, :rank]), f32(scale),
                   jnp.asarray(tau, jnp.float32))


def _mask(x: Array, f: RSparse) -> Array:
    return jnp.abs(x * f.scale.astype(x.dtype)) > f.tau.astype(x.dtype)


def rsparse_linear(
    x: Float[Array, "... in"],
    w: Float[Array, "in out"],
    factors: RSparse,
    bias: Float[Array, " out"] | None = None,
    *,
    backend: str = "auto",
) -> Float[Array, "... out"]:
    """The R-Sparse layer ``(x * m) @ W + b + ((x * (1 - m)) @ U_r S_r) @ V_r^T``.

    Args:
        x: inputs ``[..., in]``.
        w: dense weight ``[in, out]`` (read only at kept rows, see
            `sparsejax.ops.sparse_input_matmul`).
        factors: `rsparse_factors` of ``w`` with a calibrated ``tau``.
        bias: optional ``[out]``.
        backend: passed to `sparsejax.ops.sparse_input_matmul`.

    Returns:
        ``[..., out]``.
    """
    x = check_float_array(x, "x", min_ndim=1)
    m = _mask(x, factors)
    sparse = sparse_input_matmul(jnp.where(m, x, 0), w, backend=backend)
    low = (jnp.where(m, 0, x) @ factors.us.astype(x.dtype)) @ factors.vt.astype(x.dtype)
    out = sparse + low
    return out if bias is None else out + bias


def rsparse_tap(factors: dict[str, RSparse]):
    """A ``tap`` (see `sparsejax.activation.threshold_tap`) applying R-Sparse to listed layers.

    Returns ``x * m + ((x * (1 - m)) @ U_r) @ U_r^T`` so that the model's own ``x' @ W + b``
    equals `rsparse_linear` (exactly in real arithmetic; the low-rank part goes through ``U_r``).
    """
    factors = dict(factors)

    def tap(name, x, where=None):
        del where
        if name not in factors:
            return x
        f = factors[name]
        m = _mask(x, f)
        u = f.u.astype(x.dtype)
        return jnp.where(m, x, 0) + (jnp.where(m, 0, x) @ u) @ u.T

    return tap


@jax.jit
def _candidate_error(x: Array, w: Array, full: RSparse, tau: Array, r: Array,
                     dense: Array) -> Array:
    """Squared output error of `rsparse_linear` with the rank-``r`` truncation of ``full`` and
    threshold ``tau`` (one compilation for every ``r``: columns past ``r`` are zeroed)."""
    m = _mask(x, full._replace(tau=tau))
    us = jnp.where(jnp.arange(full.us.shape[1]) < r, full.us, 0)
    out = jnp.where(m, x, 0) @ w + (jnp.where(m, 0, x) @ us) @ full.vt
    return jnp.sum((out - dense) ** 2)


def rsparse_search(
    weights: dict[str, Float[Array, "in out"]],
    inputs: dict[str, Float[Array, "tokens in"]],
    budget: float,
    *,
    ranks: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4),
) -> dict[str, RSparse]:
    """Per-layer rank and threshold at a weight-read budget (greedy substitute for the paper's
    evolutionary search).

    A layer with rank ``r`` and input sparsity ``s`` reads ``(1 - s) * in * out + r * (in + out)``
    weights; ``budget`` is the fraction of ``in * out`` allowed (``1 - activation sparsity`` of
    plain TEAL at the same cost). For each rank fraction in ``ranks`` (of ``min(in, out)``), ``s``
    is set to meet the budget and ``tau`` calibrated on ``inputs`` (``"exact"`` method on
    ``|x * c|``); the candidate with the lowest squared output error on ``inputs`` is kept.

    Args:
        weights: ``{name: W [in, out]}``.
        inputs: ``{name: calibration inputs [tokens, in]}`` (e.g. `collect_inputs`).
        budget: weight-read fraction in ``[0, 1]``.
        ranks: rank fractions tried.

    Returns:
        ``{name: RSparse}``.
    """
    budget = check_sparsity(float(budget), "budget")
    out = {}
    for name, w in weights.items():
        x = jnp.asarray(inputs[name], jnp.float32)
        w = jnp.asarray(w, jnp.float32)
        n_in, n_out = w.shape
        full = rsparse_factors(w, min(n_in, n_out))
        dense = x @ w
        best = None
        for frac in ranks:
            r = int(round(frac * min(n_in, n_out)))
            keep = budget - r * (n_in + n_out) / (n_in * n_out)
            if keep < 0:
                continue
            s = min(1.0, 1.0 - keep)
            tau = calibrate_thresholds(x, s, scale=full.scale)
            err = float(_candidate_error(x, w, full, tau, r, dense))
            if best is None or err < best[0]:
                best = (err, RSparse(full.us[:, :r], full.vt[:r], full.u[:, :r], full.scale, tau))
        if best is None:
            raise ValueError(f"`budget` {budget} is below the cost of every rank in `ranks` for "
                             f"layer {name!r}; add 0.0 to `ranks`.")
        out[name] = best[1]
    return out

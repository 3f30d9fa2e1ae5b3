"""MoA (Mixture of Sparse Attention): elastic per-head sink + local windows.

Each head ``h`` has an elastic rule ``(alpha_h, beta_h)``; at sequence length ``N`` its attention
span is ``S = alpha + beta * N``. The rules follow the reference implementation (thu-nics/MoA):

* span (``attention/cache_utils.py::moa_config_to_cache_config``)::

      S = min(int(alpha + beta * (N + new)), N + new)
      S = ceil(max(S, 128) / 64) * 64          # minimum cache size, then a multiple of 64
      sink = min(S, 64); local = S - sink

* prefill (``kernels/block_sparse_attention_prefill.py``): block granular with 64 x 64 blocks;
  query block ``m`` visits KV blocks
  ``[0, min(sink_blocks - 1, m)] U [max(0, m + 1 - local_blocks), m]``
  (``sink_blocks = sink // 64``, ``local_blocks = local // 64``) plus the causal mask inside blocks;
* decode (``StaticCircularCache``): token exact, the first ``sink`` tokens plus a circular window
  holding the last ``local`` tokens;
* profiling (``models/llama/modify_llama_profile.py``): the attention influence
  ``E = -A * (G - sum_k G * A) / (1 - A + eps)`` with ``G = dL/dA`` (the first query row uses
  ``E = -G * A``), ``|E|`` summed over 64 x 64 blocks and averaged over the calibration data;
* search (``scripts/pipeline/elastic_generate.py``): candidate grid
  ``alpha in linspace(-L_min, L_prof, (L_prof + L_min) // 1024 + 1)``,
  ``beta in linspace(0, 1, 9)``,
  one candidate per head, minimising the dropped influence summed over the profiled lengths subject
  to a KV density budget at every constrained length. The reference solves this MILP with
  Gurobi/CVXPY; here an exact dynamic program or a Lagrangian relaxation solves it.

Convention: the search scores a candidate with the same block layout `moa_block_layout`
produces at inference (the reference's search approximates it by a BigBird band of
``int(alpha // 64 + beta * n_blocks)`` blocks plus one global block).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax.attention.mask import BlockMask

__all__ = [
    "moa_spans",
    "moa_block_layout",
    "moa_token_mask",
    "moa_mask",
    "moa_decode_keep",
    "moa_decode_indices",
    "moa_influence",
    "moa_profile",
    "moa_candidates",
    "moa_search",
]


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence (one value per head), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr


def _check_pos_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def moa_spans(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    max_new_tokens: int = 1024,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-head attention span, sink and local sizes (the reference's span rule).

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes (fraction of the length).
        seq_len: prompt length ``N``.
        max_new_tokens: tokens to be generated ``new``; the span is sized for ``N + new`` (the
            reference default is 1024; use 0 for a pure prefill).
        sink_size: maximum number of sink tokens (64).
        minimum_cache_size: spans are raised to at least this (128).
        split_size: spans are rounded up to a multiple of this (64).

    Returns:
        ``(span, sink, local)``, each an int64 ``[H]`` numpy array with ``span = sink + local``.

    Raises:
        ValueError: mismatched or non-finite alphas/betas, or non-positive sizes.
    """
    a = _as_1d(alphas, "alphas")
    b = _as_1d(betas, "betas")
    if a.shape != b.shape:
        raise ValueError(f"alphas and betas must have the same shape, got {a.shape} and {b.shape}")
    n = _check_pos_int(seq_len, "seq_len")
    new = _check_pos_int(max_new_tokens, "max_new_tokens", 0)
    sink_size = _check_pos_int(sink_size, "sink_size", 0)
    minimum_cache_size = _check_pos_int(minimum_cache_size, "minimum_cache_size", 0)
    split_size = _check_pos_int(split_size, "split_size")
    total = n + new
    span = []
    for alpha, beta in zip(a.tolist(), b.tolist()):
        s = int(alpha + total * beta)  # python int() truncates toward zero, as in the reference
        s = min(s, total)
        s = math.ceil(max(s, minimum_cache_size) / split_size) * split_size
        span.append(s)
    span_arr = np.asarray(span, dtype=np.int64)
    sink = np.minimum(span_arr, sink_size)
    return span_arr, sink, span_arr - sink


def moa_block_layout(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    block_size: int = 64,
    max_new_tokens: int = 1024,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
) -> np.ndarray:
    """Block-level prefill layout of MoA (which KV blocks each query block visits).

    Query block ``m`` visits KV blocks ``j`` with ``j <= min(sink_blocks - 1, m)`` or
    ``max(0, m + 1 - local_blocks) <= j <= m``, where ``sink_blocks = sink // block_size`` and
    ``local_blocks = local // block_size`` (integer division, as the reference kernel does).

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        seq_len: sequence length ``N`` (the prefill is square, ``N x N``).
        block_size: block edge (64 in the reference).
        max_new_tokens: generated tokens the span is sized for (see `moa_spans`).
        sink_size: maximum sink tokens (64).
        minimum_cache_size: smallest span (128).
        split_size: spans are multiples of this (64).

    Returns:
        Bool numpy array ``[H, nb, nb]`` with ``nb = ceil(N / block_size)``; lower block triangular.
    """
    block_size = _check_pos_int(block_size, "block_size")
    _, sink, local = moa_spans(
        alphas,
        betas,
        seq_len,
        max_new_tokens=max_new_tokens,
        sink_size=sink_size,
        minimum_cache_size=minimum_cache_size,
        split_size=split_size,
    )
    nb = -(-seq_len // block_size)
    m = np.arange(nb)[:, None]
    j = np.arange(nb)[None, :]
    sink_b = (sink // block_size)[:, None, None]
    local_b = (local // block_size)[:, None, None]
    in_sink = j <= np.minimum(sink_b - 1, m)
    in_local = (j >= np.maximum(0, m + 1 - local_b)) & (j <= m)
    return np.asarray(in_sink | in_local, dtype=bool)


def _blocks_to_tokens(layout: np.ndarray, seq_len: int, block_size: int) -> np.ndarray:
    tok = np.repeat(np.repeat(layout, block_size, axis=-2), block_size, axis=-1)
    return tok[..., :seq_len, :seq_len]


def moa_token_mask(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    block_size: int = 64,
    max_new_tokens: int = 1024,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
) -> np.ndarray:
    """Token-level prefill mask of MoA: the block layout AND the causal mask.

    Returns:
        Bool numpy array ``[H, N, N]``.
    """
    layout = moa_block_layout(
        alphas,
        betas,
        seq_len,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        sink_size=sink_size,
        minimum_cache_size=minimum_cache_size,
        split_size=split_size,
    )
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))
    return _blocks_to_tokens(layout, seq_len, block_size) & causal[None]


def moa_mask(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    block_size: int = 64,
    max_new_tokens: int = 1024,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
) -> BlockMask:
    """MoA prefill mask as a `sparsejax.attention.mask.BlockMask` (static, numpy backed).

    The block map is `moa_block_layout` (``[1, H, nb, nb]``) and the token mask inside the
    partial (diagonal) blocks is causal. Use it with ``attention(q, k, v, mask)``.

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        seq_len: sequence length ``N``.
        block_size: block edge of the layout and of the returned mask (64).
        max_new_tokens: generated tokens the span is sized for (see `moa_spans`).
        sink_size: maximum sink tokens (64).
        minimum_cache_size: smallest span (128).
        split_size: spans are multiples of this (64).

    Returns:
        A ``BlockMask`` of shape ``[1, H, N, N]`` with blocks ``(block_size, block_size)``.
    """
    from sparsejax.attention.static import causal_mask

    layout = moa_block_layout(
        alphas,
        betas,
        seq_len,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        sink_size=sink_size,
        minimum_cache_size=minimum_cache_size,
        split_size=split_size,
    )
    blocks = BlockMask.from_blocks(layout[None], block_size, block_size, seq_len, seq_len)
    return blocks & causal_mask(seq_len, block_q=block_size, block_kv=block_size)


def moa_decode_keep(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    prompt_len: int,
    kv_len: int,
    *,
    max_new_tokens: int = 1024,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
) -> np.ndarray:
    """Token-exact KV positions a decoding query sees under MoA's static circular cache.

    The cache of each head is sized once from the prompt (``span`` of `moa_spans` with
    ``seq_len = prompt_len``). With ``kv_len`` tokens written so far (the current token included)
    a head keeps the first ``sink`` tokens and the last ``local`` tokens (everything if
    ``kv_len <= span``).

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        prompt_len: prompt length the cache was sized for.
        kv_len: number of tokens in the (uncompressed) sequence, current token included.
        max_new_tokens: generated tokens the span is sized for (see `moa_spans`).
        sink_size: maximum sink tokens (64).
        minimum_cache_size: smallest span (128).
        split_size: spans are multiples of this (64).

    Returns:
        Bool numpy array ``[H, kv_len]``.
    """
    kv_len = _check_pos_int(kv_len, "kv_len")
    _, sink, local = moa_spans(
        alphas,
        betas,
        prompt_len,
        max_new_tokens=max_new_tokens,
        sink_size=sink_size,
        minimum_cache_size=minimum_cache_size,
        split_size=split_size,
    )
    pos = np.arange(kv_len)[None, :]
    return (pos < sink[:, None]) | (pos >= kv_len - local[:, None])


def moa_decode_indices(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    prompt_len: int,
    kv_len: int,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Kept KV indices per head for decoding (see `moa_decode_keep`).

    Returns:
        ``(indices, valid)``: int32 ``[H, K]`` ascending kept positions padded with 0 and bool
        ``[H, K]`` validity, ``K`` the largest per-head count.
    """
    keep = moa_decode_keep(alphas, betas, prompt_len, kv_len, **kwargs)
    counts = keep.sum(-1)
    k = int(counts.max())
    idx = np.zeros((keep.shape[0], k), dtype=np.int32)
    valid = np.arange(k)[None, :] < counts[:, None]
    for h in range(keep.shape[0]):
        pos = np.nonzero(keep[h])[0]
        idx[h, : pos.size] = pos
    return idx, valid


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------


def moa_influence(
    probs: Float[Array, "*batch q k"],
    grads: Float[Array, "*batch q k"],
    *,
    eps: float | None = None,
) -> Float[Array, "*batch q k"]:
    """Attention influence ``E = -A * (G - sum_k G * A) / (1 - A + eps)`` (MoA's profiler).

    ``E[i, j]`` estimates the change of the loss when key ``j`` is dropped from query ``i``'s
    softmax (and the remaining probabilities are renormalised). The first query row, whose only
    causal key has ``A = 1``, uses ``E = -G * A`` as in the reference.

    Args:
        probs: attention probabilities ``A`` ``[..., Lq, Lk]``.
        grads: ``G = dL/dA`` with the same shape.
        eps: added to the denominator; default ``finfo(dtype).eps``.

    Returns:
        ``E`` with the shape of ``probs`` (signed; take ``abs`` to rank).
    """
    if probs.shape != grads.shape:
        raise ValueError(
            f"probs and grads must have the same shape, got {probs.shape} and {grads.shape}"
        )
    if probs.ndim < 2:
        raise ValueError(f"probs must be at least 2-D [..., Lq, Lk], got shape {probs.shape}")
    if eps is None:
        eps = float(jnp.finfo(grads.dtype).eps)
    ga = grads * probs
    effect = probs * (grads - jnp.sum(ga, axis=-1, keepdims=True)) / (eps + 1.0 - probs)
    effect = effect.at[..., 0, :].set(ga[..., 0, :])
    return -effect


def _block_sum(x: jnp.ndarray, block_size: int) -> jnp.ndarray:
    lq, lk = x.shape[-2:]
    nq, nk = -(-lq // block_size), -(-lk // block_size)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, nq * block_size - lq), (0, nk * block_size - lk)]
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:-2], nq, block_size, nk, block_size)
    return x.sum(axis=(-3, -1))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pooled_influence(probs, g, block_size, causal, eps):
    e = jnp.abs(moa_influence(probs, g, eps=eps))
    n = probs.shape[-1]
    if causal:
        e = jnp.where(jnp.tril(jnp.ones((n, n), dtype=bool)), e, 0.0)
    return _block_sum(e.astype(jnp.float32), block_size).sum(0)


def moa_profile(
    loss_fn: Callable[[Array, Any], Array],
    probs_fn: Callable[[Any], Array],
    batches: Sequence[Any] | Mapping[int, Sequence[Any]],
    *,
    block_size: int = 64,
    causal: bool = True,
    eps: float | None = None,
) -> dict[int, np.ndarray]:
    """Profile the block-pooled attention influence of each head at several lengths.

    For every calibration batch, ``A = probs_fn(batch)`` gives the attention probabilities
    ``[B, H, N, N]`` (or ``[H, N, N]``) of the attention being profiled, and ``loss_fn(A, batch)``
    the scalar loss with those probabilities substituted; ``G = jax.grad(loss_fn)(A, batch)``.
    The influence `moa_influence` is taken in absolute value, (causally masked,) summed
    over ``block_size`` blocks and averaged over all sequences of the same length ``N``.

    Args:
        loss_fn: ``(probs, batch) -> scalar`` (differentiated under ``jit``, so ``batch`` must
            be a pytree of arrays).
        probs_fn: ``batch -> probs`` ``[B, H, N, N]`` or ``[H, N, N]``.
        batches: calibration batches, either a sequence (grouped by the length ``N`` of their
            probabilities) or a mapping ``{length: [batch, ...]}``.
        block_size: pooling block (64 in the reference).
        causal: zero the strictly upper triangle before pooling.
        eps: see `moa_influence`.

    Returns:
        ``{N: E_block}``: float32 numpy ``[H, nb, nb]`` with ``nb = ceil(N / block_size)``.
    """
    block_size = _check_pos_int(block_size, "block_size")
    if isinstance(batches, Mapping):
        items = [b for group in batches.values() for b in group]
    else:
        items = list(batches)
    if not items:
        raise ValueError("batches must contain at least one calibration batch, got none")
    grad_fn = jax.jit(jax.grad(loss_fn))

    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for batch in items:
        probs = jnp.asarray(probs_fn(batch))
        if probs.ndim not in (3, 4) or probs.shape[-1] != probs.shape[-2]:
            raise ValueError(
                f"probs_fn must return [B, H, N, N] or [H, N, N], got shape {probs.shape}"
            )
        g = grad_fn(probs, batch)
        if probs.ndim == 3:
            probs, g = probs[None], g[None]
        n = probs.shape[-1]
        pooled = np.asarray(_pooled_influence(probs, g, block_size, causal, eps))
        sums[n] = sums.get(n, 0.0) + pooled
        counts[n] = counts.get(n, 0) + probs.shape[0]
    return {n: (sums[n] / counts[n]).astype(np.float32) for n in sorted(sums)}


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


def moa_candidates(
    profile_lengths: Sequence[int],
    extra_lengths: Sequence[int] = (),
    *,
    num_alphas: int | None = None,
    alpha_interval: int = 1024,
    num_betas: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's elastic-rule candidate grid.

    ``alpha in linspace(-L_min, L_prof, num_alphas)`` (``num_alphas = (L_prof + L_min) //
    alpha_interval + 1`` by default) crossed with ``beta in linspace(0, 1, num_betas)``; a pair is
    kept when ``alpha + beta * L_prof <= L_prof``, ``alpha + beta * L_max <= L_max`` and
    ``alpha + beta * L_min > 0`` (``L_prof`` the longest profiled length, ``L_min``/``L_max`` over
    all lengths), then sorted stably by ``alpha + beta * L_max``.

    Args:
        profile_lengths: profiled lengths.
        extra_lengths: further lengths the rules must be valid for (e.g. longer budget lengths).
        num_alphas: number of alphas (default from ``alpha_interval``).
        alpha_interval: spacing used for the default ``num_alphas`` (1024).
        num_betas: number of betas (9).

    Returns:
        ``(alphas, betas)`` float64 numpy arrays ``[C]``.
    """
    prof = [
        _check_pos_int(int(x) if isinstance(x, np.integer) else x, "profile_lengths[i]")
        for x in profile_lengths
    ]
    if not prof:
        raise ValueError("profile_lengths must not be empty")
    extra = [
        _check_pos_int(int(x) if isinstance(x, np.integer) else x, "extra_lengths[i]")
        for x in extra_lengths
    ]
    all_len = prof + extra
    l_prof, l_max, l_min = max(prof), max(all_len), min(all_len)
    num_betas = _check_pos_int(num_betas, "num_betas")
    if num_alphas is None:
        num_alphas = (l_prof + l_min) // _check_pos_int(alpha_interval, "alpha_interval") + 1
    num_alphas = _check_pos_int(num_alphas, "num_alphas")
    alpha = np.linspace(-l_min, l_prof, num_alphas, dtype=np.float32).astype(np.float64)
    beta = np.linspace(0.0, 1.0, num_betas, dtype=np.float32).astype(np.float64)
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    ok = (a + b * l_prof <= l_prof) & (a + b * l_max <= l_max) & (a + b * l_min > 0)
    a, b = a[ok], b[ok]
    order = np.argsort(a + b * l_max, kind="stable")
    return a[order], b[order]


def _candidate_tables(
    profiles: Mapping[int, np.ndarray],
    budget_lengths: Sequence[int],
    alphas: np.ndarray,
    betas: np.ndarray,
    layout_kwargs: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss [H, C] (summed over profiled lengths), integer KV-block cost [L, C] and nb [L]."""
    block_size = layout_kwargs["block_size"]
    num_heads = next(iter(profiles.values())).shape[0]
    c = alphas.size
    loss = np.zeros((num_heads, c))
    for n, e in profiles.items():
        e = np.asarray(e, dtype=np.float64)
        nb = -(-n // block_size)
        if e.shape != (num_heads, nb, nb):
            raise ValueError(
                f"profiles[{n}] must have shape [H, nb, nb] = {(num_heads, nb, nb)}, got {e.shape}"
            )
        lay = moa_block_layout(alphas, betas, n, **layout_kwargs)  # [C, nb, nb]
        tril = np.tril(np.ones((nb, nb), dtype=bool))
        dropped = (~lay & tril[None]).reshape(c, -1).astype(np.float64)
        loss += e.reshape(num_heads, -1) @ dropped.T
    cost = np.zeros((len(budget_lengths), c), dtype=np.int64)
    nbs = np.zeros(len(budget_lengths), dtype=np.int64)
    for i, n in enumerate(budget_lengths):
        lay = moa_block_layout(alphas, betas, n, **layout_kwargs)
        cost[i] = lay.sum(-1).max(-1)  # KV blocks held (the reference's "kv" density x nb)
        nbs[i] = lay.shape[-1]
    return loss, cost, nbs


def _solve_exact(
    loss: np.ndarray, cost: np.ndarray, cap: np.ndarray, max_states: int
) -> np.ndarray:
    """Exact multiple-choice knapsack with vector costs: DP over Pareto-optimal partial states."""
    num_heads, _ = loss.shape
    min_cost = cost.min(axis=1)  # [L]
    # states: cost tuple -> (loss, choice list)
    states: dict[tuple, tuple[float, tuple]] = {tuple([0] * cost.shape[0]): (0.0, ())}
    for h in range(num_heads):
        remaining_min = min_cost * (num_heads - h - 1)
        new: dict[tuple, tuple[float, tuple]] = {}
        for used, (val, choice) in states.items():
            u = np.asarray(used)
            tot = u[:, None] + cost  # [L, C]
            ok = np.all(tot + remaining_min[:, None] <= cap[:, None], axis=0)
            for ci in np.nonzero(ok)[0]:
                key = tuple(tot[:, ci].tolist())
                v = val + loss[h, ci]
                if key not in new or v < new[key][0]:
                    new[key] = (v, choice + (int(ci),))
        if not new:
            raise ValueError("density_budget is infeasible: even the sparsest candidates exceed it")
        # Pareto pruning: drop states with both higher cost (componentwise) and higher loss.
        keys = sorted(new, key=lambda k: new[k][0])
        kept: list[tuple] = []
        for k in keys:
            ka = np.asarray(k)
            if any(np.all(np.asarray(o) <= ka) for o in kept):
                continue
            kept.append(k)
        if len(kept) > max_states:
            raise ValueError(
                f"solver='exact' exceeded max_states={max_states} Pareto states; "
                "use solver='lagrangian'"
            )
        states = {k: new[k] for k in kept}
    best = min(states.values(), key=lambda s: s[0])
    return np.asarray(best[1], dtype=np.int64)


def _solve_lagrangian(
    loss: np.ndarray, cost: np.ndarray, cap: np.ndarray, iters: int = 300
) -> np.ndarray:
    """Lagrangian relaxation (subgradient, one multiplier per budget) + repair/improve."""
    num_heads, _ = loss.shape
    scale = np.maximum(cap, 1).astype(np.float64)
    ncost = cost / scale[:, None]  # [L, C] normalised
    loss_scale = max(float(np.abs(loss).max()), 1e-30)
    lam = np.zeros(cost.shape[0])
    best, best_val = None, np.inf

    def value(ch):
        return float(loss[np.arange(num_heads), ch].sum())

    def feasible(ch):
        return np.all(cost[:, ch].sum(axis=1) <= cap)

    for t in range(iters):
        red = loss / loss_scale + lam @ ncost  # [H, C]
        ch = np.argmin(red, axis=1)
        if feasible(ch) and value(ch) < best_val:
            best, best_val = ch.copy(), value(ch)
        sub = ncost[:, ch].sum(axis=1) - cap / scale
        lam = np.maximum(0.0, lam + (1.0 / np.sqrt(t + 1.0)) * sub / max(num_heads, 1))
    if best is None:  # repair: move heads to cheaper candidates with the best loss/cost ratio
        ch = np.argmin(loss, axis=1)
        while not feasible(ch):
            over = cost[:, ch].sum(axis=1) - cap
            w = (over > 0).astype(np.float64) / scale
            best_r, move = -np.inf, None
            for h in range(num_heads):
                dc = (cost[:, ch[h], None] - cost) * w[:, None]  # saving per candidate
                saving = dc.sum(0)
                dl = loss[h] - loss[h, ch[h]]
                ratio = np.where(saving > 0, saving / (dl + 1e-12 * loss_scale), -np.inf)
                c = int(np.argmax(ratio))
                if ratio[c] > best_r:
                    best_r, move = ratio[c], (h, c)
            if move is None:
                raise ValueError(
                    "density_budget is infeasible: even the sparsest candidates exceed it"
                )
            ch[move[0]] = move[1]
        best = ch
    # greedy improvement: best feasible single-head switch until none improves
    ch = best.copy()
    used = cost[:, ch].sum(axis=1)
    improved = True
    while improved:
        improved = False
        gain_best, move = 0.0, None
        for h in range(num_heads):
            new_used = used[:, None] - cost[:, ch[h], None] + cost  # [L, C]
            ok = np.all(new_used <= cap[:, None], axis=0)
            gain = np.where(ok, loss[h, ch[h]] - loss[h], -np.inf)
            c = int(np.argmax(gain))
            if gain[c] > gain_best:
                gain_best, move = gain[c], (h, c)
        if move is not None:
            h, c = move
            used = used - cost[:, ch[h]] + cost[:, c]
            ch[h] = c
            improved = True
    return ch


def moa_search(
    profiles: Mapping[int, np.ndarray],
    density_budget: float | Mapping[int, float],
    *,
    budget_lengths: Sequence[int] | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
    solver: str = "auto",
    block_size: int = 64,
    sink_size: int = 64,
    minimum_cache_size: int = 128,
    split_size: int = 64,
    max_states: int = 20000,
) -> dict[str, Any]:
    """Choose one elastic rule ``(alpha, beta)`` per head under a density budget.

    For head ``h`` and candidate ``c`` the dropped influence at profiled length ``N`` is the sum of
    ``profiles[N][h]`` over the causal blocks the candidate's layout (`moa_block_layout`,
    ``max_new_tokens=0``) does not visit. The objective is the sum over profiled lengths; the
    constraint, at every budget length ``N``, is that the mean over heads of the KV density
    (KV blocks held / ``nb``, the reference's ``"kv"`` density) is at most the budget.

    Args:
        profiles: ``{N: [H, nb, nb]}`` block influences from `moa_profile`.
        density_budget: a density in ``(0, 1]`` for every budget length, or ``{N: density}``.
        budget_lengths: lengths to constrain (default: the profiled lengths, or the keys of a
            mapping budget).
        candidates: ``(alphas, betas)``; default `moa_candidates` of the lengths.
        solver: ``"exact"`` (dynamic program over Pareto-optimal integer block costs; exponential
            only in the worst case), ``"lagrangian"`` (subgradient on one multiplier per length,
            then greedy repair and improvement; always feasible, not always optimal) or ``"auto"``
            (exact, falling back to Lagrangian beyond ``max_states``).
        block_size: layout block (64).
        sink_size: maximum sink tokens (64).
        minimum_cache_size: smallest span (128).
        split_size: spans are multiples of this (64).
        max_states: state limit of the exact solver.

    Returns:
        dict with ``alphas``/``betas`` (``[H]`` float arrays), ``choice`` (``[H]`` candidate
        indices), ``loss`` (dropped influence), ``density`` (``{N: mean KV density}``) and the
        ``candidates`` used.
    """
    if not isinstance(profiles, Mapping) or not profiles:
        raise ValueError("profiles must be a non-empty mapping {length: [H, nb, nb]}")
    if solver not in ("auto", "exact", "lagrangian"):
        raise ValueError(f"solver must be 'auto', 'exact' or 'lagrangian', got {solver!r}")
    if isinstance(density_budget, Mapping):
        budgets = {int(k): float(v) for k, v in density_budget.items()}
        if budget_lengths is None:
            budget_lengths = sorted(budgets)
    else:
        if budget_lengths is None:
            budget_lengths = sorted(profiles)
        budgets = {int(n): float(density_budget) for n in budget_lengths}
    budget_lengths = [int(n) for n in budget_lengths]
    for n in budget_lengths:
        if n not in budgets:
            raise ValueError(f"density_budget has no entry for budget length {n}")
        if not 0.0 < budgets[n] <= 1.0:
            raise ValueError(f"density_budget must be in (0, 1], got {budgets[n]} at length {n}")
    if candidates is None:
        extra = [n for n in budget_lengths if n not in profiles]
        candidates = moa_candidates(sorted(profiles), extra)
    alphas, betas = (np.asarray(c, dtype=np.float64) for c in candidates)
    if alphas.shape != betas.shape or alphas.ndim != 1 or alphas.size == 0:
        raise ValueError(
            f"candidates must be two equal-length non-empty 1-D arrays, got shapes {alphas.shape} "
            f"and {betas.shape} (for short lengths pass candidates=moa_candidates(lengths, "
            "alpha_interval=...) with an interval below the reference's 1024)"
        )
    layout_kwargs = dict(
        block_size=block_size,
        max_new_tokens=0,
        sink_size=sink_size,
        minimum_cache_size=minimum_cache_size,
        split_size=split_size,
    )
    loss, cost, nbs = _candidate_tables(profiles, budget_lengths, alphas, betas, layout_kwargs)
    num_heads = loss.shape[0]
    cap = np.floor(np.asarray([budgets[n] for n in budget_lengths]) * nbs * num_heads + 1e-9)
    cap = cap.astype(np.int64)
    if np.any(cost.min(axis=1) * num_heads > cap):
        raise ValueError(
            f"density_budget {budgets} is infeasible: the sparsest candidate needs "
            f"{(cost.min(axis=1) / nbs).tolist()} per head at lengths {budget_lengths}"
        )
    if solver == "lagrangian":
        choice = _solve_lagrangian(loss, cost, cap)
    else:
        try:
            choice = _solve_exact(loss, cost, cap, max_states)
        except ValueError:
            if solver == "exact":
                raise
            choice = _solve_lagrangian(loss, cost, cap)
    dens = {
        n: float(cost[i, choice].sum() / (nbs[i] * num_heads)) for i, n in enumerate(budget_lengths)
    }
    return {
        "alphas": alphas[choice],
        "betas": betas[choice],
        "choice": choice,
        "loss": float(loss[np.arange(num_heads), choice].sum()),
        "density": dens,
        "candidates": (alphas, betas),
    }

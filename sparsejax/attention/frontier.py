"""The Sparse Frontier methods: training-free sparse attention for prefill and decoding.

Rules and defaults follow the reference (PiotrNawrot/sparse-frontier,
``sparse_frontier/modelling/attention/`` and ``configs/attention/*.yaml``), which runs each
prefill method head by head:

Prefill (causal, square ``L x L``):

* **vertical-slash** (MInference, ``minference/vertical_and_slash.py``): the last ``256`` queries'
  softmax rows estimate the pattern; vertical scores are column sums, slash scores diagonal sums;
  the top ``512`` verticals (first ``4`` forced) and top ``512`` slashes (``64`` nearest diagonals
  forced) are kept. The kernel's index conversion (``convert_vertical_slash_indexes``) covers each
  slash with 64-wide key ranges per 64-row query block and merges them; that coverage is the
  default here (``coverage="minference"``); ``coverage="exact"`` keeps exactly the selected
  diagonals.
* **FlexPrefill** (``efficient_prefilling.py::FlexPrefill``): the same estimate from the last
  ``512`` queries, with per-head adaptive budgets: the smallest ``k`` whose sorted cumulative
  (mean) score exceeds ``alpha = 0.65``, at least ``min_budget = 512``.
* **block top-k** (``minference/block.py``): mean-pooled ``q . k`` block scores (zero padded),
  the diagonal, sub-diagonal and first block forced, ``top_k`` blocks per query block
  (``chunk_size = 16``, ``top_chunks = 64``).

Decoding:

* **Quest** (``efficient_decoding.py``): pages of ``16`` keys with per-page min/max; page score
  ``sum_d max(q_d min_d, q_d max_d)`` (summed over the query heads of a KV group when pages are
  shared); the top ``token_budget / page_size`` pages before the current one plus the current
  page (budget ``1024`` tokens).
* **SnapKV** / **Ada-SnapKV** (``kv_compression.py``): importance of each key from the last
  ``256`` queries (SnapKV: softmax mean over the GQA group, summed over the window; Ada: max over
  window and group), smoothed by average pooling (kernel ``21``); the last ``128`` and first ``4``
  keys forced; SnapKV keeps ``token_capacity`` keys per KV head, Ada-SnapKV gives each head at
  least ``max(int(0.2 * capacity), 128 + 4)`` keys and shares the rest through one global top-k.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "vertical_slash_select",
    "flexprefill_select",
    "vertical_slash_token_mask",
    "vertical_slash_mask",
    "flexprefill_mask",
    "block_topk_select",
    "block_topk_mask",
    "quest_select",
    "snapkv_select",
    "ada_snapkv_select",
    "keep_to_indices",
]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_qk(q: jnp.ndarray, k: jnp.ndarray) -> tuple[int, int, int, int]:
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be [B, H, L, D], got shapes {q.shape} and {k.shape}")
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[2] != lq or k.shape[3] != d:
        raise ValueError(
            f"k must be [B, Hkv, L, D] matching q {q.shape} (square prefill), got {k.shape}"
        )
    if h % k.shape[1]:
        raise ValueError(f"q heads ({h}) must be a multiple of k heads ({k.shape[1]})")
    return b, h, lq, d


def _repeat_kv(k: jnp.ndarray, h: int) -> jnp.ndarray:
    return jnp.repeat(k, h // k.shape[1], axis=1)


def _rank_desc(x: jnp.ndarray) -> jnp.ndarray:
    """Rank of each entry along the last axis in descending order (ties: lower index first)."""
    order = jnp.argsort(-x, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def _topk_bool(x: jnp.ndarray, k: int | jnp.ndarray) -> jnp.ndarray:
    """Bool mask of the ``k`` largest entries along the last axis (``k`` may be an array)."""
    if isinstance(k, int):
        _, idx = jax.lax.top_k(x, k)
        return jnp.zeros(x.shape, bool).at[tuple(jnp.indices(idx.shape)[:-1]) + (idx,)].set(True)
    return _rank_desc(x) < jnp.asarray(k)[..., None]


def _last_window_probs(q: jnp.ndarray, k: jnp.ndarray, last_q: int) -> jnp.ndarray:
    """Softmax rows of the last ``last_q`` queries over all keys, causal. -> [B, H, last_q, L]."""
    lq, d = q.shape[2], q.shape[3]
    qw = q[:, :, lq - last_q :].astype(jnp.float32) / math.sqrt(d)
    s = jnp.einsum("bhqd,bhkd->bhqk", qw, k.astype(jnp.float32))
    qpos = jnp.arange(lq - last_q, lq)[:, None]
    s = jnp.where(jnp.arange(lq)[None, :] <= qpos, s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1)


def _diagonal_sums(a: jnp.ndarray, seq_len: int) -> jnp.ndarray:
    """Sum of ``a`` [B, H, W, L] (the last W query rows) along each diagonal distance s = i - j."""
    w = a.shape[2]
    qpos = jnp.arange(seq_len - w, seq_len)[:, None]
    s = jnp.arange(seq_len)[None, :]
    j = qpos - s
    g = jnp.take_along_axis(a, jnp.broadcast_to(jnp.clip(j, 0), a.shape), axis=-1)
    return jnp.where(j >= 0, g, 0.0).sum(axis=2)  # [B, H, L] indexed by distance s


def vertical_slash_select(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    vertical_size: int = 512,
    slash_size: int = 512,
    last_q: int = 256,
    forced_vertical: int = 4,
    forced_slash: int = 64,
) -> tuple[Bool[Array, "batch heads seq"], Bool[Array, "batch heads seq"]]:
    """Vertical-slash selection (MInference, sparse-frontier defaults 512/512/256).

    Sizes are clamped to the sequence length as in the reference (``min(size, L)``).

    Args:
        q: queries ``[B, H, L, D]``.
        k: keys ``[B, Hkv, L, D]``.
        vertical_size: verticals (key columns) kept per head.
        slash_size: slashes (diagonals) kept per head.
        last_q: number of final queries used for the estimate.
        forced_vertical: the first keys always kept (4).
        forced_slash: the nearest diagonals always kept (64).

    Returns:
        ``(vertical, slash)``: bool ``[B, H, L]``; ``vertical[j]`` keeps key column ``j``,
        ``slash[s]`` keeps the diagonal ``i - j = s``. Exactly ``min(size, L)`` of each are True.
    """
    b, h, lq, _ = _check_qk(q, k)
    for name, val in (
        ("vertical_size", vertical_size),
        ("slash_size", slash_size),
        ("last_q", last_q),
    ):
        _check_int(val, name, 1)
    _check_int(forced_vertical, "forced_vertical", 0)
    _check_int(forced_slash, "forced_slash", 0)
    vs, ss, lw = min(vertical_size, lq), min(slash_size, lq), min(last_q, lq)
    fv, fs = min(forced_vertical, vs), min(forced_slash, ss)
    return _vertical_slash_core(q, k, vs=vs, ss=ss, lw=lw, fv=fv, fs=fs)


@functools.partial(jax.jit, static_argnames=("vs", "ss", "lw", "fv", "fs"))
def _vertical_slash_core(q, k, *, vs, ss, lw, fv, fs):
    h, lq = q.shape[1], q.shape[2]
    a = _last_window_probs(q, _repeat_kv(k, h), lw)
    vert = a.sum(axis=2)
    vert = jnp.where(jnp.arange(lq) < fv, jnp.inf, vert)
    slash = _diagonal_sums(a, lq)
    slash = jnp.where(jnp.arange(lq) < fs, jnp.inf, slash)
    return _topk_bool(vert, vs), _topk_bool(slash, ss)


def _cover_size(x: jnp.ndarray, alpha: float) -> jnp.ndarray:
    """FlexPrefill's ``score_cover_topk``: count(sorted cumsum <= alpha) + 1."""
    c = jnp.cumsum(-jnp.sort(-x, axis=-1), axis=-1)
    return jnp.sum(c <= alpha, axis=-1) + 1


def flexprefill_select(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    alpha: float = 0.65,
    approximation_size: int = 512,
    min_budget: int = 512,
    forced_vertical: int = 4,
    forced_slash: int = 64,
) -> tuple[Bool[Array, "batch heads seq"], Bool[Array, "batch heads seq"]]:
    """FlexPrefill-style adaptive vertical-slash selection (sparse-frontier: 0.65 / 512 / 512).

    Per head, with ``A`` the causal softmax of the last ``approximation_size`` queries: vertical
    scores are ``mean_rows A`` and slash scores the diagonal sums divided by the window; each
    budget is ``max(min_budget, smallest k whose sorted cumulative score reaches alpha)``
    (clamped to ``L``), computed before forcing the first 4 keys and the 64 nearest diagonals.

    Returns:
        ``(vertical, slash)`` bool ``[B, H, L]`` as in `vertical_slash_select`; the counts
        differ per head.
    """
    b, h, lq, _ = _check_qk(q, k)
    if not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    _check_int(approximation_size, "approximation_size", 1)
    _check_int(min_budget, "min_budget", 1)
    _check_int(forced_vertical, "forced_vertical", 0)
    _check_int(forced_slash, "forced_slash", 0)
    lw = min(approximation_size, lq)
    return _flexprefill_core(
        q, k, alpha=float(alpha), lw=lw, min_budget=min_budget, fv=forced_vertical, fs=forced_slash
    )


@functools.partial(jax.jit, static_argnames=("alpha", "lw", "min_budget", "fv", "fs"))
def _flexprefill_core(q, k, *, alpha, lw, min_budget, fv, fs):
    h, lq = q.shape[1], q.shape[2]
    a = _last_window_probs(q, _repeat_kv(k, h), lw)
    vert = a.mean(axis=2)
    v_size = jnp.minimum(jnp.maximum(min_budget, _cover_size(vert, alpha)), lq)
    vert = jnp.where(jnp.arange(lq) < fv, jnp.inf, vert)
    slash = _diagonal_sums(a, lq) / lw
    s_size = jnp.minimum(jnp.maximum(min_budget, _cover_size(slash, alpha)), lq)
    slash = jnp.where(jnp.arange(lq) < fs, jnp.inf, slash)
    return _topk_bool(vert, v_size), _topk_bool(slash, s_size)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _minference_cover(
    slash: jnp.ndarray, seq_len: int, block: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Key coverage of the slashes per query block, as MInference's index conversion builds it.

    slash: bool [..., L] over distances. Returns (cover [..., nq, L] bool, final_end [..., nq]).
    """
    nq = -(-seq_len // block)
    end_m = (jnp.arange(nq) + 1) * block  # [nq]
    lead = slash.shape[:-1]
    dist = jnp.arange(seq_len - 1, -1, -1)  # descending distances, as the kernel sorts them
    kept = slash[..., ::-1]  # [..., L] aligned with dist

    def step(carry, xs):
        started, rs, re = carry
        d, kp = xs  # kp [..., 1] broadcast over nq
        valid = kp[..., None] & (d < end_m)
        e = jnp.maximum(end_m - d, block)
        new_range = valid & started & (e > re + block)
        extend = valid & started & (e > re) & ~new_range
        first = valid & ~started
        emit = new_range
        out = (emit, rs, re)
        rs2 = jnp.where(first | new_range, e - block, rs)
        re2 = jnp.where(first | new_range, e, jnp.where(extend, re + block, re))
        return (started | valid, rs2, re2), out

    shape = lead + (nq,)
    init = (jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.int32))
    kept_t = jnp.moveaxis(kept, -1, 0)
    (started, rs, re), (emit, ers, ere) = jax.lax.scan(step, init, (dist, kept_t))
    size = seq_len + 2 * block + 1
    lanes = math.prod(shape)
    # closed ranges (emitted during the scan) plus the final open range, as +1/-1 at start/end
    flags = jnp.concatenate([emit.reshape(-1, lanes), started.reshape(1, lanes)], axis=0)
    starts = jnp.concatenate([ers.reshape(-1, lanes), rs.reshape(1, lanes)], axis=0)
    ends = jnp.concatenate([ere.reshape(-1, lanes), re.reshape(1, lanes)], axis=0)
    lane = jnp.broadcast_to(jnp.arange(lanes)[None, :], flags.shape)
    w = flags.astype(jnp.int32)
    delta = jnp.zeros((lanes, size), jnp.int32)
    delta = delta.at[lane, jnp.clip(starts, 0, size - 1)].add(w)
    delta = delta.at[lane, jnp.clip(ends, 0, size - 1)].add(-w)
    delta = delta.reshape(shape + (size,))
    cover = jnp.cumsum(delta, axis=-1)[..., :seq_len] > 0
    final_end = jnp.where(started, re, 0)
    return cover, final_end


def vertical_slash_token_mask(
    vertical: Bool[Array, "*lead seq"],
    slash: Bool[Array, "*lead seq"],
    *,
    coverage: str = "minference",
    block_size: int = 64,
    rows: Int[Array, " r"] | None = None,
) -> Bool[Array, "*lead r seq"]:
    """Token mask ``[..., L, L]`` of a vertical-slash selection (causal).

    Args:
        vertical: kept key columns ``[..., L]``.
        slash: kept diagonal distances ``[..., L]`` (``s = i - j``).
        coverage: ``"minference"`` reproduces the reference kernel's index conversion (for each
            ``block_size``-row query block, every slash ``s`` covers keys
            ``[max(end - s, B) - B, max(end - s, B))``, ranges closer than ``B`` are merged by
            extending them ``B`` keys at a time, and vertical columns beyond the last range are
            dropped); ``"exact"`` keeps ``j <= i`` with ``vertical[j] or slash[i - j]``.
        block_size: query/key block of the conversion (64).
        rows: optional query rows to evaluate (int ``[R]``); default all ``L`` rows.

    Returns:
        Bool ``[..., L, L]`` (``[..., R, L]`` with ``rows``).
    """
    if vertical.shape != slash.shape:
        raise ValueError(
            f"vertical and slash must have the same shape, got {vertical.shape}, {slash.shape}"
        )
    if coverage not in ("minference", "exact"):
        raise ValueError(f"coverage must be 'minference' or 'exact', got {coverage!r}")
    _check_int(block_size, "block_size", 1)
    lq = vertical.shape[-1]
    rows = jnp.arange(lq) if rows is None else jnp.asarray(rows) % lq
    return _vs_token_core(vertical, slash, rows, coverage=coverage, block_size=block_size)


@functools.partial(jax.jit, static_argnames=("coverage", "block_size"))
def _vs_token_core(vertical, slash, rows, *, coverage, block_size):
    lq = vertical.shape[-1]
    i = rows[:, None]
    j = jnp.arange(lq)[None, :]
    causal = j <= i
    if coverage == "exact":
        diag = jnp.take(slash, jnp.clip(i - j, 0, lq - 1), axis=-1)  # [..., R, L]
        return causal & (vertical[..., None, :] | diag)
    cover, final_end = _minference_cover(slash, lq, block_size)  # [..., nq, L], [..., nq]
    qb = rows // block_size
    cover_rows = jnp.take(cover, qb, axis=-2)  # [..., L, L]
    end_rows = jnp.take(final_end, qb, axis=-1)  # [..., L]
    vert_rows = vertical[..., None, :] & (j < end_rows[..., :, None])
    return causal & (cover_rows | vert_rows)


def _as_block_mask(token_mask: jnp.ndarray, block_q: int, block_kv: int):
    from sparsejax.attention.mask import BlockMask

    return BlockMask.from_dense(token_mask, block_q, block_kv)


def vertical_slash_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    vertical_size: int = 512,
    slash_size: int = 512,
    last_q: int = 256,
    coverage: str = "minference",
    block_size: int = 64,
):
    """Vertical-slash prefill mask as a ``BlockMask`` (``block_size`` blocks), see
    `vertical_slash_select` and `vertical_slash_token_mask`."""
    v, s = vertical_slash_select(
        q, k, vertical_size=vertical_size, slash_size=slash_size, last_q=last_q
    )
    tok = vertical_slash_token_mask(v, s, coverage=coverage, block_size=block_size)
    return _as_block_mask(tok, block_size, block_size)


def flexprefill_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    alpha: float = 0.65,
    approximation_size: int = 512,
    min_budget: int = 512,
    coverage: str = "minference",
    block_size: int = 64,
):
    """FlexPrefill prefill mask as a ``BlockMask``, see `flexprefill_select`."""
    v, s = flexprefill_select(
        q, k, alpha=alpha, approximation_size=approximation_size, min_budget=min_budget
    )
    tok = vertical_slash_token_mask(v, s, coverage=coverage, block_size=block_size)
    return _as_block_mask(tok, block_size, block_size)


def block_topk_select(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    block_size: int = 16,
    top_k: int = 64,
) -> Bool[Array, "batch heads nb nb"]:
    """Block top-k selection (MInference block-sparse; sparse-frontier ``chunk 16, top 64``).

    Query and key blocks are mean pooled (the partial last block zero padded, as in the
    reference); query block ``m`` keeps its diagonal block, the sub-diagonal block and block 0
    (forced) plus the highest-scoring causal blocks, ``min(top_k, m + 1)`` in all.

    Args:
        q: queries ``[B, H, L, D]``.
        k: keys ``[B, Hkv, L, D]``.
        block_size: block edge (16).
        top_k: blocks per query block (64; the reference requires ``>= 3``).

    Returns:
        Bool ``[B, H, nb, nb]`` (lower block triangular), ``nb = ceil(L / block_size)``.
    """
    b, h, lq, d = _check_qk(q, k)
    _check_int(block_size, "block_size", 1)
    _check_int(top_k, "top_k", 3)
    return _block_topk_core(q, k, block_size=block_size, top_k=top_k)


@functools.partial(jax.jit, static_argnames=("block_size", "top_k"))
def _block_topk_core(q, k, *, block_size, top_k):
    b, h, lq, d = q.shape
    kk = _repeat_kv(k, h)
    nb = -(-lq // block_size)
    pad = nb * block_size - lq

    def pool(x):
        x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, pad), (0, 0)))
        return x.reshape(b, h, nb, block_size, d).sum(axis=3) / block_size

    p = jnp.einsum("bhmd,bhnd->bhmn", pool(q), pool(kk))
    m = jnp.arange(nb)[:, None]
    n = jnp.arange(nb)[None, :]
    forced = (n == m) | (n == m - 1) | (n == 0)
    p = jnp.where(forced, jnp.inf, p)
    p = jnp.where(n <= m, p, -jnp.inf)
    keep = _topk_bool(p, min(top_k, nb))
    return keep & (n <= m)


def block_topk_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    block_size: int = 16,
    top_k: int = 64,
):
    """Block top-k prefill mask as a ``BlockMask`` (kept blocks AND causal)."""
    from sparsejax.attention.mask import BlockMask
    from sparsejax.attention.static import causal_mask

    blocks = block_topk_select(q, k, block_size=block_size, top_k=top_k)
    lq = q.shape[2]
    kept = BlockMask.from_blocks(
        blocks, block_size, block_size, lq, lq, max_kv_blocks=min(top_k, blocks.shape[-1])
    )
    return kept & causal_mask(lq, block_q=block_size, block_kv=block_size)


def quest_select(
    q: Float[Array, "batch heads dim"],
    k: Float[Array, "batch kv_heads kv_len dim"],
    *,
    page_size: int = 16,
    token_budget: int = 1024,
    share_pages: bool = True,
) -> Bool[Array, "batch heads kv_len"]:
    """Quest page selection for one decoding query (sparse-frontier: pages 16, budget 1024).

    ``k`` is the KV cache with the current token's key last (``kv_len`` tokens). Pages
    ``0 .. c - 1`` before the current page ``c = (kv_len - 1) // page_size`` are scored by
    ``sum_d max(q_d * min_d, q_d * max_d)`` (summed over the query heads of a KV group when
    ``share_pages``); the top ``token_budget // page_size`` pages and the current page are kept.
    When ``c <= token_budget // page_size`` (the reference asserts against this) everything is kept.

    Returns:
        Bool ``[B, H, kv_len]`` keep mask per query head.
    """
    if q.ndim != 3 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q must be [B, H, D] and k [B, Hkv, L, D], got {q.shape} and {k.shape}")
    b, h, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"q heads ({h}) must be a multiple of k heads ({hkv})")
    _check_int(page_size, "page_size", 1)
    _check_int(token_budget, "token_budget", page_size)
    if token_budget % page_size:
        raise ValueError(
            f"token_budget ({token_budget}) must be divisible by page_size ({page_size})"
        )
    page_budget = token_budget // page_size
    cur = (lk - 1) // page_size
    if cur <= page_budget:
        return jnp.ones((b, h, lk), bool)
    return _quest_core(
        q, k, page_size=page_size, page_budget=page_budget, share_pages=bool(share_pages)
    )


@functools.partial(jax.jit, static_argnames=("page_size", "page_budget", "share_pages"))
def _quest_core(q, k, *, page_size, page_budget, share_pages):
    b, h, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    cur = (lk - 1) // page_size
    g = h // hkv
    kp = k[:, :, : cur * page_size].astype(jnp.float32).reshape(b, hkv, cur, page_size, d)
    kmin, kmax = kp.min(axis=3), kp.max(axis=3)  # [B, Hkv, P, D]
    kmin, kmax = jnp.repeat(kmin, g, axis=1), jnp.repeat(kmax, g, axis=1)
    qf = q.astype(jnp.float32)[:, :, None, :]
    scores = jnp.maximum(qf * kmin, qf * kmax).sum(-1)  # [B, H, P]
    if share_pages:
        scores = jnp.repeat(scores.reshape(b, hkv, g, cur).sum(2), g, axis=1)
    pages = _topk_bool(scores, page_budget)  # [B, H, P]
    tok = jnp.repeat(pages, page_size, axis=-1)
    tail = jnp.ones((b, h, lk - cur * page_size), bool)
    return jnp.concatenate([tok, tail], axis=-1)


def _snap_scores(q, k, window, reduce):
    b, h, lq, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    w = min(window, lq)
    a = _last_window_probs(q, _repeat_kv(k, h), w)  # [B, H, w, L]
    a = a.reshape(b, hkv, g, w, lq)
    if reduce == "mean":
        return a.mean(axis=2).sum(axis=2)
    return a.max(axis=3).max(axis=2)


def _avg_pool(x: jnp.ndarray, kernel: int) -> jnp.ndarray:
    """``F.avg_pool1d(kernel, stride 1, padding kernel // 2)`` with zero padding counted."""
    p = kernel // 2
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(p, p)])
    c = jnp.cumsum(jnp.pad(xp, [(0, 0)] * (x.ndim - 1) + [(1, 0)]), axis=-1)
    out_len = x.shape[-1] + 2 * p - kernel + 1
    return (c[..., kernel : kernel + out_len] - c[..., :out_len]) / kernel


def _check_snap(q, k, token_capacity, window, kernel_size, local_window, prefix_tokens):
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be [B, H, L, D], got shapes {q.shape} and {k.shape}")
    _check_qk(q, k)
    _check_int(token_capacity, "token_capacity", 1)
    _check_int(window, "window", 1)
    _check_int(kernel_size, "kernel_size", 1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (the pooled length must equal L), got {kernel_size}"
        )
    _check_int(local_window, "local_window", 0)
    _check_int(prefix_tokens, "prefix_tokens", 0)


def _forced_importance(imp, local_window, prefix_tokens):
    lk = imp.shape[-1]
    pos = jnp.arange(lk)
    forced = (pos >= lk - local_window) | (pos < prefix_tokens)
    return jnp.where(forced, jnp.inf, imp)


def snapkv_select(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    token_capacity: int = 1024,
    window: int = 256,
    kernel_size: int = 21,
    local_window: int = 128,
    prefix_tokens: int = 4,
) -> Bool[Array, "batch kv_heads seq"]:
    """SnapKV KV-cache compression after prefill (sparse-frontier: 1024 / 256 / 21 / 128 / 4).

    Returns:
        Bool ``[B, Hkv, L]`` keep mask with exactly ``min(token_capacity, L)`` keys per KV head.

    Raises:
        ValueError: ``min(token_capacity, L) <= local_window + prefix_tokens`` (the reference's
            assertion), bad shapes or sizes.
    """
    _check_snap(q, k, token_capacity, window, kernel_size, local_window, prefix_tokens)
    lk = k.shape[2]
    cap = min(token_capacity, lk)
    if cap <= local_window + prefix_tokens:
        raise ValueError(
            f"token_capacity (min with L: {cap}) must exceed local_window + prefix_tokens "
            f"({local_window} + {prefix_tokens})"
        )
    return _snap_core(
        q,
        k,
        window=window,
        kernel_size=kernel_size,
        local_window=local_window,
        prefix_tokens=prefix_tokens,
        cap=cap,
    )


@functools.partial(
    jax.jit, static_argnames=("window", "kernel_size", "local_window", "prefix_tokens", "cap")
)
def _snap_core(q, k, *, window, kernel_size, local_window, prefix_tokens, cap):
    imp = _avg_pool(_snap_scores(q, k, window, "mean"), kernel_size)
    imp = _forced_importance(imp, local_window, prefix_tokens)
    return _topk_bool(imp, cap)


def ada_snapkv_select(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    token_capacity: int = 1024,
    window: int = 256,
    kernel_size: int = 21,
    local_window: int = 128,
    prefix_tokens: int = 4,
    min_head_capacity_ratio: float = 0.2,
) -> Bool[Array, "batch kv_heads seq"]:
    """Ada-SnapKV: per-head budgets from one global top-k (sparse-frontier defaults).

    Importance is the max over window queries and the GQA group, pooled as in SnapKV. Each KV
    head first keeps its top ``m = max(int(token_capacity * ratio), local_window + prefix_tokens)``
    keys; the remaining ``Hkv * token_capacity - Hkv * m`` keys are the global top-k of the rest
    over all heads (per batch element).

    Returns:
        Bool ``[B, Hkv, L]``; each head keeps at least ``m`` keys, ``Hkv * token_capacity`` in all.

    Raises:
        ValueError: violated reference assertions (``window < L``, capacities), bad shapes.
    """
    _check_snap(q, k, token_capacity, window, kernel_size, local_window, prefix_tokens)
    if not 0.0 <= float(min_head_capacity_ratio) <= 1.0:
        raise ValueError(
            f"min_head_capacity_ratio must be in [0, 1], got {min_head_capacity_ratio!r}"
        )
    hkv, lk = k.shape[1], k.shape[2]
    if window >= lk:
        raise ValueError(f"window ({window}) must be smaller than the sequence length ({lk})")
    if token_capacity > lk:
        raise ValueError(f"token_capacity ({token_capacity}) must be <= the sequence length ({lk})")
    if token_capacity < local_window + prefix_tokens:
        raise ValueError(
            f"token_capacity ({token_capacity}) must be >= local_window + prefix_tokens "
            f"({local_window} + {prefix_tokens})"
        )
    m = max(int(token_capacity * min_head_capacity_ratio), local_window + prefix_tokens)
    return _ada_core(
        q,
        k,
        window=window,
        kernel_size=kernel_size,
        local_window=local_window,
        prefix_tokens=prefix_tokens,
        m=m,
        rest=hkv * token_capacity - hkv * m,
    )


@functools.partial(
    jax.jit, static_argnames=("window", "kernel_size", "local_window", "prefix_tokens", "m", "rest")
)
def _ada_core(q, k, *, window, kernel_size, local_window, prefix_tokens, m, rest):
    b, hkv, lk = k.shape[0], k.shape[1], k.shape[2]
    imp = _avg_pool(_snap_scores(q, k, window, "max"), kernel_size)
    imp = _forced_importance(imp, local_window, prefix_tokens)
    sel = _topk_bool(imp, m)
    if rest > 0:
        flat = jnp.where(sel, -jnp.inf, imp).reshape(b, hkv * lk)
        extra = _topk_bool(flat, rest).reshape(b, hkv, lk)
        sel = sel | extra
    return sel


def keep_to_indices(
    keep: Bool[Array, "*lead n"], size: int
) -> tuple[Int[Array, "*lead size"], Bool[Array, "*lead size"]]:
    """Kept positions of a keep mask as padded ascending index lists (jit-compatible).

    Args:
        keep: bool ``[..., N]``.
        size: static list length (e.g. the capacity); extra kept positions are dropped.

    Returns:
        ``(indices, valid)``: int32 ``[..., size]`` (padding 0) and bool ``[..., size]``.
    """
    _check_int(size, "size", 1)
    n = keep.shape[-1]
    if size > n:
        keep = jnp.pad(keep, [(0, 0)] * (keep.ndim - 1) + [(0, size - n)])
        n = size
    key = jnp.where(keep, jnp.arange(n), n + jnp.arange(n))
    order = jnp.argsort(key, axis=-1)[..., :size]
    valid = jnp.take_along_axis(keep, order, axis=-1)
    return jnp.where(valid, order, 0).astype(jnp.int32), valid

"""Vertical-slash and FlexPrefill (The Sparse Frontier / MInference), as lazy block masks.

Rules and defaults follow PiotrNawrot/sparse-frontier (``sparse_frontier/modelling/attention/``),
run head by head on a causal, square ``L x L`` prefill:

* **vertical-slash** (MInference, ``minference/vertical_and_slash.py``): the last ``256`` queries'
  softmax rows estimate the pattern; vertical scores are column sums, slash scores diagonal sums;
  the top ``512`` verticals (first ``4`` forced) and top ``512`` slashes (``64`` nearest diagonals
  forced) are kept. The kernel's index conversion (``convert_vertical_slash_indexes``) covers each
  slash with 64-wide key ranges per 64-row query block and merges them; that coverage is the
  default (``coverage="minference"``); ``coverage="exact"`` keeps exactly the selected diagonals.
* **FlexPrefill** (``efficient_prefilling.py::FlexPrefill``): the same estimate from the last
  ``512`` queries, with per-head adaptive budgets: the smallest ``k`` whose sorted cumulative
  (mean) score exceeds ``alpha = 0.65``, at least ``min_budget = 512``.

The masks never hold an ``[L, L]`` token mask: the `VerticalSlashTokens` predicate reads the
``[B, H, L]`` lines (and, for MInference coverage, the ``[B, H, nq, L]`` per-query-block key
coverage) inside the tiles a kernel visits, and the block map is computed from the lines.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_choice, check_float, check_int, must_be
from sparsejax.attention._qk import check_qk, last_window_probs, repeat_kv, topk_rows
from sparsejax.attention.mask import (
    EMPTY,
    FULL,
    PARTIAL,
    BlockMask,
    TokenPredicate,
    array_namespace,
    register_predicate,
)

__all__ = [
    "VerticalSlashTokens",
    "flexprefill_lines",
    "flexprefill_mask",
    "vertical_slash_lines",
    "vertical_slash_mask",
    "vertical_slash_tokens",
]

_COVERAGES = ("minference", "exact")


def _diagonal_sums(a: jax.Array, seq_len: int) -> jax.Array:
    """Sum of ``a [B, H, W, L]`` (the last W query rows) along each diagonal distance ``i - j``."""
    w = a.shape[2]
    qpos = jnp.arange(seq_len - w, seq_len)[:, None]
    s = jnp.arange(seq_len)[None, :]
    j = qpos - s
    g = jnp.take_along_axis(a, jnp.broadcast_to(jnp.clip(j, 0), a.shape), axis=-1)
    return jnp.where(j >= 0, g, 0.0).sum(axis=2)  # [B, H, L] indexed by distance s


def vertical_slash_lines(
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
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        vertical_size: Verticals (key columns) kept per head.
        slash_size: Slashes (diagonals) kept per head.
        last_q: Number of final queries used for the estimate.
        forced_vertical: The first keys always kept (4).
        forced_slash: The nearest diagonals always kept (64).

    Returns:
        ``(vertical, slash)``: bool ``[B, H, L]``; ``vertical[j]`` keeps key column ``j``,
        ``slash[s]`` keeps the diagonal ``i - j = s``. Exactly ``min(size, L)`` of each are True.
    """
    _, _, lq, _ = check_qk(q, k)
    vertical_size = check_int(vertical_size, "vertical_size", minimum=1)
    slash_size = check_int(slash_size, "slash_size", minimum=1)
    last_q = check_int(last_q, "last_q", minimum=1)
    forced_vertical = check_int(forced_vertical, "forced_vertical", minimum=0)
    forced_slash = check_int(forced_slash, "forced_slash", minimum=0)
    vs, ss, lw = min(vertical_size, lq), min(slash_size, lq), min(last_q, lq)
    fv, fs = min(forced_vertical, vs), min(forced_slash, ss)
    # budgets are traced, so a sweep over them compiles once per (shape, last_q)
    budgets = jnp.asarray([vs, ss, fv, fs], jnp.int32)
    return _vertical_slash_core(q, k, budgets, lw=lw)


@functools.partial(jax.jit, static_argnames=("lw",))
def _vertical_slash_core(q, k, budgets, *, lw):
    vs, ss, fv, fs = budgets
    h, lq = q.shape[1], q.shape[2]
    a = last_window_probs(q, repeat_kv(k, h), lw)
    vert = jnp.where(jnp.arange(lq) < fv, jnp.inf, a.sum(axis=2))
    slash = jnp.where(jnp.arange(lq) < fs, jnp.inf, _diagonal_sums(a, lq))
    return topk_rows(vert, vs), topk_rows(slash, ss)


def _cover_size(x: jax.Array, alpha: float) -> jax.Array:
    """FlexPrefill's ``score_cover_topk``: count(sorted cumsum <= alpha) + 1."""
    c = jnp.cumsum(-jnp.sort(-x, axis=-1), axis=-1)
    return jnp.sum(c <= alpha, axis=-1) + 1


def flexprefill_lines(
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

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        alpha: Cumulative score each budget must cover, in ``(0, 1]``.
        approximation_size: Number of final queries used for the estimate.
        min_budget: Smallest budget per head.
        forced_vertical: The first keys always kept.
        forced_slash: The nearest diagonals always kept.

    Returns:
        ``(vertical, slash)`` bool ``[B, H, L]`` as in `vertical_slash_lines`; the counts
        differ per head.
    """
    _, _, lq, _ = check_qk(q, k)
    alpha = check_float(alpha, "alpha", minimum=0.0, exclusive_minimum=True, maximum=1.0)
    approximation_size = check_int(approximation_size, "approximation_size", minimum=1)
    min_budget = check_int(min_budget, "min_budget", minimum=1)
    forced_vertical = check_int(forced_vertical, "forced_vertical", minimum=0)
    forced_slash = check_int(forced_slash, "forced_slash", minimum=0)
    lw = min(approximation_size, lq)
    budgets = jnp.asarray([min_budget, forced_vertical, forced_slash], jnp.int32)
    return _flexprefill_core(q, k, jnp.float32(alpha), budgets, lw=lw)


@functools.partial(jax.jit, static_argnames=("lw",))
def _flexprefill_core(q, k, alpha, budgets, *, lw):
    min_budget, fv, fs = budgets
    h, lq = q.shape[1], q.shape[2]
    a = last_window_probs(q, repeat_kv(k, h), lw)
    vert = a.mean(axis=2)
    v_size = jnp.minimum(jnp.maximum(min_budget, _cover_size(vert, alpha)), lq)
    vert = jnp.where(jnp.arange(lq) < fv, jnp.inf, vert)
    slash = _diagonal_sums(a, lq) / lw
    s_size = jnp.minimum(jnp.maximum(min_budget, _cover_size(slash, alpha)), lq)
    slash = jnp.where(jnp.arange(lq) < fs, jnp.inf, slash)
    return topk_rows(vert, v_size), topk_rows(slash, s_size)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _minference_cover(slash: jax.Array, seq_len: int, block: int) -> tuple[jax.Array, jax.Array]:
    """Key coverage of the slashes per query block, as MInference's index conversion builds it.

    slash: bool ``[..., L]`` over distances. Returns ``(cover [..., nq, L] bool, end [..., nq])``.
    """
    nq = -(-seq_len // block)
    end_m = (jnp.arange(nq) + 1) * block  # [nq]
    lead = slash.shape[:-1]
    dist = jnp.arange(seq_len - 1, -1, -1)  # descending distances, as the kernel sorts them
    kept = slash[..., ::-1]  # [..., L] aligned with dist

    def step(carry, xs):
        started, rs, re = carry
        d, kp = xs
        valid = kp[..., None] & (d < end_m)
        e = jnp.maximum(end_m - d, block)
        new_range = valid & started & (e > re + block)
        extend = valid & started & (e > re) & ~new_range
        first = valid & ~started
        out = (new_range, rs, re)
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


@register_predicate(data_fields=("vertical", "slash", "cover", "end"))
class VerticalSlashTokens(TokenPredicate):
    """Causal vertical-slash token predicate over ``[B, H, L]`` lines (no ``[L, L]`` array).

    ``coverage="exact"``: ``j <= i and (vertical[j] or slash[i - j])``. ``coverage="minference"``:
    ``j <= i and (cover[i // block_size, j] or (vertical[j] and j < end[i // block_size]))`` with
    ``cover``/``end`` MInference's per-query-block key ranges (``None`` for exact coverage).
    """

    vertical: Array
    slash: Array
    cover: Array | None
    end: Array | None
    block_size: int
    coverage: str

    def __call__(self, b, h, q, kv):
        xp = array_namespace(self.vertical, b, h, q, kv)
        vert, slash = xp.asarray(self.vertical), xp.asarray(self.slash)
        n = vert.shape[-1]
        qc, kc = xp.clip(q, 0, n - 1), xp.clip(kv, 0, n - 1)
        causal = kv <= q
        if self.coverage == "exact":
            return causal & (vert[b, h, kc] | slash[b, h, xp.clip(q - kv, 0, n - 1)])
        m = qc // self.block_size
        cover, end = xp.asarray(self.cover), xp.asarray(self.end)
        return causal & (cover[b, h, m, kc] | (vert[b, h, kc] & (kc < end[b, h, m])))


def _check_lines(vertical, slash, coverage, block_size) -> int:
    if getattr(vertical, "shape", None) != getattr(slash, "shape", None):
        raise ValueError(
            must_be("slash", f"of the shape of vertical {getattr(vertical, 'shape', None)}",
                    f"shape {getattr(slash, 'shape', None)}", raw=True)
        )
    check_choice(coverage, "coverage", _COVERAGES)
    return check_int(block_size, "block_size", minimum=1)


def _predicate(vertical, slash, coverage, block_size) -> VerticalSlashTokens:
    if coverage == "exact":
        return VerticalSlashTokens(vertical, slash, None, None, block_size, coverage)
    cover, end = _minference_cover(slash, vertical.shape[-1], block_size)
    return VerticalSlashTokens(vertical, slash, cover, end, block_size, coverage)


def vertical_slash_tokens(
    vertical: Bool[Array, "*lead seq"],
    slash: Bool[Array, "*lead seq"],
    *,
    coverage: str = "minference",
    block_size: int = 64,
    rows: Int[Array, " r"] | None = None,
) -> Bool[Array, "*lead r seq"]:
    """Dense token mask of a vertical-slash selection (for inspection and tests; O(rows x L)).

    Args:
        vertical: Kept key columns ``[..., L]``.
        slash: Kept diagonal distances ``[..., L]`` (``s = i - j``).
        coverage: ``"minference"`` reproduces the reference kernel's index conversion (for each
            ``block_size``-row query block, every slash ``s`` covers keys
            ``[max(end - s, B) - B, max(end - s, B))``, ranges closer than ``B`` are merged by
            extending them ``B`` keys at a time, and vertical columns beyond the last range are
            dropped); ``"exact"`` keeps ``j <= i`` with ``vertical[j] or slash[i - j]``.
        block_size: Query/key block of the conversion (64).
        rows: Optional query rows to evaluate (int ``[R]``); default all ``L`` rows.

    Returns:
        Bool ``[..., L, L]`` (``[..., R, L]`` with ``rows``).
    """
    block_size = _check_lines(vertical, slash, coverage, block_size)
    n = vertical.shape[-1]
    rows = jnp.arange(n) if rows is None else jnp.asarray(rows) % n
    return _tokens(jnp.asarray(vertical), jnp.asarray(slash), rows, coverage, block_size)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _tokens(vertical, slash, rows, coverage, block_size):
    lead, n = vertical.shape[:-1], vertical.shape[-1]
    pred = _predicate(vertical.reshape(1, -1, n), slash.reshape(1, -1, n), coverage, block_size)
    h = jnp.arange(pred.vertical.shape[1])[:, None, None]
    out = pred(jnp.zeros((1, 1, 1), jnp.int32), h, rows[None, :, None], jnp.arange(n)[None, None])
    return out.reshape(lead + (rows.shape[0], n))


def _block_map(pred: VerticalSlashTokens, seq_len: int, block_size: int) -> jax.Array:
    """``int8[B, H, nb, nb]`` block kinds of a vertical-slash predicate, from the lines alone."""
    n, bs = seq_len, block_size
    nb = -(-n // bs)
    pad = nb * bs - n
    pos = jnp.arange(n)
    m = jnp.arange(nb)[:, None]
    j = jnp.arange(nb)[None, :]
    below, diag = j < m, j == m
    if pred.coverage == "minference":
        kept = pred.cover | (pred.vertical[..., None, :] & (pos < pred.end[..., None]))
        widths = [(0, 0)] * (kept.ndim - 1) + [(0, pad)]
        shape = kept.shape[:-1] + (nb, bs)
        any_ = jnp.pad(kept, widths, constant_values=False).reshape(shape).any(-1)
        all_ = jnp.pad(kept, widths, constant_values=True).reshape(shape).all(-1)
        return jnp.where(
            below & all_, FULL, jnp.where((below | diag) & any_, PARTIAL, EMPTY)
        ).astype(jnp.int8)
    # exact: a block holds a kept token iff it holds a kept column or a kept distance
    widths = [(0, 0)] * (pred.vertical.ndim - 1) + [(0, pad)]
    vcols = jnp.pad(pred.vertical, widths).reshape(pred.vertical.shape[:-1] + (nb, bs)).any(-1)
    csum = jnp.concatenate(
        [jnp.zeros(pred.slash.shape[:-1] + (1,), jnp.int32), jnp.cumsum(pred.slash, -1)], -1
    )
    row_end = jnp.minimum((m + 1) * bs, n) - 1  # last valid query of block m
    lo = jnp.clip(m * bs - j * bs - bs + 1, 0, n)  # smallest distance in block (m, j)
    hi = jnp.clip(row_end - j * bs, -1, n - 1)  # largest distance in block (m, j)
    count = jnp.take(csum, hi + 1, axis=-1) - jnp.take(csum, lo, axis=-1)
    any_ = vcols[..., None, :] | (count > 0)
    return jnp.where((below | diag) & any_, PARTIAL, EMPTY).astype(jnp.int8)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _build(vertical, slash, coverage, block_size):
    pred = _predicate(vertical, slash, coverage, block_size)
    return _block_map(pred, vertical.shape[-1], block_size), pred


def _lines_mask(vertical, slash, coverage, block_size) -> BlockMask:
    block_size = _check_lines(vertical, slash, coverage, block_size)
    n = vertical.shape[-1]
    block_map, pred = _build(vertical, slash, coverage, block_size)
    return BlockMask.create(
        block_map,
        pred,
        seq_q=n,
        seq_kv=n,
        block_q=block_size,
        block_kv=block_size,
    )


def vertical_slash_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    vertical_size: int = 512,
    slash_size: int = 512,
    last_q: int = 256,
    coverage: str = "minference",
    block_size: int = 64,
) -> BlockMask:
    """Vertical-slash prefill mask (`vertical_slash_lines` + a lazy `VerticalSlashTokens`).

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        vertical_size: Verticals kept per head.
        slash_size: Slashes kept per head.
        last_q: Number of final queries used for the estimate.
        coverage: ``"minference"`` or ``"exact"`` (see `vertical_slash_tokens`).
        block_size: Block edge of the mask and of MInference's index conversion (64).

    Returns:
        A dynamic ``BlockMask`` ``[B, H, L, L]`` with ``(block_size, block_size)`` blocks; no
        ``[L, L]`` array is built.
    """
    v, s = vertical_slash_lines(
        q, k, vertical_size=vertical_size, slash_size=slash_size, last_q=last_q
    )
    return _lines_mask(v, s, coverage, block_size)


def flexprefill_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    alpha: float = 0.65,
    approximation_size: int = 512,
    min_budget: int = 512,
    coverage: str = "minference",
    block_size: int = 64,
) -> BlockMask:
    """FlexPrefill prefill mask (`flexprefill_lines` + a lazy `VerticalSlashTokens`).

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        alpha: Cumulative score each budget must cover.
        approximation_size: Number of final queries used for the estimate.
        min_budget: Smallest budget per head.
        coverage: ``"minference"`` or ``"exact"`` (see `vertical_slash_tokens`).
        block_size: Block edge of the mask and of the index conversion (64).

    Returns:
        A dynamic ``BlockMask`` ``[B, H, L, L]``; no ``[L, L]`` array is built.
    """
    v, s = flexprefill_lines(
        q, k, alpha=alpha, approximation_size=approximation_size, min_budget=min_budget
    )
    return _lines_mask(v, s, coverage, block_size)

"""XLA block-sparse attention: gathers only the kept KV blocks of each query block.

For a query block (a *row* of the block map) the kernel metadata lists its ``n`` kept KV blocks;
the path gathers those ``n * block_kv`` keys and values as one ``[n * block_kv, D]`` operand,
computes the ``[rows, n * block_kv]`` logits in one plain batched matmul (float queries carry the
logit scale), masks only where blocks are partial (or padding: a static part of full blocks only
has no mask pass at all) and takes an exact softmax over them (all kept keys of a row are present
at once, so no running rescaling is needed; the Pallas kernels use the online form). Work and
memory scale with the kept blocks, not with ``seq_q * seq_kv``.

Rows have different numbers of kept blocks (causal masks: 1 to ``nq``). For a static mask the rows
are sorted by count and split into at most ``max_buckets`` buckets, each padded only to its own
largest count (bucket boundaries minimise the padded work, by dynamic programming over the
distinct counts); a dynamic mask uses one bucket padded to ``max_kv_blocks``. Each bucket is
processed in chunks of rows by a ``lax.scan`` that carries the output and writes each chunk in
place; each chunk is rematerialised in the backward pass (``jax.checkpoint``), so gradients
(through the gathers, as scatter-adds) never store the probabilities of more than one chunk.

The carried output starts as the scaled queries (when ``Dv == D``; rows a static mask leaves empty
are zeroed in the same pass): a chunk reads its query rows from the buffer and then overwrites them
with its output. The program makes one pass over ``q`` besides the kept blocks' work: no
zero-filled output, no stacked per-step results, no final transpose (before this, those were three
extra passes over a ``q``-sized array per call: 8 MiB each at 4k tokens, 8 heads, ``D = 64``).

When the mask does not vary over heads and there are fewer KV heads than query heads (GQA), the
``G`` query heads that share a KV head are stacked into ``G * block_q`` rows so each KV block is
gathered once per group.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._blocks import EMPTY, FULL, PARTIAL, pack_indices, slot_mask
from sparsejax._pallas import pad_axis
from sparsejax.attention._tiles import kernel_blocks, may_have_partial, tile_mask
from sparsejax.attention.mask import BlockMask

# Target bytes of float32 logits per lax.map step: a step's logits, probabilities and gathered
# K/V stay cache-sized (on the 2-core CI CPU 1 MiB ran a 4k-token, 10%-dense call in 14% less CPU
# time than 4 MiB; a row above the target is one step on its own).
_CHUNK_BYTES = 2**20
_MAX_BUCKETS = 8


def _split_counts(counts: np.ndarray, max_buckets: int) -> list[tuple[int, int]]:
    """Partition the distinct positive counts into <= max_buckets contiguous ranges minimising
    ``sum(rows_in_range * max_count_in_range)`` (using the fewest ranges within 10% of the
    optimum). Returns ``[(lo, hi)]`` count ranges."""
    values, freq = np.unique(counts[counts > 0], return_counts=True)
    nv = values.size
    if nv == 0:
        return []
    nb = min(max_buckets, nv)
    cum = np.concatenate([[0], np.cumsum(freq)])
    inf = np.inf
    # best[g][j]: min cost covering values[:j] with g groups; values sorted ascending.
    best = np.full((nb + 1, nv + 1), inf)
    arg = np.zeros((nb + 1, nv + 1), np.int64)
    best[0, 0] = 0.0
    for g in range(1, nb + 1):
        for j in range(1, nv + 1):
            starts = np.arange(j)
            cost = best[g - 1, starts] + (cum[j] - cum[starts]) * values[j - 1]
            s = int(np.argmin(cost))
            best[g, j], arg[g, j] = cost[s], s
    # Fewest buckets within 10% of the best padded work: each bucket is one more compiled loop.
    costs = best[1:, nv]
    g = int(np.nonzero(costs <= 1.1 * costs.min())[0][0]) + 1
    ranges, j = [], nv
    while g > 0:
        s = arg[g, j]
        ranges.append((int(values[s]), int(values[j - 1])))
        j, g = s, g - 1
    return ranges[::-1]


def _pack(idx: np.ndarray, kinds: np.ndarray, keep: np.ndarray):
    """Per row, the entries where ``keep`` (ascending slots), left-packed and padded."""
    order, counts = pack_indices(keep, pad="zero")
    valid = slot_mask(counts, order.shape[-1])
    out_idx = np.where(valid, np.take_along_axis(idx, order, -1), 0)
    out_kinds = np.where(valid, np.take_along_axis(kinds, order, -1), EMPTY)
    return out_idx, out_kinds


def _buckets(blocks, max_buckets: int):
    """Row buckets ``(bm, hm, i, parts)``, ``parts`` a list of ``(kv_idx [N, K], kinds [N, K])``.

    Static masks split each row's entries into a full part (no token masking) and a partial part
    (token predicate evaluated on those slots only); dynamic masks use one mixed part.
    """
    idx, counts, kinds = blocks
    bm, hm, nq, width = idx.shape
    grid = np.indices((bm, hm, nq)).reshape(3, -1)
    if not isinstance(idx, np.ndarray):
        flat = lambda a: jnp.asarray(a).reshape(-1, width)
        return [(*(jnp.asarray(g) for g in grid), [(flat(idx), flat(kinds))])]
    flat_counts = counts.reshape(-1)
    flat_idx, flat_kinds = idx.reshape(-1, width), kinds.reshape(-1, width)
    out = []
    for lo, hi in _split_counts(flat_counts, max_buckets):
        rows = np.nonzero((flat_counts >= lo) & (flat_counts <= hi))[0]
        r_idx, r_kinds = flat_idx[rows, :hi], flat_kinds[rows, :hi]
        parts = []
        for kind in (FULL, PARTIAL):
            keep = r_kinds == kind
            if keep.any():
                parts.append(_pack(r_idx, r_kinds, keep))
        out.append((*(g[rows] for g in grid), parts))
    return out


def _part_masking(kinds, check_tokens: bool, static: bool) -> str | None:
    """How the logits of one part must be masked: ``"tokens"`` (evaluate the token predicate on
    partial blocks), ``"slots"`` (only padding slots), ``None`` (a static part of full blocks
    only: no mask pass at all)."""
    if check_tokens and not (static and not bool(np.any(kinds == PARTIAL))):
        return "tokens"
    if not static or bool(np.any(kinds != FULL)):
        return "slots"
    return None


def _bind_flags(row_fn, flags):
    """Insert the static per-part masking flags (`_part_masking`) into the mapped row arguments."""

    def fn(args):
        full = list(args[:4])
        for p, flag in enumerate(flags):
            full += [args[4 + 2 * p], args[5 + 2 * p], flag]
        return row_fn(tuple(full))

    return fn


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: BlockMask,
    scale: float,
    *,
    chunk_bytes: int = _CHUNK_BYTES,
    max_buckets: int = _MAX_BUCKETS,
) -> jax.Array:
    """Block-sparse attention in plain XLA (see the module docstring).

    Args:
        q: ``[B, Hq, Lq, D]``.
        k: ``[B, Hkv, Lk, D]``.
        v: ``[B, Hkv, Lk, Dv]``.
        mask: Block mask of geometry ``(Lq, Lk)`` with batch/head dims 1 or ``B``/``Hq``.
        scale: Logit scale.
        chunk_bytes: Approximate float32 logit bytes computed per ``lax.map`` step.
        max_buckets: Most row buckets (compiled loops) for a static mask.

    Returns:
        ``[B, Hq, Lq, Dv]`` in ``q.dtype``.
    """
    batch, hq, lq, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    groups = hq // hkv
    bq, bk = mask.block_q, mask.block_kv
    nq, nk = mask.num_q_blocks, mask.num_kv_blocks
    bm, hm = mask.block_map.shape[:2]
    check_tokens = may_have_partial(mask)

    q = pad_axis(q, 2, nq * bq)
    k = pad_axis(k, 2, nk * bk)
    v = pad_axis(v, 2, nk * bk)
    # Float32/64 queries carry the logit scale (one pass over q instead of one over the logits).
    scaled_q = jnp.dtype(q.dtype).itemsize >= 4
    if scaled_q:
        q = q * jnp.asarray(scale, q.dtype)
    if hm == 1:  # stack the query heads of a group into rows: [B, Hkv, nq, G*bq, D]
        hx, rows = hkv, groups * bq
        qx = q.reshape(batch, hkv, groups, nq, bq, d).transpose(0, 1, 3, 2, 4, 5)
        qx = qx.reshape(batch, hkv, nq, rows, d)
        kx, vx = k, v
        row_pos = jnp.tile(jnp.arange(bq, dtype=jnp.int32), groups)
    else:  # per-query-head masks: [B, Hq, nq, bq, D], KV heads repeated
        hx, rows = hq, bq
        qx = q.reshape(batch, hq, nq, bq, d)
        kx = jnp.repeat(k, groups, axis=1) if groups > 1 else k
        vx = jnp.repeat(v, groups, axis=1) if groups > 1 else v
        row_pos = jnp.arange(bq, dtype=jnp.int32)
    kb = kx.reshape(batch, hx, nk, bk, d)
    vb = vx.reshape(batch, hx, nk, bk, dv)
    # Broadcast dims of the mask stay batch dims of the computation; varying dims go into rows.
    bb, hb = (batch if bm == 1 else 1), (hx if hm == 1 else 1)
    all_b = jnp.arange(batch, dtype=jnp.int32)[:, None]
    all_h = jnp.arange(hx, dtype=jnp.int32)[None, :]

    static = isinstance(mask.block_map, np.ndarray)

    def take(x, b_sel, h_sel, i):
        """``x[b_sel, h_sel, i]`` for the selected batch/head rows; a plain index along axis 2
        when the mask broadcasts over both (no gather over the leading axes)."""
        if bm == 1 and hm == 1:
            return jnp.take(x, i, axis=2, mode="clip")
        return x[b_sel, h_sel, i]

    def make_row(n_parts):
        def one_row(args):
            q_i, b_r, h_r, i = args[:4]  # q_i: [bb, hb, R, D]
            b_sel = all_b if bm == 1 else jnp.full((1, 1), b_r)
            h_sel = all_h if hm == 1 else jnp.full((1, 1), h_r)
            parts = []
            for p in range(n_parts):
                idx, kind, masking = args[4 + 3 * p : 7 + 3 * p]
                parts.append(logits_part(b_r, h_r, i, q_i, idx, kind, b_sel, h_sel, masking))
            m = functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s, _ in parts])
            m = jax.lax.stop_gradient(m)
            m = jnp.where(jnp.isfinite(m), m, 0.0)
            denom, o = 0.0, 0.0
            for s, vg in parts:
                pr = jnp.exp(s - m)
                denom = denom + jnp.sum(pr, axis=-1, keepdims=True)
                o = o + jnp.einsum(
                    "bxrn,bxnd->bxrd", pr.astype(vg.dtype), vg,
                    preferred_element_type=jnp.float32,
                )
            return (o / jnp.where(denom > 0, denom, 1.0)).astype(q.dtype)

        return one_row

    def logits_part(b_r, h_r, i, q_i, idx, kind, b_sel, h_sel, masking):
        # Gathered keys/values as one [K * bk] axis: the logits are a plain [R, K * bk] product.
        n = idx.shape[0] * bk
        kg = take(kb, b_sel[..., None], h_sel[..., None], idx).reshape(bb, hb, n, d)
        vg = take(vb, b_sel[..., None], h_sel[..., None], idx).reshape(bb, hb, n, dv)
        s = jnp.einsum("bxrd,bxnd->bxrn", q_i, kg, preferred_element_type=jnp.float32)
        if not scaled_q:
            s = s * scale
        if masking is None:  # every slot of this part is a full kept block: nothing to mask
            return s, vg
        kind = jnp.broadcast_to(kind[:, None], (idx.shape[0], bk)).reshape(1, n)
        if masking == "tokens":
            kv_pos = (idx[:, None] * bk + jnp.arange(bk, dtype=jnp.int32)).reshape(1, n)
            pred_b = jnp.zeros((bb, 1, 1, 1), jnp.int32) if bm == 1 else b_r
            pred_h = jnp.zeros((1, hb, 1, 1), jnp.int32) if hm == 1 else h_r
            tok = tile_mask(mask, pred_b, pred_h, (i * bq + row_pos)[:, None], kv_pos)
            keep = (kind == FULL) | ((kind == PARTIAL) & tok)
        else:
            keep = kind != EMPTY
        return jnp.where(keep, s, -jnp.inf), vg

    # The output buffer is carried through the row loops and written in place, row by row. When
    # ``Dv == D`` it starts as the (scaled) queries themselves: a row reads its queries just before
    # it overwrites them with its output, so there is no separate zero-filled output buffer, no
    # stacked per-step result and no final transpose (the output already has the query layout).
    buckets = _buckets(kernel_blocks(mask), max_buckets)
    seeded = dv == d  # the buffer holds the queries of the rows not yet processed
    if not seeded:
        out = jnp.zeros(qx.shape[:-1] + (dv,), q.dtype)
    elif static and sum(len(bk_[2]) for bk_ in buckets) < bm * hm * nq:
        # Rows of a static mask that keep nothing are in no bucket: their output is zero.
        covered = np.zeros((bm, hm, nq), bool)
        for b_r, h_r, i_r, _ in buckets:
            covered[b_r, h_r, i_r] = True
        out = jnp.where(covered[..., None, None], qx, jnp.zeros((), q.dtype))
    else:
        out = qx

    def read(buf, b_r, h_r, i):
        """The ``[C, bb, hb, R, D]`` query rows ``(b_r, h_r, i)`` (each ``[C]``) of ``buf``."""
        if bm == 1 and hm == 1:
            return jnp.moveaxis(jnp.take(buf, i, axis=2, mode="clip"), 2, 0)
        b_sel = all_b[..., None] if bm == 1 else b_r[None, None, :]
        h_sel = all_h[..., None] if hm == 1 else h_r[None, None, :]
        return jnp.moveaxis(buf[b_sel, h_sel, i[None, None, :]], 2, 0)

    def write(buf, o, b_r, h_r, i):
        """``buf`` with rows ``(b_r, h_r, i)`` set to ``o [C, bb, hb, R, Dv]``."""
        o = jnp.moveaxis(o, 0, 2).astype(buf.dtype)
        if bm == 1 and hm == 1:
            if o.shape[2] == 1:
                return jax.lax.dynamic_update_index_in_dim(buf, o[:, :, 0], i[0], 2)
            return buf.at[:, :, i].set(o)
        b_sel = all_b[..., None] if bm == 1 else b_r[None, None, :]
        h_sel = all_h[..., None] if hm == 1 else h_r[None, None, :]
        return buf.at[b_sel, h_sel, i[None, None, :]].set(o)

    for b_r, h_r, i_r, parts in buckets:
        n = len(i_r)
        width = sum(p[0].shape[1] for p in parts)
        per_row = bb * hb * rows * width * bk * 4
        chunk = max(1, min(n, chunk_bytes // max(per_row, 1)))
        xs = [jnp.asarray(a, jnp.int32) for a in (b_r, h_r, i_r)]
        flags = []
        for idx_p, kind_p in parts:
            xs += [jnp.asarray(idx_p, jnp.int32), jnp.asarray(kind_p, jnp.int32)]
            flags.append(_part_masking(kind_p, check_tokens, static))
        rows_fn = jax.vmap(jax.checkpoint(_bind_flags(make_row(len(parts)), flags)))

        def step(buf, x, rows_fn=rows_fn):
            """Rows ``x`` (each ``[C, ...]``): read their queries, attend, write their outputs."""
            q_c = read(buf if seeded else qx, *x[:3])
            return write(buf, rows_fn((q_c, *x)), *x[:3])

        steps = n // chunk
        if steps:
            main = tuple(a[: steps * chunk].reshape(steps, chunk, *a.shape[1:]) for a in xs)
            out = jax.lax.scan(lambda buf, x: (step(buf, x), None), out, main)[0]
        if n % chunk:
            out = step(out, tuple(a[steps * chunk :] for a in xs))
    if hm == 1 and groups > 1:  # [B, Hkv, nq, G * bq, Dv] -> [B, Hkv, G, nq, bq, Dv]
        out = out.reshape(batch, hkv, nq, groups, bq, dv).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch, hq, nq * bq, dv)[:, :, :lq]


__all__ = ["attention"]

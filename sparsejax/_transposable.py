"""Transposable N:M masks: ``n`` kept in every row *and* every column of each ``m x m`` block.

The selection is a bipartite b-matching per block (rows and columns of the block are the two
sides, every vertex has degree ``n``), maximising the kept score. Its LP has a totally
unimodular constraint matrix, so the LP optimum is integral. Three solvers:

* ``"enumerate"`` (``m <= 4``, under ``jit``): every feasible ``m x m`` pattern (90 for 2:4)
  as the rows of a 0/1 matrix ``P``; a block's best pattern is ``argmax(P @ scores)``, exact,
  computed by meeting in the middle over the top and bottom halves of the block's rows.
* ``"exact"`` (host): one sparse ``scipy.optimize.milp`` over all blocks (HiGHS); exact for any
  ``n:m`` but eager, not traceable.
* ``"sinkhorn"`` (under ``jit``): log-domain Sinkhorn to the doubly stochastic matrix with row and
  column sums ``n`` at temperature ``tau``, rounded greedily by transported mass, then repaired by
  augmenting 3-paths until every row and column keeps exactly ``n``, then a few rounds of the best
  improving 2-swap per block; always feasible, approximate (its gap to the exact optimum is
  measured in the tests and ``benchmarks/nm_training.py``).
"""

from __future__ import annotations

import itertools
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ENUMERATE_MAX_M = 4
_BIG = 1e30  # non-finite scores are clamped to +-_BIG (NaN to -_BIG) so P @ s stays finite


@cache
def patterns(n: int, m: int) -> np.ndarray:
    """All ``m x m`` 0/1 matrices with ``n`` ones in every row and column, ``[count, m*m]``,
    in lexicographic order of their row choices (90 rows for 2:4)."""
    rows = [np.array([i in c for i in range(m)]) for c in itertools.combinations(range(m), n)]
    out = [np.stack(choice) for choice in itertools.product(rows, repeat=m)
           if all(np.stack(choice).sum(0) == n)]
    return np.stack(out).reshape(len(out), m * m).astype(np.float32)


def _blocks(x: jax.Array, m: int) -> jax.Array:
    """``[..., R, C] -> [..., R/m, C/m, m, m]``."""
    *lead, r, c = x.shape
    x = x.reshape(*lead, r // m, m, c // m, m)
    return jnp.swapaxes(x, -3, -2)


def _unblocks(x: jax.Array) -> jax.Array:
    *lead, br, bc, m, _ = x.shape
    return jnp.swapaxes(x, -3, -2).reshape(*lead, br * m, bc * m)


def _finite(scores: jax.Array) -> jax.Array:
    s = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
    return jnp.clip(jnp.where(jnp.isnan(s), -_BIG, s), -_BIG, _BIG)


@cache
def _row_choices(n: int, m: int) -> tuple[tuple[int, ...], ...]:
    """The kept-column sets of one row, in lexicographic order."""
    return tuple(itertools.combinations(range(m), n))


@cache
def _halves(n: int, m: int) -> tuple[int, tuple[tuple[tuple[tuple[int, ...], ...],
                                                      tuple[tuple[int, ...], ...]], ...]]:
    """Meet in the middle: the top ``m // 2`` rows' choices and the bottom rows' choices, grouped
    by the column counts they fill. Returns ``(top_rows, pairs)``: per top count vector ``c``
    (ascending), the top choices with counts ``c`` and the bottom choices with counts ``n - c``,
    each list in lexicographic order."""
    combos = _row_choices(n, m)
    h = m // 2

    def by_count(rows: int) -> dict[tuple[int, ...], list[tuple[int, ...]]]:
        out: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for ch in itertools.product(range(len(combos)), repeat=rows):
            cnt = tuple(sum(j in combos[c] for c in ch) for j in range(m))
            if max(cnt) <= n:
                out.setdefault(cnt, []).append(ch)
        return out

    top, bottom = by_count(h), by_count(m - h)
    pairs = tuple((tuple(top[c]), tuple(bottom[need]))
                  for c in sorted(top) if (need := tuple(n - k for k in c)) in bottom)
    return h, pairs


@cache
def _code_table(n: int, m: int) -> np.ndarray:
    """``[K**m, m, m]`` bool: the mask of the pattern whose row choices are the base-``K`` digits
    of the code (``K = C(m, n)``, row 0 the most significant)."""
    combos = _row_choices(n, m)
    k = len(combos)
    table = np.zeros((k ** m, m, m), bool)
    for code in range(k ** m):
        for i in range(m):
            table[code, i, list(combos[(code // k ** (m - 1 - i)) % k])] = True
    return table


# block rows per step of the chunked pass: ~2 MiB of float32 scores, so the strided reads of one
# chunk's m x m blocks hit the cache instead of streaming the whole array once per block entry
_CHUNK_ELEMS = 1 << 19


def _best_codes(x: jax.Array, n: int, m: int) -> jax.Array:
    """``[..., m, C] -> [..., C/m]`` int32: the best pattern's code per block of a block row."""
    *lead, _, c = x.shape
    x4 = _finite(x).reshape(*lead, m, c // m, m)
    entry = [[x4[..., i, :, j] for j in range(m)] for i in range(m)]
    combos = _row_choices(n, m)
    k = len(combos)
    row_sum = [[sum(entry[i][j] for j in cols[1:]) + entry[i][cols[0]] for cols in combos]
               for i in range(m)]
    h, pairs = _halves(n, m)

    def digits(rows: range, ch: tuple[int, ...]) -> int:
        return sum(c * k ** (m - 1 - i) for i, c in zip(rows, ch))

    def bin_best(rows: range, choices: tuple[tuple[int, ...], ...]) -> tuple[jax.Array, jax.Array]:
        # strict > over choices in lexicographic order: the first maximal one is kept
        best_val = best = None
        for ch in choices:
            val = row_sum[rows[0]][ch[0]]
            for i, c in zip(rows[1:], ch[1:]):
                val = val + row_sum[i][c]
            code = jnp.int32(digits(rows, ch))
            if best is None:
                best_val, best = val, jnp.broadcast_to(code, val.shape)
            else:
                better = val > best_val
                best_val, best = jnp.where(better, val, best_val), jnp.where(better, code, best)
        return best_val, best

    top_rows, bottom_rows = range(h), range(h, m)
    best_val = best = None
    for top, bottom in pairs:
        tv, tc = bin_best(top_rows, top)
        bv, bc = bin_best(bottom_rows, bottom)
        val, code = tv + bv, tc + bc
        if best is None:
            best_val, best = val, code
        else:  # ties: the smaller code, i.e. the first pattern in lexicographic order
            better = (val > best_val) | ((val == best_val) & (code < best))
            best_val, best = jnp.where(better, val, best_val), jnp.where(better, code, best)
    return best


def _chunked_codes(rows: jax.Array, n: int, m: int, steps: int) -> jax.Array:
    """`_best_codes` over ``steps`` equal chunks of block rows in sequence (`lax.map`; zero-padded
    to equal chunks: one compiled body, no remainder pass)."""
    count, _, c = rows.shape
    chunk = -(-count // steps)
    rows = jnp.pad(rows, ((0, steps * chunk - count), (0, 0), (0, 0)))
    best = lax.map(partial(_best_codes, n=n, m=m), rows.reshape(steps, chunk, m, c))
    return best.reshape(steps * chunk, c // m)[:count]


@partial(jax.jit, static_argnums=(1, 2))
def enumerate_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
    """Exact transposable mask by pattern enumeration (``m <= ENUMERATE_MAX_M``).

    Arithmetically ``argmax(P @ block)`` over the feasible patterns ``P`` (`patterns`), computed
    without materialising the ``[blocks, patterns]`` product, by meeting in the middle: each row's
    choice sums (6 per row at 2:4) are formed once; the top ``m // 2`` rows' choices are reduced
    to the best per column-count vector (19 at 2:4), likewise the bottom rows', and the best
    pattern is the best sum of a top vector and its complementary bottom vector (36 + 36 + 19
    candidates instead of 90 four-term sums). On CPU the pass runs as one elementwise fusion per
    chunk of block rows (`lax.map`), so the ``m * m`` strided reads of a block's entries hit the
    cache (on other platforms as one fusion over every block); the winner's code is decoded
    through small constant tables. Ties (equal kept sums, the sum taken as top half plus bottom
    half) go to the first pattern in lexicographic order of the rows' kept positions.
    """
    *lead, r, c = scores.shape
    rows = scores.reshape(-1, m, c)  # [block rows, m, C]; clamped per chunk (one pass, cached)
    count = rows.shape[0]
    steps = -(-count // max(1, _CHUNK_ELEMS // (m * c)))
    whole = partial(_best_codes, n=n, m=m)
    if steps <= 1:
        best = whole(rows)
    else:  # chunks on CPU (its caches); one pass over every block on accelerators
        best = lax.platform_dependent(rows, cpu=partial(_chunked_codes, n=n, m=m, steps=steps),
                                      default=whole)
    table = _code_table(n, m)
    planes = [[jnp.asarray(table[:, i, j])[best] for j in range(m)] for i in range(m)]
    out = jnp.stack([jnp.stack(row, axis=-1) for row in planes], axis=-3)  # [rows, m, C/m, m]
    return out.reshape(scores.shape)


def exact_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Exact transposable mask of a ``[..., R, C]`` host array by one sparse MILP over all blocks
    (HiGHS; the LP is totally unimodular, so the integrality costs nothing)."""
    from scipy import sparse
    from scipy.optimize import LinearConstraint, milp

    s = np.asarray(scores, np.float64)
    s = np.clip(np.where(np.isnan(s), -_BIG, s), -_BIG, _BIG)
    *lead, r, c = s.shape
    blocks = s.reshape(-1, r // m, m, c // m, m).transpose(0, 1, 3, 2, 4).reshape(-1, m, m)
    nb = blocks.shape[0]
    if nb == 0 or n in (0, m):
        return np.full(s.shape, n == m)
    var = np.arange(nb * m * m).reshape(nb, m, m)
    row_cons = var.reshape(nb * m, m)  # each row of each block
    col_cons = var.transpose(0, 2, 1).reshape(nb * m, m)
    cons = np.concatenate([row_cons, col_cons])
    a = sparse.csr_matrix((np.ones(cons.size), (np.repeat(np.arange(len(cons)), m),
                                                 cons.reshape(-1))), shape=(len(cons), var.size))
    # scale for HiGHS's tolerances: the argmax is invariant to a positive scale and a shift
    flat = blocks.reshape(-1)
    scale = max(float(np.max(np.abs(flat))), 1e-300)
    res = milp(-flat / scale, constraints=LinearConstraint(a, n, n),
               integrality=np.ones(var.size), bounds=(0, 1))
    if res.x is None:  # pragma: no cover - the problem is always feasible
        raise RuntimeError(f"the transposable N:M MILP failed: {res.message}")
    keep = (res.x > 0.5).reshape(-1, r // m, c // m, m, m)
    return keep.transpose(0, 1, 3, 2, 4).reshape(s.shape)


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def sinkhorn_mask(scores: jax.Array, n: int, m: int, iters: int = 50,
                  tau: float = 0.03, swaps: int = 8) -> jax.Array:
    """Approximate transposable mask: Sinkhorn, greedy rounding, 3-path repair (always feasible),
    then ``swaps`` rounds of the best improving 2-swap per block."""
    s = _finite(scores)
    blocks = _blocks(s, m)
    shape = blocks.shape
    b = blocks.reshape(-1, m, m)
    # scale-free temperature: tau times each block's score spread
    spread = jnp.std(b, axis=(1, 2), keepdims=True) + jnp.finfo(b.dtype).tiny
    logp = (b - jnp.mean(b, axis=(1, 2), keepdims=True)) / (tau * spread)
    log_n = jnp.log(jnp.asarray(n, b.dtype))

    def sweep(_, f):
        f = f - (jax.nn.logsumexp(f, axis=2, keepdims=True) - log_n)
        return f - (jax.nn.logsumexp(f, axis=1, keepdims=True) - log_n)

    logp = lax.fori_loop(0, iters, sweep, logp)
    nb = b.shape[0]
    # greedy: visit entries by transported mass (ties: the score), keep while row and column have room
    order = jnp.argsort(-(logp + 1e-6 * b / spread).reshape(nb, m * m), axis=1)
    rows_of, cols_of = order // m, order % m
    ar = jnp.arange(nb)

    def greedy(carry, t):
        sel, rc, cc = carry
        i, j = rows_of[:, t], cols_of[:, t]
        ok = (rc[ar, i] < n) & (cc[ar, j] < n)
        sel = sel.at[ar, i, j].set(ok)
        return (sel, rc.at[ar, i].add(ok), cc.at[ar, j].add(ok)), None

    init = (jnp.zeros((nb, m, m), bool), jnp.zeros((nb, m), jnp.int32),
            jnp.zeros((nb, m), jnp.int32))
    (sel, _, _), _ = lax.scan(greedy, init, jnp.arange(m * m))
    sel = lax.fori_loop(0, n * m, partial(_repair, b=b, n=n), sel)
    sel = lax.fori_loop(0, swaps, partial(_two_swap, b=b), sel)
    return _unblocks(sel.reshape(shape))


def _repair(_, sel: jax.Array, *, b: jax.Array, n: int) -> jax.Array:
    """One augmenting 3-path per block with a row and a column short of ``n``.

    After the greedy every unselected entry has a full row or a full column, so a short row
    ``i`` and short column ``j`` have ``(i, j)`` selected. Some unselected row ``i'`` of column
    ``j`` is full and (pigeonhole: row ``i`` misses ``m - n + 1`` or more columns) keeps an entry
    ``j'`` that row ``i`` misses: drop ``(i', j')``, keep ``(i, j')`` and ``(i', j)``; the best-gain
    such path is taken. Fullness only grows, so the invariant holds for the next path.
    """
    nb, m, _ = sel.shape
    ar = jnp.arange(nb)
    short_r = jnp.sum(sel, axis=2) < n
    short_c = jnp.sum(sel, axis=1) < n
    active = jnp.any(short_r, axis=1)
    i, j = jnp.argmax(short_r, axis=1), jnp.argmax(short_c, axis=1)
    row_i, col_j = sel[ar, i, :], sel[ar, :, j]  # [nb, m]
    ok = (~col_j)[:, :, None] & sel & (~row_i)[:, None, :]  # [nb, i', j']
    gain = (b[ar, i, :][:, None, :] + b[ar, :, j][:, :, None] - b)
    flat = jnp.argmax(jnp.where(ok, gain, -jnp.inf).reshape(nb, m * m), axis=1)
    ip, jp = flat // m, flat % m
    new = sel.at[ar, ip, jp].set(False).at[ar, i, jp].set(True).at[ar, ip, j].set(True)
    direct = ~sel[ar, i, j]  # not reachable after the greedy, kept for safety
    new = jnp.where(direct[:, None, None], sel.at[ar, i, j].set(True), new)
    return jnp.where(active[:, None, None], new, sel)


def _two_swap(_, sel: jax.Array, *, b: jax.Array) -> jax.Array:
    """The best improving 2-swap per block: kept ``(i, j), (i', j')``, dropped ``(i, j'), (i', j)``
    exchanged when that raises the kept score (row and column counts are unchanged)."""
    nb, m, _ = sel.shape
    # gain[i, j, i', j'] = b[i, j'] + b[i', j] - b[i, j] - b[i', j']
    gain = (b[:, :, None, None, :] + jnp.swapaxes(b, 1, 2)[:, None, :, :, None]
            - b[:, :, :, None, None] - b[:, None, None, :, :])
    ok = (sel[:, :, :, None, None] & sel[:, None, None, :, :]
          & ~sel[:, :, None, None, :] & ~jnp.swapaxes(sel, 1, 2)[:, None, :, :, None])
    gain = jnp.where(ok, gain, 0.0).reshape(nb, -1)
    best = jnp.argmax(gain, axis=1)
    i, j, ip, jp = jnp.unravel_index(best, (m, m, m, m))
    ar = jnp.arange(nb)
    new = (sel.at[ar, i, j].set(False).at[ar, ip, jp].set(False)
           .at[ar, i, jp].set(True).at[ar, ip, j].set(True))
    return jnp.where((gain[ar, best] > 0)[:, None, None], new, sel)

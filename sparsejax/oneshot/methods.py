"""Per-layer one-shot pruning methods: magnitude, Wanda and SparseGPT.

Each takes a 2-D weight (``axis=0`` for a Flax ``[in, out]`` kernel, the default; ``axis=1``
for a torch ``[out, in]`` weight), optionally the `LayerStats` of its calibration inputs, and either
an unstructured ``sparsity`` or an N:M pattern (``n`` kept of every ``m`` consecutive *input*
features, the axis NVIDIA's 2:4 tensor cores group along), and returns ``(pruned_weight, mask)``
with ``mask`` ``True`` where a weight is kept.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

from sparsejax import masks as _masks
from sparsejax import scores as _scores
from sparsejax._checks import (
    check_divisible,
    check_float,
    check_positive_int,
    is_concrete,
    must_be,
)
from sparsejax.oneshot._layer import check_pattern, check_stats, check_weight, to_rows
from sparsejax.oneshot.stats import LayerStats

__all__ = ["hessian_inverse_factor", "magnitude_prune", "sparsegpt_prune", "wanda_prune"]

Pruned = tuple[Float[Array, "a b"], Bool[Array, "a b"]]


def magnitude_prune(
    w: Float[Array, "a b"],
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    axis: int | None = None,
) -> Pruned:
    """Magnitude pruning: drop the smallest ``|w|``.

    Unstructured sparsity compares the whole layer (as the reference ``prune_magnitude`` of
    locuslab/wanda); N:M keeps the ``n`` largest of every ``m`` consecutive inputs of each output.

    Args:
        w: weight ``[in, out]`` (``axis=0``) or ``[out, in]`` (``axis=1``).
        sparsity: fraction dropped, in ``[0, 1]``; or give ``n`` and ``m`` instead.
        n: kept entries per group (N:M).
        m: group size along the input axis, dividing ``w.shape[axis]``.
        axis: the input-feature axis of ``w``.

    Returns:
        ``(w * mask, mask)``, both shaped like ``w``.
    """
    w, axis = check_weight(w, axis)
    sparsity, n, m = check_pattern(sparsity, n, m, w, axis)
    if n is None:  # the whole layer ranks as one flat array: one program per size, not per shape
        new, mask = _magnitude(jnp.ravel(w), _traced(sparsity), None, None, 0)
        return new.reshape(w.shape), mask.reshape(w.shape)
    return _magnitude(w, _traced(sparsity), n, m, axis)


def wanda_prune(
    w: Float[Array, "a b"],
    stats: LayerStats,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    axis: int | None = None,
) -> Pruned:
    """Wanda (Sun et al., 2023): drop the lowest ``|W_ij| * ||X_j||_2`` per output.

    Unstructured sparsity ranks each output's inputs separately (the per-output comparison group of
    the reference ``prune_wanda``); N:M keeps the ``n`` best of every ``m`` consecutive inputs.

    Args:
        w: weight ``[in, out]`` (``axis=0``) or ``[out, in]`` (``axis=1``).
        stats: `LayerStats` of the layer's calibration inputs (the Gram is not needed).
        sparsity: fraction dropped per output, in ``[0, 1]``; or give ``n`` and ``m``.
        n: kept entries per group (N:M).
        m: group size along the input axis.
        axis: the input-feature axis of ``w``.

    Returns:
        ``(w * mask, mask)``, both shaped like ``w``.
    """
    w, axis = check_weight(w, axis)
    stats = check_stats(stats, w, axis)
    sparsity, n, m = check_pattern(sparsity, n, m, w, axis)
    return _wanda(w, stats.norms, _traced(sparsity), n, m, axis)


def _traced(sparsity: float | None) -> jax.Array:
    """The checked sparsity as a float32 argument of the compiled methods (0 for N:M, unread), so
    that every sparsity shares one program per weight shape."""
    return jnp.asarray(0.0 if sparsity is None else sparsity, jnp.float32)


# Each method's whole per-layer computation is one program per weight shape and pattern (the
# drivers call them on many layers of a few shapes: no op-by-op compiles at each new shape).
@partial(jax.jit, static_argnums=(2, 3, 4))
def _magnitude(w, sparsity, n, m, axis) -> Pruned:
    return _keep_highest(w, _scores.magnitude(w), sparsity, n, m, axis, None)


@partial(jax.jit, static_argnums=(3, 4, 5))
def _wanda(w, norms, sparsity, n, m, axis) -> Pruned:
    score = _scores.wanda(w, norms=norms, axis=axis)
    return _keep_highest(w, score, sparsity, n, m, axis, axis)


def _keep_highest(w, score, sparsity, n, m, axis, group_axis) -> Pruned:
    """``(w * mask, mask)`` keeping the highest scores: unstructured over ``group_axis`` fibres
    (``None``: the whole layer) or N:M along the input axis."""
    mask = (_masks.unstructured(score, sparsity, axis=group_axis) if n is None
            else _masks.nm(score, n, m, axis=axis))
    return jnp.where(mask, w, jnp.zeros((), w.dtype)), mask


def sparsegpt_prune(
    w: Float[Array, "a b"],
    stats: LayerStats,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    axis: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> Pruned:
    """SparseGPT (Frantar & Alistarh, 2023): OBS column sweep with lazy block updates.

    Follows ``SparseGPT.fasterprune`` of IST-DASLab/sparsegpt, in float32 under ``jit``:
    ``H = X^T X`` (dead inputs, ``H_jj = 0``, get ``H_jj = 1`` and zero weights), plus
    ``damp * mean(diag H)`` on the diagonal; ``U`` = upper Cholesky factor of ``H^-1``. Inputs are
    swept in blocks of ``block_size``; each block's mask is chosen from the *updated* weights by
    ``w^2 / U_jj^2`` (unstructured: the lowest scores of the whole ``[out, block]`` tile, as the
    reference; N:M: the ``m - n`` lowest of each group of ``m`` inputs, per output), then column by
    column ``err = (w_j - q_j) / U_jj`` is propagated to the later columns of the block,
    ``W[:, j:] -= err U[j, j:]``, and once per block to all later columns (inside a
    block the same lazy update runs one level down, per 16 columns: same result, less memory traffic).

    Differences from the reference: a tile keeps exactly ``round(size * (1 - sparsity))`` weights
    (the reference's ``<= threshold`` drops one more); float32 arithmetic (float64 for
    float64 inputs under ``jax.enable_x64``).

    Args:
        w: weight ``[in, out]`` (``axis=0``) or ``[out, in]`` (``axis=1``).
        stats: `LayerStats` with the Gram matrix of the layer's calibration inputs.
        sparsity: fraction dropped, in ``[0, 1]``; or give ``n`` and ``m``.
        n: kept entries per group (N:M).
        m: group size along the input axis; must divide ``block_size``.
        axis: the input-feature axis of ``w``.
        block_size: columns per lazy-update block (the reference's ``blocksize``, 128).
        damp: diagonal damping as a fraction of the mean diagonal of ``H`` (``percdamp``, 0.01).

    Returns:
        ``(pruned_weight, mask)`` shaped like ``w``; the kept weights are *updated* to compensate
        the pruned ones, and ``pruned_weight`` is zero where ``mask`` is ``False``.

    Raises:
        ValueError: feature counts of ``w`` and ``stats`` differ, a bad pattern, ``block_size`` not
            a multiple of ``m``, or (eagerly) a Gram matrix that is singular after damping.
    """
    w, axis = check_weight(w, axis)
    stats = check_stats(stats, w, axis, gram=True)
    sparsity, n, m = check_pattern(sparsity, n, m, w, axis)
    block_size = check_positive_int(block_size, "block_size")
    if m is not None:
        check_divisible(block_size, m, "block_size", "m")  # N:M groups never straddle blocks
    damp = check_float(damp, "damp", minimum=0.0)
    dtype = jnp.promote_types(w.dtype, jnp.float32)  # float32 (float64 kept under x64)
    # the factor is one program per Gram size, shared by the layer shapes with that many inputs
    u, dead = _factor(stats.gram, jnp.asarray(damp, dtype))
    new, keep, ok = _sparsegpt_layer(w, u, dead, _traced(sparsity), n, m,
                                     min(block_size, w.shape[axis]), axis)
    if is_concrete(ok) and not bool(ok):
        raise ValueError(must_be("stats.gram", f"positive definite after damping (damp={damp}; use "
                                 "damp > 0 or more calibration tokens)", "a singular or non-finite "
                                 "matrix", raw=True))
    return new, keep


@partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _sparsegpt_layer(w, u, dead, sparsity, n, m, bs, axis):
    """`_sparsegpt` on the ``[out, in]`` rows of ``w`` in the factor's dtype, back in ``w``'s
    layout and dtype: one program per layer shape."""
    rows = to_rows(w, axis).astype(u.dtype)
    new, keep, ok = _sparsegpt(rows, u, dead, sparsity, n, m, bs)
    back = (lambda a: a.T) if axis == 0 else (lambda a: a)
    return back(new).astype(w.dtype), back(keep), ok


def hessian_inverse_factor(gram: jax.Array, damp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """SparseGPT's ``U``: the upper Cholesky factor of ``(H + damp*mean(diag H)*I)^-1`` (``U^T U``),
    dead inputs (``H_jj = 0``) given ``H_jj = 1``; also returns the dead-input flags.

    One Cholesky and one triangular inverse instead of the reference's three factorizations: with
    ``J`` the exchange matrix and ``L = chol(J H J)`` (lower), ``H = R R^T`` for the upper ``R = J L J``,
    so ``H^-1 = R^-T R^-1`` and ``U = R^-1 = J L^-1 J``. Only the lower triangle of ``gram`` is
    read (it is symmetric): the factorization is handed ``(J H J)^T``, which LAPACK's column-major
    layout stores exactly as ``J H J`` is stored row-major, so no transposing copy is made.
    """
    diag = jnp.diagonal(gram)
    dead = diag == 0
    idx = jnp.arange(gram.shape[0])
    h = gram.at[idx, idx].set(jnp.where(dead, 1.0, diag))
    h = h.at[idx, idx].add(damp * jnp.mean(jnp.diagonal(h)))
    lower = lax.linalg.cholesky(h[::-1, ::-1].T, symmetrize_input=False)
    return _lower_inverse(lower)[::-1, ::-1], dead


def _lower_inverse(lower: jax.Array) -> jax.Array:
    """Inverse of lower-triangular matrices ``[..., n, n]`` by 2x2 blocks (matmuls; triangular
    solves at the leaves): ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``.

    Equal halves are stacked and inverted by one call, so each level of the recursion is one
    batched solve or matmul (a 1536 x 1536 factor: one solve of 8 blocks of 192 instead of 8
    solves; the same values, a smaller program to compile)."""
    n = lower.shape[-1]
    if n <= 256:
        eye = jnp.broadcast_to(jnp.eye(n, dtype=lower.dtype), lower.shape)
        return jax.scipy.linalg.solve_triangular(lower, eye, lower=True)
    k = n // 2
    a, c, d = lower[..., :k, :k], lower[..., k:, :k], lower[..., k:, k:]
    if 2 * k == n:
        a_inv, d_inv = _lower_inverse(jnp.stack([a, d]))
    else:
        a_inv, d_inv = _lower_inverse(a), _lower_inverse(d)
    c = -jnp.matmul(d_inv, jnp.matmul(c, a_inv, precision=lax.Precision.HIGHEST),
                    precision=lax.Precision.HIGHEST)
    zeros = jnp.zeros((*a_inv.shape[:-1], n - k), lower.dtype)
    return jnp.concatenate([jnp.concatenate([a_inv, zeros], -1),
                            jnp.concatenate([c, d_inv], -1)], -2)


@jax.jit
def _factor(gram, damp):
    """`hessian_inverse_factor` of ``gram`` in ``damp``'s dtype: one program per Gram size."""
    return hessian_inverse_factor(gram.astype(damp.dtype), damp)


@partial(jax.jit, static_argnums=(4, 5, 6))
def _sparsegpt(w, u, dead, sparsity, n, m, bs):
    """The column sweep of ``w`` (``[out, in]``) with the factor ``u`` and dead-input flags of
    `hessian_inverse_factor`: ``(pruned rows, mask, u finite)``."""
    rows, cols = w.shape
    ok = jnp.all(jnp.isfinite(u))
    w = jnp.where(dead[None, :], 0.0, w)
    nblocks = -(-cols // bs)
    pad = nblocks * bs - cols
    w = jnp.pad(w, ((0, 0), (0, pad)))
    u = jnp.pad(u, ((0, pad), (0, pad))) + jnp.diag(jnp.arange(cols + pad) >= cols).astype(u.dtype)
    col = jnp.arange(cols + pad)
    local = jnp.arange(bs)
    k_full = _masks.kept_count(rows * bs, sparsity)  # kept per [rows, block] tile
    k_last = _masks.kept_count(rows * (cols - (nblocks - 1) * bs), sparsity)

    def block(w, b):
        i1 = b * bs
        w1 = lax.dynamic_slice(w, (0, i1), (rows, bs))
        u1 = lax.dynamic_slice(u, (i1, i1), (bs, bs))
        if n is None:
            valid = (i1 + local) < cols
            score = jnp.where(valid[None, :], w1 ** 2 / jnp.diagonal(u1)[None, :] ** 2, -jnp.inf)
            keep1 = _masks.topk(score, jnp.where(b == nblocks - 1, k_last, k_full))
        else:
            keep1 = jnp.ones((rows, bs), bool)
        w1, keep1, err1 = _sweep_block(w1, u1, keep1, n, m)
        w = lax.dynamic_update_slice(w, w1, (0, i1))
        # the lazy update of the later columns, W[:, i1 + bs:] -= err1 U[i1:i1 + bs, i1 + bs:],
        # runs over the last of a few static column ranges that covers them (a traced block
        # index cannot slice), not over all columns
        segment = sum((i1 + bs >= s).astype(jnp.int32) for s in starts[1:])
        return lax.switch(segment, [partial(update, s=s) for s in starts], w, err1, i1), keep1

    def update(w, err1, i1, s):
        later = lax.dynamic_slice(u, (i1, s), (bs, cols + pad - s))
        later = jnp.where(col[None, s:] >= i1 + bs, later, 0.0)
        return w.at[:, s:].add(-jnp.matmul(err1, later, precision=lax.Precision.HIGHEST))

    starts = sorted({bs * (q * nblocks // 4) for q in range(min(4, nblocks))})

    w, keeps = lax.scan(block, w, jnp.arange(nblocks))
    keep = jnp.moveaxis(keeps, 0, 1).reshape(rows, nblocks * bs)[:, :cols]
    w = w[:, :cols]
    return jnp.where(keep, w, 0.0), keep, ok


def _sweep_block(w1, u1, keep1, n, m, sub=16):
    """The column loop of one block: ``err_j = (w_j - q_j) / U_jj``, ``W[:, j:] -= err_j U[j, j:]``.

    Columns are swept in sub-blocks of ``sub`` (when that divides the block and is a multiple of
    ``m``): a column updates only the rest of its sub-block, and a sub-block's errors reach the
    block's later columns in one matmul (the reference's lazy block update, one level down), so
    the per-column work stays in cache. Returns the swept block, its mask and the errors.
    """
    rows, width = w1.shape
    sub = sub if width % sub == 0 and width > sub and (m is None or sub % m == 0) else width

    def column(i, state):
        ws, ks, es, us, ds = state
        if n is not None:
            start = i - i % m
            group = lax.dynamic_slice(ws, (0, start), (rows, m)) ** 2
            group = group / lax.dynamic_slice(ds, (start,), (m,))[None, :] ** 2
            fresh = lax.dynamic_update_slice(ks, _masks.nm(group, n, m, axis=1), (0, start))
            ks = jnp.where(i % m == 0, fresh, ks)
        wi = ws[:, i]
        q = jnp.where(ks[:, i], wi, 0.0)
        err = (wi - q) / ds[i]
        ws = (ws - err[:, None] * us[i][None, :]).at[:, i].set(q)
        return ws, ks, es.at[:, i].set(err), us, ds

    def sub_block(j, state):
        w1, keep1, err1 = state
        s0 = j * sub
        us = lax.dynamic_slice(u1, (s0, s0), (sub, sub))
        ws, ks, es, _, _ = lax.fori_loop(
            0, sub, column, (lax.dynamic_slice(w1, (0, s0), (rows, sub)),
                             lax.dynamic_slice(keep1, (0, s0), (rows, sub)),
                             jnp.zeros((rows, sub), w1.dtype), us, jnp.diagonal(us)))
        w1 = lax.dynamic_update_slice(w1, ws, (0, s0))
        keep1 = lax.dynamic_update_slice(keep1, ks, (0, s0))
        err1 = lax.dynamic_update_slice(err1, es, (0, s0))
        if sub < width:  # this sub-block's errors reach the block's later columns at once
            later = lax.dynamic_slice(u1, (s0, 0), (sub, width))
            later = jnp.where(jnp.arange(width)[None, :] >= s0 + sub, later, 0.0)
            w1 = w1 - jnp.matmul(es, later, precision=lax.Precision.HIGHEST)
        return w1, keep1, err1

    return lax.fori_loop(0, width // sub, sub_block, (w1, keep1, jnp.zeros_like(w1)))

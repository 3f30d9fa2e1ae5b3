"""Batched orthogonal matching pursuit (OMP) with Cholesky updates on a precomputed Gram matrix.

The algorithm is scikit-learn's ``orthogonal_mp_gram`` (Rubinstein, Zibulevsky and Elad,
"Efficient Implementation of the K-SVD Algorithm using Batch Orthogonal Matching Pursuit", 2008),
vectorised over a batch of signals and compiled with `jax.jit`. With ``L`` the Cholesky factor of
the selected atoms' Gram block ``G[I, I]``, it keeps the rows ``P = L^{-1} G[I, :]`` (the selected
atoms, orthonormalised, correlated with every atom), so each step is one row of ``P`` more:

* ``lambda = argmax_j |alpha_j|`` with ``alpha = D^T r`` the residual's correlations;
* ``w = L^{-1} G[I, lambda] = P[:, lambda]`` (a gather), ``l = sqrt(G[lambda, lambda] - w.w)``,
  which appends the row ``[w, l]`` to ``L``;
* ``c = L^{-1} (D^T y)_I`` (forward substitution, one new entry per step): the new entry is
  ``((D^T y)_lambda - w.c) / l = alpha_lambda / l``, the correlation just found;
* the new row ``p = (G[lambda] - w P) / l`` and ``alpha <- alpha - c_new p``, since
  ``alpha = D^T y - G[:, I] gamma = D^T y - P^T c`` with ``gamma = L^{-T} c``, solved once at the
  end; ``||r||^2 = ||y||^2 - ||c||^2``.

The ``[n_features]`` residual is never formed. Per step and signal the cost is the contraction
``w P`` (``|I| * n_atoms``, memory-bound: each signal has its own rows), the Gram row
``G[lambda]`` and the argmax over ``n_atoms`` (tiled: XLA:CPU scans a long row's argmax one element
at a time); everything else is ``O(k)``. The rows of ``P`` are kept in four buffers of ``k / 4``
slots, and the steps run in four compiled loops, the ``j``-th contracting only the first ``j``
buffers, so the contraction reads ``5 k^2 / 8`` instead of ``k^2`` rows per signal. That read is
the floor: XLA:CPU runs a batched matrix-vector product on one thread, at cache bandwidth
(``benchmarks/omp.py --floor`` times it alone).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_int

__all__ = ["SparseCode", "omp"]


class SparseCode(NamedTuple):
    """Sparse codes as ``(indices, values)`` of shape ``[..., k]``.

    Unused slots (after an early stop) hold the out-of-range index ``n_atoms`` and the value 0, so
    ``jnp.zeros(n_atoms).at[indices].set(values, mode="drop")`` rebuilds the dense code and a gather
    ``dictionary[:, indices]`` (clamped) times ``values`` reconstructs the signal.
    """

    indices: Int[Array, "... k"]
    values: Float[Array, "... k"]


def _validate(dictionary, signals, k, tol, chunk_size):
    if not hasattr(dictionary, "shape") or not hasattr(signals, "shape"):
        raise TypeError(
            "`dictionary` and `signals` must be arrays; got "
            f"{type(dictionary).__name__} and {type(signals).__name__}"
        )
    if dictionary.ndim != 2:
        raise ValueError(
            "`dictionary` must be 2-D [n_features, n_atoms]; got shape "
            f"{tuple(dictionary.shape)}"
        )
    n_features, n_atoms = dictionary.shape
    if (signals.ndim >= 1 and signals.shape[-1] == n_atoms and n_atoms != n_features
            and dictionary.ndim == 2):
        raise ValueError(
            f"`dictionary` must be [n_features, n_atoms] with atoms as columns; got shape "
            f"{tuple(dictionary.shape)}, whose second dimension matches the signals' last "
            f"dimension {n_atoms}: the dictionary looks transposed (scikit-learn's "
            f"`components_` is [n_atoms, n_features]; pass `components_.T`)."
        )
    if signals.ndim < 1 or signals.shape[-1] != n_features:
        raise ValueError(
            f"`signals` must have shape [..., n_features={n_features}] (signals along the "
            f"last axis; pass sklearn's [n_features, n_signals] transposed); got "
            f"{tuple(signals.shape)}"
        )
    for name, arr in (("dictionary", dictionary), ("signals", signals)):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be a floating array; got dtype {arr.dtype}")
    if n_atoms == 0 or n_features == 0:
        raise ValueError(f"`dictionary` must be non-empty; got shape {(n_features, n_atoms)}")
    if k is not None:
        check_int(k, "k", minimum=1, maximum=n_atoms)
    if tol is not None and isinstance(tol, int | float) and not tol >= 0:
        raise ValueError(f"`tol` must be a non-negative squared residual norm; got {tol}")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)


def _argmax_last(score):
    """First index of the maximum along the last axis (``jnp.argmax`` semantics, NaN counts as max).

    XLA:CPU scans a long row for its argmax one element at a time, so long rows are cut into
    tiles of 128: one vectorised max per tile, the first tile holding the row maximum, and the
    first maximum within that tile (the first tile reaching the maximum holds its first index).
    """
    n = score.shape[-1]
    if n < 1024:
        return jnp.argmax(score, axis=-1).astype(jnp.int32)
    width = 128
    pad = -n % width
    if pad:
        score = jnp.pad(score, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    tiles = score.reshape(score.shape[0], -1, width)
    tile = jnp.argmax(jnp.max(tiles, axis=-1), axis=-1)
    within = jnp.take_along_axis(tiles, tile[:, None, None], axis=1)[:, 0]
    return (tile * width + jnp.argmax(within, axis=-1)).astype(jnp.int32)


def _omp_batch(xy, y_norm2, tol, gram, *, k, use_tol, exact_k):
    """OMP for a batch given ``xy = y D`` ``[b, n_atoms]`` and ``||y||^2`` ``[b]``.

    Returns the selected indices ``[b, k]`` and the coefficients ``gamma`` ``[b, k]``. Slot ``t``
    of every buffer belongs to step ``t``; a signal that stopped leaves its later slots empty
    (index ``n_atoms``, zero rows), so all updates are static-position slices.
    """
    b, n_atoms = xy.shape
    dtype = gram.dtype
    eps = jnp.finfo(dtype).eps
    slots = jnp.arange(k)
    rows = jnp.arange(b)
    diag = jnp.diagonal(gram)
    ends = _block_ends(k, n_atoms)
    starts = [0, *ends[:-1]]

    def body(state, block):
        # slots >= width are still empty in this block, so every contraction stops at `width`;
        # each block of slots has its own buffer of projections, so the contraction reads the
        # filled buffers whole (no strided slice, no copy)
        width = ends[block]
        t, done, alpha, chol, c, idx, proj_rows = state
        score = jnp.abs(alpha)
        if exact_k:
            score = score.at[rows[:, None], idx[:, :width]].set(-jnp.inf, mode="drop")
        lam = _argmax_last(score)
        # w = L^-1 G[I, lam]: the selected atoms' orthonormalised correlations with atom lam,
        # read off the stored rows P = L^-1 G[I, :] (empty slots hold zero rows)
        w = jnp.concatenate([jnp.take_along_axis(p, lam[:, None, None], axis=2)[:, :, 0]
                             for p in proj_rows[:block + 1]], axis=1)
        lkk2 = diag[lam] - jnp.sum(w * w, axis=-1)
        # alpha = D^T y - P^T c, so alpha[lam] = (D^T y)[lam] - w.c: the numerator of the
        # forward-substitution entry c_new = ((D^T y)[lam] - w.c) / l
        a_lam = jnp.take_along_axis(alpha, lam[:, None], axis=1)[:, 0]
        if exact_k:
            stop = done
            lkk2 = jnp.maximum(lkk2, eps)
        else:
            repeat = jnp.any(idx[:, :width] == lam[:, None], axis=1)
            stop = done | repeat | (a_lam * a_lam < eps) | (lkk2 <= eps)
        act = ~stop
        inv = jnp.where(act, 1 / jnp.sqrt(jnp.where(act, lkk2, 1)), 0)
        new_c = a_lam * inv
        # the new row of P = L^-1 G[I, :]: (G[lam] - w P) / l, and alpha = D^T y - G[:, I] gamma
        # = D^T y - P^T c loses its new component
        fit = sum(jnp.einsum("bk,bka->ba", w[:, starts[m]:ends[m]], proj_rows[m])
                  for m in range(block + 1))
        new_p = (gram[lam] - fit) * inv[:, None]
        alpha = alpha - new_c[:, None] * new_p
        proj_rows = list(proj_rows)
        proj_rows[block] = jax.lax.dynamic_update_slice(
            proj_rows[block], new_p[:, None, :], (t * 0, t - starts[block], t * 0))
        chol_row = jnp.where(slots == t, jnp.where(act, lkk2 * inv, 1)[:, None],
                             jnp.pad(jnp.where(act[:, None], w, 0), ((0, 0), (0, k - width))))
        chol = jax.lax.dynamic_update_slice(chol, chol_row[:, None, :], (t * 0, t, t * 0))
        c = c.at[:, t].set(new_c)
        idx = idx.at[:, t].set(jnp.where(act, lam, n_atoms).astype(idx.dtype))
        reached = jnp.full((b,), t + 1 >= k)
        if use_tol:
            reached = reached | (jnp.abs(y_norm2 - jnp.sum(c * c, axis=-1)) <= tol)
        return t + 1, stop | reached, alpha, chol, c, idx, tuple(proj_rows)

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((b,), bool),
        xy,
        jnp.broadcast_to(jnp.eye(k, dtype=dtype), (b, k, k)),
        jnp.zeros((b, k), dtype),
        jnp.full((b, k), n_atoms, jnp.int32),
        tuple(jnp.zeros((b, e - s, n_atoms), dtype) for s, e in zip(starts, ends, strict=True)),
    )
    state = init
    for block, end in enumerate(ends):
        state = jax.lax.while_loop(
            lambda st, end=end: (st[0] < end) & ~jnp.all(st[1]),
            functools.partial(body, block=block), state)
    _, _, _, chol, c, idx, _ = state
    # gamma = L^-T c; the rows of the slots left empty are identity rows with c = 0
    gamma = jax.scipy.linalg.solve_triangular(chol, c[:, :, None], lower=True, trans=1)[:, :, 0]
    return idx, gamma


def _block_ends(k: int, n_atoms: int) -> list[int]:
    """Ends of the step ranges ``[0, e1), [e1, e2), ...``, one compiled loop each.

    In a range ending at ``e`` the contractions run over ``e`` slots instead of ``k``: with four
    ranges the Gram-row traffic is ``k^2 / 2 + k^2 / 8`` slot-rows per signal instead of ``k^2``.
    Small problems keep one loop (one compile instead of four).
    """
    n_blocks = 4 if k >= 16 and k * n_atoms >= 8192 else 1
    return sorted({-(-k * (i + 1) // n_blocks) for i in range(n_blocks)})


def _default_chunk(k: int, n_atoms: int, itemsize: int) -> int:
    # keep the per-chunk buffer of rows [chunk, k, n_atoms] near 8 MiB: each step rereads its
    # filled part, so it must stay in cache, while each step's fixed cost (about 30 small ops, a
    # hand-off to the second core for the larger ones) wants many signals per step. On the 2-core
    # CI CPU, 32 signals (k = 32, 2048 atoms) beat 16 and 64 (wall and CPU, interleaved runs).
    return max(1, min(1024, (8 << 20) // max(1, k * n_atoms * itemsize)))


@functools.partial(
    jax.jit, static_argnames=("k", "use_tol", "exact_k", "chunk_size", "return_indices")
)
def _omp(dictionary, signals, tol, *, k, use_tol, exact_k, chunk_size, return_indices):
    n_atoms = dictionary.shape[1]
    idx, val = _omp_impl(dictionary, signals, tol, k=k, use_tol=use_tol, exact_k=exact_k,
                         chunk_size=chunk_size)
    if return_indices:
        return SparseCode(idx, val)
    rows = jnp.arange(idx.shape[0])[:, None]
    dense = jnp.zeros((idx.shape[0], n_atoms), val.dtype)
    return dense.at[rows, idx].set(val, mode="drop")


def _omp_impl(dictionary, signals, tol, *, k, use_tol, exact_k, chunk_size):
    out_dtype = jnp.result_type(dictionary.dtype, signals.dtype)
    dtype = jnp.promote_types(out_dtype, jnp.float32)
    d = dictionary.astype(dtype)
    y = signals.astype(dtype).reshape(-1, d.shape[0])
    gram = d.T @ d
    xy = y @ d
    y_norm2 = jnp.sum(y * y, axis=-1)
    tol = jnp.asarray(tol, dtype)
    run = functools.partial(_omp_batch, tol=tol, gram=gram, k=k, use_tol=use_tol, exact_k=exact_k)
    n = y.shape[0]
    if n <= chunk_size:
        idx, val = run(xy, y_norm2)
        return idx, val.astype(out_dtype)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    xy = jnp.pad(xy, ((0, pad), (0, 0))).reshape(n_chunks, chunk_size, -1)
    y_norm2 = jnp.pad(y_norm2, (0, pad)).reshape(n_chunks, chunk_size)
    idx, val = jax.lax.map(lambda a: run(*a), (xy, y_norm2))
    return idx.reshape(-1, k)[:n], val.reshape(-1, k)[:n].astype(out_dtype)


def omp(
    dictionary: Float[Array, "n_features n_atoms"],
    signals: Float[Array, "... n_features"],
    k: int | None = None,
    tol: float | Float[Array, ""] | None = None,
    *,
    return_indices: bool = False,
    exact_k: bool = False,
    chunk_size: int | None = None,
) -> Float[Array, "... n_atoms"] | SparseCode:
    """Orthogonal matching pursuit for a batch of signals.

    Greedy: each step adds the atom most correlated (in absolute value) with the residual, then
    refits all selected coefficients by least squares (Cholesky updates on the Gram matrix
    ``D^T D``). Atoms (columns of ``dictionary``) are assumed to have unit norm, as in scikit-learn.

    Early stopping matches ``sklearn.linear_model.orthogonal_mp`` (its Gram variant,
    ``orthogonal_mp_gram``, which ``precompute=True`` selects): a signal stops before ``k`` atoms
    when

    * the best atom is already selected, or its squared correlation with the residual is below the
      dtype's machine epsilon (the residual vanished), or
    * the new atom is linearly dependent on the selected ones (Cholesky pivot ``<= eps``), or
    * ``tol`` is given and ``||r||^2 <= tol`` (checked after each added atom, so at least one atom
      is always selected).

    (scikit-learn's default non-Gram path tests the chosen atom's correlation with the *signal*
    rather than the residual, so on rare float32 draws it stops earlier than its own Gram path.)

    With ``exact_k=True`` none of these apply: selected atoms are masked out of the argmax and
    exactly ``k`` atoms are returned per signal, as mergekit's ``batch_omp`` does.

    Layout: ``dictionary`` is ``[n_features, n_atoms]`` like scikit-learn's ``X``; ``signals`` are
    batch-first ``[..., n_features]`` (scikit-learn's ``y`` is ``[n_features, n_targets]``), so
    ``omp(D, Y.T, k).T == orthogonal_mp(D, Y, n_nonzero_coefs=k)``.

    Args:
        dictionary: ``[n_features, n_atoms]`` float array with unit-norm columns.
        signals: ``[..., n_features]`` signals to code (any leading batch shape).
        k: maximum number of atoms per signal (static). Default: ``max(int(0.1 * n_atoms), 1)``
            as scikit-learn, unless ``tol`` is given, in which case the cap is
            ``min(n_features, n_atoms)``. Unlike scikit-learn (where ``tol`` overrides
            ``n_nonzero_coefs``), a ``k`` given together with ``tol`` acts as a cap.
        tol: target squared residual norm ``||y - D x||^2`` (may be a traced scalar).
        return_indices: return a `SparseCode` ``(indices, values)`` of shape ``[..., k]``
            (in selection order) instead of dense codes.
        exact_k: always select exactly ``k`` distinct atoms (no early stopping; ``tol`` must be
            None).
        chunk_size: signals processed together inside the compiled loop (memory ``chunk * k *
            n_atoms``); default keeps that buffer near 8 MiB.

    Returns:
        Dense codes ``[..., n_atoms]``, or a `SparseCode`. The dtype is the promoted input
        dtype; half-precision inputs (bfloat16, float16) are solved in float32 and cast back.

    Raises:
        ValueError, TypeError: on wrong shapes, dtypes, ``k``, ``tol`` or ``chunk_size``.
    """
    _validate(dictionary, signals, k, tol, chunk_size)
    n_features, n_atoms = dictionary.shape
    if exact_k and tol is not None:
        raise ValueError("`exact_k=True` always selects k atoms; `tol` must be None")
    if exact_k and k is None:
        raise ValueError("`exact_k=True` needs an explicit `k`")
    use_tol = tol is not None
    if k is None:
        k = min(n_features, n_atoms) if use_tol else max(int(0.1 * n_atoms), 1)
    dtype = jnp.promote_types(jnp.result_type(dictionary.dtype, signals.dtype), jnp.float32)
    if chunk_size is None:
        chunk_size = _default_chunk(k, n_atoms, jnp.dtype(dtype).itemsize)
    batch = signals.shape[:-1]
    out = _omp(
        dictionary, signals.reshape(-1, n_features), 0.0 if tol is None else tol,
        k=k, use_tol=use_tol, exact_k=exact_k, chunk_size=chunk_size,
        return_indices=return_indices,
    )
    if return_indices:
        return SparseCode(out.indices.reshape(*batch, k), out.values.reshape(*batch, k))
    return out.reshape(*batch, n_atoms)

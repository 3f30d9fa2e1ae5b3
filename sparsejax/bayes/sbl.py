"""Sparse Bayesian learning: ARD regression by MacKay's fixed-point (EM) updates.

Model: ``y = X w + noise``, ``noise ~ N(0, 1/alpha)``, ``w_j ~ N(0, 1/lambda_j)`` with Gamma
hyperpriors on ``alpha`` and every ``lambda_j``. Each iteration (scikit-learn's ``ARDRegression``,
Tipping 2001; MacKay 1992):

* posterior ``Sigma = (diag(lambda) + alpha X^T X)^-1`` and mean ``w = alpha Sigma X^T y`` over the
  kept weights (with the Woodbury identity when ``n < d``: an ``n x n`` Cholesky factorisation);
* ``gamma_j = 1 - lambda_j Sigma_jj``, ``lambda_j = (gamma_j + 2 l1) / (w_j^2 + 2 l2)``,
  ``alpha = (n - sum(gamma) + 2 a1) / (||y - X w||^2 + 2 a2)``;
* weights whose precision reaches ``prune_threshold`` are pruned for good (``w_j = 0``);
* stop when ``sum |w_old - w| < tol`` (after the first iteration) or after ``max_iter``; then one
  last posterior update with the final hyperparameters.

Everything is fixed-shape (pruned weights are masked, not removed) inside one ``lax.while_loop``, so
`sbl` runs under ``jit`` and ``vmap``: many problems solve in one batched call. `kron_sbl` runs the
same iteration for the dictionary ``kron(a, b)`` through its factors (the Kronecker-structured
channel of IRS-MIMO estimation), never forming the ``(na nb) x (da db)`` matrix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import (
    check_float_array,
    check_int,
    check_positive_float,
    is_concrete,
    must_be,
)

__all__ = ["SBLResult", "kron_sbl", "sbl"]


class SBLResult(NamedTuple):
    """Result of `sbl` / `kron_sbl` (leading batch dimensions as the targets').

    Attributes:
        coef: posterior mean of the weights ``[..., d]`` (exactly ``0`` where pruned).
        alpha: noise precision ``[...]``.
        lambda_: weight precisions ``[..., d]`` (frozen at their last value once pruned).
        keep: bool ``[..., d]``, ``False`` for pruned weights.
        n_iter: iterations run ``[...]`` (scikit-learn's ``n_iter_``).
    """

    coef: Float[Array, "*batch d"]
    alpha: Float[Array, "*batch"]
    lambda_: Float[Array, "*batch d"]
    keep: Bool[Array, "*batch d"]
    n_iter: Int[Array, "*batch"]


class _Dense(NamedTuple):
    x: jax.Array

    @property
    def shape(self):
        return self.x.shape

    def matvec(self, v):
        return self.x @ v

    def rmatvec(self, r):
        return self.x.T @ r

    def xlx(self, inv_lam):  # X diag(inv_lam) X^T, [n, n]
        return (self.x * inv_lam) @ self.x.T

    def diag_xtsx(self, r):  # diag(X^T R^T R X), [d]
        z = r @ self.x
        return jnp.sum(z * z, axis=0)

    def gram(self):
        return self.x.T @ self.x


class _Kron(NamedTuple):
    a: jax.Array  # [na, da]
    b: jax.Array  # [nb, db]

    @property
    def shape(self):
        return (self.a.shape[0] * self.b.shape[0], self.a.shape[1] * self.b.shape[1])

    def matvec(self, v):
        return (self.a @ v.reshape(self.a.shape[1], self.b.shape[1]) @ self.b.T).reshape(-1)

    def rmatvec(self, r):
        return (self.a.T @ r.reshape(self.a.shape[0], self.b.shape[0]) @ self.b).reshape(-1)

    def xlx(self, inv_lam):
        lam = inv_lam.reshape(self.a.shape[1], self.b.shape[1])
        t = jnp.einsum("ij,pj,jl->ipl", self.a, self.a, lam)
        m = jnp.einsum("ipl,kl,ql->ikpq", t, self.b, self.b)
        n = self.shape[0]
        return m.reshape(n, n)

    def diag_xtsx(self, r):  # diag(X^T R^T R X) through S = R^T R, never forming kron(a, b)
        s = r.T @ r
        na, nb = self.a.shape[0], self.b.shape[0]
        s4 = s.reshape(na, nb, na, nb)
        u = jnp.einsum("ij,ikpq,pj->jkq", self.a, s4, self.a)
        return jnp.einsum("jkq,kl,ql->jl", u, self.b, self.b).reshape(-1)

    def gram(self):
        return jnp.kron(self.a.T @ self.a, self.b.T @ self.b)


def _posterior(op, y, alpha, lam, keep):
    """``(coef, gamma)`` over the kept weights (pruned: 0), by Cholesky factorisations.

    ``gamma_j = 1 - lambda_j Sigma_jj`` (the well-determinedness of weight ``j``).
    """
    n, d = op.shape
    dtype = y.dtype
    if n < d:
        # Woodbury with C = I/alpha + X L X^T, L = diag(1/lambda) on the kept weights:
        # coef = L X^T C^-1 y and gamma = L diag(X^T C^-1 X), free of the cancellations of
        # alpha Sigma X^T y and 1 - lambda Sigma_jj (which lose float32 when noise is low)
        inv_lam = jnp.where(keep, 1.0 / lam, 0.0)
        chol = jnp.linalg.cholesky(jnp.eye(n, dtype=dtype) / alpha + op.xlx(inv_lam))
        # C^-1 = R^T R with R = chol^-1: one small triangular solve, then matmuls (batched
        # triangular solves with wide right-hand sides are slow on CPU)
        r = jax.scipy.linalg.solve_triangular(chol, jnp.eye(n, dtype=dtype), lower=True)
        coef = inv_lam * op.rmatvec(r.T @ (r @ y))
        gamma = inv_lam * op.diag_xtsx(r)
    else:  # Sigma = (diag(lambda) + alpha X^T X)^-1 on the kept block; pruned rows decoupled
        both = keep[:, None] & keep[None, :]
        a = jnp.diag(jnp.where(keep, lam, 1.0)) + alpha * jnp.where(both, op.gram(), 0.0)
        chol = jnp.linalg.cholesky(a)
        coef = alpha * jax.scipy.linalg.cho_solve((chol, True), jnp.where(keep, op.rmatvec(y), 0.0))
        inv_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(d, dtype=dtype), lower=True)
        gamma = 1.0 - lam * jnp.sum(inv_chol**2, axis=0)
    return jnp.where(keep, coef, 0.0), jnp.where(keep, gamma, 0.0)


def _sbl_one(op, y, max_iter, tol, threshold, a1, a2, l1, l2):
    carry = _sbl_loop(op, y, _initial_alpha(y), max_iter, tol, threshold, a1, a2, l1, l2)
    return _sbl_result(op, y, *carry)


def _initial_alpha(y):
    eps = np.finfo(np.float64).eps
    return (1.0 / (jnp.var(y) + eps)).astype(y.dtype)


def _sbl_loop(op, y, alpha0, max_iter, tol, threshold, a1, a2, l1, l2):
    """The ARD iterations from ``alpha0``: ``(iterations, coef, alpha, lambda, keep)``."""
    n, d = op.shape
    dtype = y.dtype
    zeros = jnp.zeros(d, dtype)
    init = (jnp.int32(0), zeros, zeros, alpha0, jnp.ones(d, dtype), jnp.ones(d, bool),
            jnp.bool_(False))

    def cond(state):
        it, *_, done = state
        return (~done) & (it < max_iter)

    def body(state):
        it, coef, coef_old, alpha, lam, keep, _ = state
        coef, gamma = _posterior(op, y, alpha, lam, keep)
        sse = jnp.sum((y - op.matvec(coef)) ** 2)
        lam = jnp.where(keep, (gamma + 2.0 * l1) / (coef**2 + 2.0 * l2), lam)
        alpha = (n - jnp.sum(gamma) + 2.0 * a1) / (sse + 2.0 * a2)
        keep = lam < threshold
        coef = jnp.where(keep, coef, 0.0)
        converged = (it > 0) & (jnp.sum(jnp.abs(coef_old - coef)) < tol)
        done = converged | ~jnp.any(keep)
        return it + 1, coef, coef, alpha.astype(dtype), lam, keep, done

    it, coef, _, alpha, lam, keep, _ = lax.while_loop(cond, body, init)
    return it, coef, alpha, lam, keep


def _sbl_result(op, y, it, coef, alpha, lam, keep):
    final, _ = _posterior(op, y, alpha, lam, keep)
    coef = jnp.where(jnp.any(keep), final, coef)
    return SBLResult(coef, alpha, lam, keep, it)


def _check_options(max_iter, tol, prune_threshold):
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    check_positive_float(tol, "tol")
    check_positive_float(prune_threshold, "prune_threshold")
    return max_iter


def _check_data(x: jax.Array, name: str) -> None:
    """Concrete ``x`` must be finite (one NaN would stop the iteration at all-zero coefficients)."""
    if is_concrete(x) and x.size and not bool(jnp.all(jnp.isfinite(x))):
        bad = int(jnp.sum(~jnp.isfinite(x)))
        raise ValueError(must_be(name, "finite (no NaN or inf)", f"{bad} non-finite entries of "
                                 f"{x.size}", raw=True))


def _chunk(chunk_size: int | str | None) -> int | None:
    if chunk_size == "auto":
        return 1 if jax.default_backend() == "cpu" else None
    if chunk_size is None:
        return None
    return check_int(chunk_size, "chunk_size", minimum=1)


def _run(make_op, factors, targets, n, max_iter, tol, prune_threshold, hyper, chunk_size):
    """`_sbl_one` over the leading dims of ``targets`` (and of the factors, if batched): ``vmap``
    over chunks of ``chunk_size`` problems, chunks in sequence (``lax.map``)."""
    if n == 0 or any(f.shape[-1] == 0 for f in factors):
        raise ValueError(must_be("design", "[..., n, d] with at least one sample (row) and one "
                                 "feature (column)", f"shape {factors[0].shape}"
                                 + "".join(f" x {f.shape}" for f in factors[1:]), raw=True))
    batch = targets.shape[:-1]
    for f in factors:
        if f.ndim > 2 and f.shape[:-2] != batch:
            raise ValueError(f"batched factors must have the targets' batch shape {batch}; got "
                             f"{f.shape[:-2]}.")
    if targets.shape[-1] != n:
        raise ValueError(f"`targets` must be [..., {n}] (one entry per design row); got "
                         f"{targets.shape}.")
    dtype = jnp.result_type(targets, *factors)
    factors = [f.astype(dtype) for f in factors]
    y = targets.astype(dtype).reshape(-1, n)
    flat = tuple(f.reshape(-1, *f.shape[-2:]) if f.ndim > 2 else f for f in factors)
    static = dict(make_op=make_op, max_iter=max_iter, tol=tol, prune_threshold=prune_threshold,
                  hyper=tuple(hyper))
    c = _chunk(chunk_size)
    if c is None or c >= y.shape[0]:
        # One vmap, eager around the compiled loop (its rounding as it always was: a jit would
        # fuse the initial variance and the final solve with their neighbours)
        axes = _batch_axes(flat)
        alpha0 = jax.vmap(_initial_alpha)(y)
        carry = _solve_loop(flat, y, alpha0, **static)
        out = jax.vmap(lambda y_i, it, coef, alpha, lam, keep, *fs: _sbl_result(
            make_op(*fs), y_i, it, coef, alpha, lam, keep),
            in_axes=(0, 0, 0, 0, 0, 0, *axes))(y, *carry, *flat)
    else:
        out = _solve_chunks(flat, y, chunk=c, **static)
    return jax.tree.map(lambda z: z.reshape(*batch, *z.shape[1:]), out)


def _batch_axes(flat):
    return tuple(0 if f.ndim > 2 else None for f in flat)


@functools.partial(jax.jit, static_argnames=("make_op", "max_iter", "tol", "prune_threshold",
                                             "hyper"))
def _solve_loop(flat, y, alpha0, *, make_op, max_iter, tol, prune_threshold, hyper):
    """The vmapped ARD loop of `_run`'s unchunked path, compiled once per shapes and options (an
    eager vmap of a fresh closure recompiled its ``while_loop`` on every call)."""
    def loop(y_i, alpha_i, *fs):
        return _sbl_loop(make_op(*fs), y_i, alpha_i, max_iter, tol, prune_threshold, *hyper)

    return jax.vmap(loop, in_axes=(0, 0, *_batch_axes(flat)))(y, alpha0, *flat)


@functools.partial(jax.jit, static_argnames=("make_op", "max_iter", "tol", "prune_threshold",
                                             "hyper", "chunk"))
def _solve_chunks(flat, y, *, make_op, max_iter, tol, prune_threshold, hyper, chunk):
    """`_run`'s chunked path: ``vmap`` over chunks of ``chunk`` problems, the chunks in sequence
    (``lax.map``), so each chunk's ``while_loop`` stops at its own slowest problem; one compiled
    program per shapes and options."""
    def one(y_i, *fs):
        return _sbl_one(make_op(*fs), y_i, max_iter, tol, prune_threshold, *hyper)

    batched = [f.ndim > 2 for f in flat]
    solve = jax.vmap(one, in_axes=(0, *_batch_axes(flat)))
    problems = y.shape[0]
    pad = -problems % chunk

    def chunks(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
        return a.reshape(-1, chunk, *a.shape[1:])

    per = [chunks(f) for f, b in zip(flat, batched) if b]
    shared = [f for f, b in zip(flat, batched) if not b]

    def run_chunk(args):
        y_c, *per_c = args
        it_per, it_shared = iter(per_c), iter(shared)
        return solve(y_c, *(next(it_per) if b else next(it_shared) for b in batched))

    out = lax.map(run_chunk, (chunks(y), *per))
    return jax.tree.map(lambda z: z.reshape(-1, *z.shape[2:])[:problems], out)


def sbl(
    design: Float[Array, "*batch n d"],
    targets: Float[Array, "*batch n"],
    *,
    max_iter: int = 300,
    tol: float = 1e-3,
    prune_threshold: float = 1e4,
    alpha_1: float = 1e-6,
    alpha_2: float = 1e-6,
    lambda_1: float = 1e-6,
    lambda_2: float = 1e-6,
    chunk_size: int | str | None = "auto",
) -> SBLResult:
    """ARD / sparse Bayesian learning regression, batched over target vectors (and designs).

    The iteration of scikit-learn's ``ARDRegression(fit_intercept=False)`` with the same defaults
    (see the module docstring); the coefficients agree to ``1e-3`` relative in float64 and the
    pruned sets match.

    Args:
        design: ``X`` ``[n, d]`` shared by all problems, or ``[..., n, d]`` one per problem.
        targets: ``y`` ``[n]`` or ``[..., n]`` (leading dimensions are independent problems).
        max_iter: maximum number of iterations.
        tol: convergence threshold on ``sum |w_old - w|``.
        prune_threshold: precision above which a weight is pruned (scikit-learn's
            ``threshold_lambda``).
        alpha_1: shape of the Gamma hyperprior of the noise precision.
        alpha_2: rate of the Gamma hyperprior of the noise precision.
        lambda_1: shape of the Gamma hyperprior of the weight precisions.
        lambda_2: rate of the Gamma hyperprior of the weight precisions.
        chunk_size: problems solved together: ``vmap`` over chunks of this many problems, the
            chunks in sequence (``lax.map``), so each chunk iterates only until its own slowest
            problem converges. ``None``: all problems in one ``vmap`` (every problem iterates as
            long as the slowest; best on GPU/TPU). ``"auto"``: ``1`` on CPU, ``None`` elsewhere.

    Returns:
        `SBLResult` with the targets' leading dimensions.

    Raises:
        TypeError: non-float ``design``/``targets``.
        ValueError: shapes that do not match, no samples (``n == 0``) or features, non-finite
            ``design``/``targets`` (checked when concrete: under ``jit`` a NaN makes the result
            meaningless, check the data before), ``max_iter < 1``, non-positive ``tol`` or
            threshold.
    """
    design = check_float_array(design, "design")
    targets = check_float_array(targets, "targets")
    max_iter = _check_options(max_iter, tol, prune_threshold)
    if design.ndim < 2:
        raise ValueError(f"`design` must be [n, d] or [..., n, d]; got shape {design.shape}.")
    _check_data(design, "design")
    _check_data(targets, "targets")
    return _run(_Dense, [design], targets, design.shape[-2], max_iter, tol, prune_threshold,
                (alpha_1, alpha_2, lambda_1, lambda_2), chunk_size)


def kron_sbl(
    a: Float[Array, "*batch na da"],
    b: Float[Array, "*batch nb db"],
    targets: Float[Array, "*batch n"],
    *,
    max_iter: int = 300,
    tol: float = 1e-3,
    prune_threshold: float = 1e4,
    alpha_1: float = 1e-6,
    alpha_2: float = 1e-6,
    lambda_1: float = 1e-6,
    lambda_2: float = 1e-6,
    chunk_size: int | str | None = "auto",
) -> SBLResult:
    """`sbl` with the design ``kron(a, b)`` applied through its factors, never formed.

    Row ``i * nb + k`` and column ``j * db + l`` of ``kron(a, b)`` is ``a[i, j] * b[k, l]``, so
    ``targets`` is the row-major flattening of an ``[na, nb]`` measurement ``Y = a W b^T`` and the
    coefficients flatten ``W [da, db]``. Products with the design cost ``O(na da db + na nb db)``
    instead of ``O(na nb da db)``; the ``n x n`` (or ``d x d``) solve of each iteration remains.

    Args:
        a: ``[na, da]`` (or batched ``[..., na, da]``).
        b: ``[nb, db]`` (or batched ``[..., nb, db]``).
        targets: ``[na * nb]`` or ``[..., na * nb]``.
        max_iter: as in `sbl`.
        tol: as in `sbl`.
        prune_threshold: as in `sbl`.
        alpha_1: as in `sbl`.
        alpha_2: as in `sbl`.
        lambda_1: as in `sbl`.
        lambda_2: as in `sbl`.
        chunk_size: as in `sbl`.

    Returns:
        `SBLResult` with ``d = da * db`` coefficients.
    """
    a = check_float_array(a, "a")
    b = check_float_array(b, "b")
    targets = check_float_array(targets, "targets")
    max_iter = _check_options(max_iter, tol, prune_threshold)
    for name, f in (("a", a), ("b", b)):
        if f.ndim < 2:
            raise ValueError(f"`{name}` must be a matrix [n, d] (or batched); got shape {f.shape}.")
        _check_data(f, name)
    _check_data(targets, "targets")
    return _run(_Kron, [a, b], targets, a.shape[-2] * b.shape[-2], max_iter, tol, prune_threshold,
                (alpha_1, alpha_2, lambda_1, lambda_2), chunk_size)

"""CoSpaDi: compressing a weight matrix as a dictionary times column-sparse codes, fitted to the
layer's *output* on calibration data, compared with truncated SVD at the same parameter count.

For a linear layer ``y = x W`` (``W [d_in, d_out]``, Flax layout) and calibration inputs
``X [n, d_in]``, CoSpaDi finds ``W ~ D S`` (``D [d_in, n_atoms]``, ``S [n_atoms, d_out]`` with
``nnz_per_column`` non-zeros per column) minimising ``||X (W - D S)||_F``. With the Cholesky factor
``X^T X = L L^T``, ``||X M||_F = ||L^T M||_F``, so it runs ordinary dictionary learning (K-SVD with
OMP) on the whitened columns ``L^T W`` and maps the dictionary back, ``D = L^{-T} D'``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_int
from sparsejax.dictionary.learning import ksvd

__all__ = ["CoSpaDiResult", "cospadi", "output_error", "truncated_svd"]


class CoSpaDiResult(NamedTuple):
    """Result of `cospadi`.

    Attributes:
        dictionary: ``[d_in, n_atoms]``.
        codes: ``[n_atoms, d_out]`` with ``nnz_per_column`` non-zeros per column.
        compression_ratio: ``d_in * d_out / (d_in * n_atoms + d_out * nnz_per_column)`` (stored
            values; the code indices are not counted).
        output_error: ``||X (W - D S)||_F / ||X W||_F`` on the calibration inputs.
        svd_rank: rank ``r = floor(params / (d_in + d_out))`` of the SVD baselines, which store
            ``r (d_in + d_out)`` values, at most CoSpaDi's count.
        svd_output_error: the same relative output error for the plain truncated SVD of ``W``.
        whitened_svd_output_error: ... for the output-aware truncated SVD (SVD of ``L^T W``
            mapped back by ``L^{-T}``, the optimum among rank-``r`` factorisations).
    """

    dictionary: Float[Array, "d_in n_atoms"]
    codes: Float[Array, "n_atoms d_out"]
    compression_ratio: float
    output_error: float
    svd_rank: int
    svd_output_error: float
    whitened_svd_output_error: float


def output_error(
    weight: Float[Array, "d_in d_out"],
    approx: Float[Array, "d_in d_out"],
    inputs: Float[Array, "n d_in"],
) -> Float[Array, ""]:
    """Relative output error ``||X (W - W_hat)||_F / ||X W||_F``."""
    return jnp.linalg.norm(inputs @ (weight - approx)) / jnp.linalg.norm(inputs @ weight)


def truncated_svd(
    weight: Float[Array, "d_in d_out"], rank: int
) -> tuple[Float[Array, "d_in rank"], Float[Array, "rank d_out"]]:
    """Best rank-``rank`` factorisation ``W ~ U V`` in Frobenius norm (``U = U_r S_r``)."""
    u, s, vt = jnp.linalg.svd(weight, full_matrices=False)
    return u[:, :rank] * s[:rank], vt[:rank]


def _whitener(x, damp):
    xtx = x.T @ x
    xtx = xtx + damp * jnp.mean(jnp.diagonal(xtx)) * jnp.eye(xtx.shape[0], dtype=xtx.dtype)
    return jnp.linalg.cholesky(xtx)  # lower, X^T X = L L^T


def cospadi(
    weight: Float[Array, "d_in d_out"],
    calibration_inputs: Float[Array, "n d_in"],
    n_atoms: int,
    nnz_per_column: int,
    *,
    key: Array,
    n_iter: int = 20,
    damp: float = 1e-6,
    whiten: bool = True,
) -> CoSpaDiResult:
    """Compress ``weight`` as ``D S`` with column-sparse ``S``, and compare with truncated SVD.

    Args:
        weight: ``[d_in, d_out]`` (``y = x W``).
        calibration_inputs: ``[n, d_in]`` inputs of the layer.
        n_atoms: dictionary size.
        nnz_per_column: non-zeros per column of the codes (OMP's ``k``), ``<= n_atoms``.
        key: PRNG key for the dictionary initialisation.
        n_iter: K-SVD rounds.
        damp: ridge added to ``X^T X`` as a fraction of its mean diagonal (keeps the Cholesky
            factor defined when ``n < d_in`` or inputs are degenerate).
        whiten: fit the output error (CoSpaDi); ``False`` fits ``||W - D S||_F`` instead (for
            comparison).

    Returns:
        `CoSpaDiResult` with the factors, the compression ratio and the output errors of
        CoSpaDi and of plain and whitened truncated SVD with at most the same parameter count.
    """
    for name, arr, nd in (("weight", weight, 2), ("calibration_inputs", calibration_inputs, 2)):
        if not hasattr(arr, "ndim") or arr.ndim != nd:
            raise ValueError(
                f"`{name}` must be 2-D; got {getattr(arr, 'shape', type(arr).__name__)}"
            )
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be floating; got dtype {arr.dtype}")
    d_in, d_out = weight.shape
    if calibration_inputs.shape[1] != d_in:
        raise ValueError(
            f"`calibration_inputs` must be [n, d_in={d_in}]; got "
            f"{tuple(calibration_inputs.shape)}"
        )
    check_int(n_atoms, "n_atoms", minimum=1)
    check_int(nnz_per_column, "nnz_per_column", minimum=1, maximum=n_atoms)
    params = d_in * n_atoms + d_out * nnz_per_column
    rank = max(0, min(params // (d_in + d_out), min(d_in, d_out)))
    chol, w_white = _whitened(weight, calibration_inputs, damp, whiten=whiten)
    d_white, codes_t = ksvd(w_white.T, n_atoms, key=key, k=nnz_per_column, n_iter=n_iter)
    dictionary, codes, errors = _finish(weight, calibration_inputs, damp, chol, d_white, codes_t,
                                        rank=rank, whiten=whiten)
    err, svd_err, wsvd_err = (float(e) for e in errors)
    return CoSpaDiResult(dictionary.astype(weight.dtype), codes.astype(weight.dtype),
                         float(d_in * d_out / params), err, int(rank), svd_err, wsvd_err)


def _as_float(weight, calibration_inputs):
    dtype = jnp.promote_types(weight.dtype, jnp.float32)
    return weight.astype(dtype), calibration_inputs.astype(dtype)


@functools.partial(jax.jit, static_argnames=("whiten",))
def _whitened(weight, calibration_inputs, damp, *, whiten):
    """``(L, L^T W)``: the whitening factor (the identity without ``whiten``) and the signals."""
    w, x = _as_float(weight, calibration_inputs)
    chol = _whitener(x, damp) if whiten else jnp.eye(w.shape[0], dtype=w.dtype)
    return chol, chol.T @ w  # columns are the signals


@functools.partial(jax.jit, static_argnames=("rank", "whiten"))
def _finish(weight, calibration_inputs, damp, chol, d_white, codes_t, *, rank, whiten):
    """The dictionary mapped back (``D = L^{-T} D'``), the codes and the three output errors."""
    w, x = _as_float(weight, calibration_inputs)
    dictionary = jax.scipy.linalg.solve_triangular(chol.T, d_white, lower=False)
    codes = codes_t.T
    err = output_error(w, dictionary @ codes, x)
    if rank > 0:
        u, v = truncated_svd(w, rank)
        svd_err = output_error(w, u @ v, x)
        l_full = chol if whiten else _whitener(x, damp)  # the whitened SVD's factor
        uw, vw = truncated_svd(l_full.T @ w, rank)
        uw = jax.scipy.linalg.solve_triangular(l_full.T, uw, lower=False)
        wsvd_err = output_error(w, uw @ vw, x)
    else:
        svd_err = wsvd_err = jnp.ones((), w.dtype)
    return dictionary, codes, (err, svd_err, wsvd_err)

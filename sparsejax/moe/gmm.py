"""Grouped matrix multiplication: rows sorted by group, each group times its own matrix.

``gmm(x, w, group_sizes)[r] = x[r] @ w[g(r)]`` where rows ``start_g <= r < start_g + size_g``
belong to group ``g`` (``start_g = size_0 + ... + size_{g-1}``); rows past
``sum(group_sizes)`` are zero. The signature of ``jax.lax.ragged_dot``.

Backends:

* ``"ragged_dot"``: ``jax.lax.ragged_dot`` (native grouped-matmul kernels on GPU and TPU; on CPU
  XLA lowers it to a dense product per group over *all* rows, ``G`` times the work: measured
  14x a dense matmul of the same active FLOPs for ``G = 8``);
* ``"xla"``: the megablox ``gmm`` schedule written with ``lax.fori_loop``: row tiles of
  ``tile`` rows; a tile that straddles a group boundary is visited once per group it touches
  (at most ``tiles + G - 1`` visits, the trip count is traced) and each visit writes only the
  rows of its group. Its cost tracks the active FLOPs (the CPU default). The VJP is the same
  loop: ``dx = gmm(dy, w^T)`` and ``dw[g] = sum of x_tile^T @ dy_tile`` over the group's tiles
  (tiles of at least 512 rows there: each visit rewrites a ``[K, N]`` slab of ``dw``);
* ``"auto"``: ``ragged_dot`` on GPU/TPU, ``xla`` on CPU.

Both backends are registered as op ``"gmm"`` in `sparsejax._backend.IMPLEMENTATIONS`. Products
accumulate in ``promote_types(result_type(x, w), float32)``: float32 for float32 / bfloat16
operands, float64 for float64 operands (under ``jax_enable_x64``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._backend import implementation, resolve
from sparsejax._checks import check_float_array, check_int

__all__ = ["gmm"]

_HI = jax.lax.Precision.HIGHEST
_DW_TILE = 512  # minimum row tile of the weight-gradient loop (measured on CPU)


def _acc(*arrays: Array) -> jnp.dtype:
    """Accumulation dtype: float32, or float64 when an operand is float64."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def gmm(
    x: Float[Array, "M K"],
    w: Float[Array, "G K N"],
    group_sizes: Int[Array, " G"],
    *,
    backend: str = "auto",
    tile: int = 128,
) -> Float[Array, "M N"]:
    """Grouped matmul ``out[r] = x[r] @ w[group(r)]`` over rows sorted by group.

    Args:
        x: ``[M, K]`` rows sorted by group.
        w: ``[G, K, N]`` one matrix per group.
        group_sizes: ``int32 [G]`` rows per group, ``sum <= M`` (rows past the sum give 0).
        backend: ``"auto"``, ``"ragged_dot"`` or ``"xla"`` (see the module docstring;
            ``sparsejax._backend.backends("gmm")``).
        tile: row tile of the ``xla`` backend (``>= 1``).

    Returns:
        ``[M, N]`` in ``result_type(x, w)``.

    Raises:
        ValueError: shapes that do not chain, unknown backend, ``tile < 1``.
        TypeError: non-float operands.
    """
    x = check_float_array(x, "x")
    w = check_float_array(w, "w")
    group_sizes = jnp.asarray(group_sizes)
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"`x` [M, K] and `w` [G, K, N] must share K; got x {x.shape} and "
                         f"w {w.shape}.")
    if group_sizes.shape != (w.shape[0],) or not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"`group_sizes` must be an int array of shape ({w.shape[0]},); got "
                         f"{group_sizes.dtype}{list(group_sizes.shape)}.")
    tile = check_int(tile, "tile", minimum=1)
    fn = implementation("gmm", resolve("gmm", backend))
    return fn(x, w, group_sizes.astype(jnp.int32), tile=tile)


def gmm_ragged_dot(x: Float[Array, "M K"], w: Float[Array, "G K N"],
                   group_sizes: Int[Array, " G"], *, tile: int = 128) -> Float[Array, "M N"]:
    """The ``"ragged_dot"`` backend of `gmm` (``tile`` unused); validated inputs."""
    del tile
    return jax.lax.ragged_dot(x, w, group_sizes, precision=_HI,
                              preferred_element_type=_acc(x, w)).astype(jnp.result_type(x, w))


def gmm_xla(x: Float[Array, "M K"], w: Float[Array, "G K N"], group_sizes: Int[Array, " G"],
            *, tile: int = 128) -> Float[Array, "M N"]:
    """The ``"xla"`` backend of `gmm` (the tiled loop); validated inputs."""
    return _gmm_xla(min(tile, x.shape[0]), x, w, group_sizes)


def _visits(group_sizes: Array, m: int, tile: int) -> tuple[Array, Array, Array, Array, Array]:
    """The (group, tile) visits of the megablox schedule: static length ``tiles + G - 1``."""
    g = group_sizes.shape[0]
    ntiles = -(-m // tile)
    ends = jnp.cumsum(group_sizes)
    starts = ends - group_sizes
    first = starts // tile
    last = (jnp.maximum(ends, 1) - 1) // tile
    count = jnp.where(group_sizes > 0, last - first + 1, 0)
    offsets = jnp.cumsum(count) - count
    total = jnp.sum(count)
    n = ntiles + g - 1
    v = jnp.arange(n, dtype=jnp.int32)
    grp = jnp.clip(jnp.searchsorted(offsets + count, v, side="right"), 0, g - 1).astype(jnp.int32)
    tl = jnp.clip(first[grp] + v - offsets[grp], 0, ntiles - 1)
    return grp, tl, starts, ends, total


def _pad_rows(x: Array, rows: int) -> Array:
    return x if x.shape[0] == rows else jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def _tile_rows(tile: int, start_row: Array, starts: Array, ends: Array, g: Array) -> Array:
    r = start_row + jnp.arange(tile)
    return (r >= starts[g]) & (r < ends[g])


def _gmm_fwd_loop(tile: int, x: Array, w: Array, group_sizes: Array) -> Array:
    m = x.shape[0]
    ntiles = -(-m // tile)
    xp = _pad_rows(x, ntiles * tile)
    grp, tl, starts, ends, total = _visits(group_sizes, m, tile)
    acc = _acc(x, w)

    def body(i, out):
        g, t = grp[i], tl[i]
        xs = jax.lax.dynamic_slice_in_dim(xp, t * tile, tile, axis=0)
        prod = jnp.matmul(xs, w[g], preferred_element_type=acc, precision=_HI)
        cur = jax.lax.dynamic_slice_in_dim(out, t * tile, tile, axis=0)
        rows = _tile_rows(tile, t * tile, starts, ends, g)[:, None]
        return jax.lax.dynamic_update_slice_in_dim(out, jnp.where(rows, prod, cur), t * tile,
                                                   axis=0)

    out = jax.lax.fori_loop(0, total, body, jnp.zeros((ntiles * tile, w.shape[2]), acc))
    return out[:m].astype(jnp.result_type(x, w))


def _gmm_dw_loop(tile: int, x: Array, dy: Array, group_sizes: Array, g_count: int) -> Array:
    m = x.shape[0]
    ntiles = -(-m // tile)
    xp, dyp = _pad_rows(x, ntiles * tile), _pad_rows(dy, ntiles * tile)
    grp, tl, starts, ends, total = _visits(group_sizes, m, tile)
    acc = _acc(x, dy)

    def body(i, dw):
        g, t = grp[i], tl[i]
        rows = _tile_rows(tile, t * tile, starts, ends, g)[:, None]
        xs = jnp.where(rows, jax.lax.dynamic_slice_in_dim(xp, t * tile, tile, axis=0), 0)
        gs = jax.lax.dynamic_slice_in_dim(dyp, t * tile, tile, axis=0)
        upd = dw[g] + jnp.matmul(xs.T, gs, preferred_element_type=acc, precision=_HI)
        return jax.lax.dynamic_update_index_in_dim(dw, upd, g, axis=0)

    dw = jnp.zeros((g_count, x.shape[1], dy.shape[1]), acc)
    return jax.lax.fori_loop(0, total, body, dw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gmm_xla(tile: int, x: Array, w: Array, group_sizes: Array) -> Array:
    return _gmm_fwd_loop(tile, x, w, group_sizes)


def _gmm_xla_fwd(tile, x, w, group_sizes):
    return _gmm_fwd_loop(tile, x, w, group_sizes), (x, w, group_sizes)


def _gmm_xla_bwd(tile, res, dy):
    x, w, group_sizes = res
    dx = _gmm_fwd_loop(tile, dy, jnp.swapaxes(w, 1, 2), group_sizes)
    # Each weight-gradient visit rewrites a whole [K, N] slab of dw: longer tiles, fewer visits.
    dw = _gmm_dw_loop(min(max(tile, _DW_TILE), x.shape[0]), x, dy, group_sizes, w.shape[0])
    return dx.astype(x.dtype), dw.astype(w.dtype), None


_gmm_xla.defvjp(_gmm_xla_fwd, _gmm_xla_bwd)

"""Dispatch + expert feed-forward + combine, three interchangeable implementations.

For a `Routing` of ``T`` tokens and expert weights ``w1 [E, d, F]``, ``w2 [E, F, d]``,
`moe_ffn` computes ::

    y[t] = sum_j combine_weights[t, j] * act(x[t] @ w1[e]) @ w2[e],   e = expert_index[t, j]

over the kept slots ``j``. The implementations compute exactly this and differ in layout:

* ``"einsum"``: one-hot dispatch and combine tensors ``[T, E, capacity]`` and batched einsums
  over the ``[E, capacity, d]`` expert buffers (the Switch/GShard/flaxformer reference; memory
  and FLOPs scale with ``E * capacity``, i.e. ``T * E`` when dropless).
* ``"ragged"``: the kept slots sorted by expert into ``min(T * k, E * capacity)`` rows (no
  padding), two grouped matmuls `sparsejax.moe.gmm` (``jax.lax.ragged_dot`` on GPU/TPU, the
  tiled XLA loop on CPU), then un-sort and weight (MaxText's dropless path).
* ``"block_sparse"``: the MegaBlocks formulation on `sparsejax.formats.BlockSparse`: each
  expert's rows are padded to a multiple of the block rows ``bm``, the hidden layer
  ``act(x_sorted @ [w1_0 | ... | w1_{E-1}])`` is computed only on the block-diagonal topology
  (row block of expert ``e`` x column blocks of expert ``e``) with `sparsejax.ops.sddmm`, and the
  output is `sparsejax.ops.bsr_matmul` of that block-sparse hidden layer with the stacked
  ``w2``. The ``backend`` argument selects the `sparsejax.ops` backend (Pallas kernels on
  GPU/TPU).

Gradients flow to ``x``, ``w1``, ``w2`` and the combine weights (hence to the router) in all
three.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_callable, check_choice, check_float_array, check_int
from sparsejax.formats import BlockSparse
from sparsejax.moe.gmm import gmm
from sparsejax.moe.routing import Routing
from sparsejax.ops import bsr_matmul, sddmm

__all__ = ["IMPLEMENTATIONS", "moe_ffn"]

IMPLEMENTATIONS = ("einsum", "ragged", "block_sparse")
_HI = jax.lax.Precision.HIGHEST


def _check_experts(x: Any, routing: Any, w1: Any, w2: Any) -> tuple[Array, Array, Array]:
    if not isinstance(routing, Routing):
        raise TypeError(f"`routing` must be a sparsejax.moe.Routing; got {type(routing).__name__}.")
    x = check_float_array(x, "x")
    w1 = check_float_array(w1, "w1")
    w2 = check_float_array(w2, "w2")
    if x.ndim != 2:
        raise ValueError(f"`x` must be 2-D [tokens, d_model]; got shape {x.shape}.")
    if w1.ndim != 3 or w2.ndim != 3:
        raise ValueError(f"`w1` must be [E, d_model, d_ff] and `w2` [E, d_ff, d_model]; got "
                         f"{w1.shape} and {w2.shape}.")
    e, d, f = w1.shape
    if w2.shape != (e, f, d):
        raise ValueError(f"`w2` must have shape [E, d_ff, d_model] = {(e, f, d)}; got {w2.shape}.")
    if x.shape[1] != d:
        raise ValueError(f"`x` must have d_model = {d} features (w1.shape[1]); got {x.shape}.")
    if routing.num_experts != e:
        raise ValueError(f"`routing.num_experts` (the router logits' expert axis) must equal the "
                         f"number of experts w1.shape[0] = {e}; got {routing.num_experts}.")
    if routing.num_tokens != x.shape[0]:
        raise ValueError(f"`routing` must route the {x.shape[0]} tokens of `x`; got "
                         f"{routing.num_tokens}.")
    return x, w1, w2


def moe_ffn(
    x: Float[Array, "T d"],
    routing: Routing,
    w1: Float[Array, "E d F"],
    w2: Float[Array, "E F d"],
    *,
    activation: Callable[[Array], Array] = jax.nn.gelu,
    implementation: str = "ragged",
    backend: str = "auto",
    block_shape: tuple[int, int] | None = None,
    tile: int = 128,
) -> Float[Array, "T d"]:
    """Mixture-of-experts feed-forward ``sum_j g_tj * act(x_t @ w1[e_tj]) @ w2[e_tj]``.

    Args:
        x: ``[T, d]`` tokens.
        routing: a `Routing` over ``E`` experts for these ``T`` tokens.
        w1: ``[E, d, F]`` first expert layer.
        w2: ``[E, F, d]`` second expert layer.
        activation: elementwise hidden activation.
        implementation: ``"einsum"``, ``"ragged"`` (default) or ``"block_sparse"``.
        backend: ``"ragged"``: a `sparsejax.moe.gmm` backend (``"auto"``, ``"ragged_dot"``,
            ``"xla"``); ``"block_sparse"``: a `sparsejax.ops` backend (``"auto"``,
            ``"reference"``, ``"xla"``, ``"pallas_tpu"``, ``"pallas_gpu"``). Ignored by
            ``"einsum"``.
        block_shape: ``(bm, bn)`` of ``"block_sparse"``, ``bn`` dividing ``F``; default
            ``(min(tile, 128), F)``.
        tile: row tile of the ``"ragged"`` XLA loop.

    Returns:
        ``[T, d]`` in ``x.dtype`` (tokens with no kept slot give zeros).

    Raises:
        ValueError: mismatched shapes, a routing over another number of experts or tokens, an
            unknown implementation, a block shape that does not divide ``F``.
        TypeError: non-float arrays, a ``routing`` that is not a `Routing`.
    """
    x, w1, w2 = _check_experts(x, routing, w1, w2)
    tile = check_int(tile, "tile", minimum=1)
    check_choice(implementation, "implementation", IMPLEMENTATIONS)
    check_callable(activation, "activation", "an elementwise callable")
    bm = bn = 0
    if implementation == "block_sparse":
        f = w1.shape[2]
        bm, bn = (min(tile, 128), f) if block_shape is None else block_shape
        bm = check_int(bm, "block_shape[0]", minimum=1)
        bn = check_int(bn, "block_shape[1]", minimum=1)
        if f % bn:
            raise ValueError(f"`block_shape[1]` must divide d_ff = {f}; got {bn}.")
    y = _moe_ffn(x, routing, w1, w2, activation, implementation, backend, tile, bm, bn)
    return y.astype(x.dtype)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8, 9))
def _moe_ffn(x, routing, w1, w2, activation, implementation, backend, tile, bm, bn):
    if implementation == "einsum":
        return _einsum_ffn(x, routing, w1, w2, activation)
    if implementation == "ragged":
        return _ragged_ffn(x, routing, w1, w2, activation, backend, tile)
    return _block_sparse_ffn(x, routing, w1, w2, activation, backend, bm, bn)


# --------------------------------------------------------------------------------------------
# einsum (dispatch / combine tensors)
# --------------------------------------------------------------------------------------------


def dispatch_tensors(routing: Routing) -> tuple[Array, Array]:
    """One-hot ``dispatch [T, E, C]`` (bool) and ``combine [T, E, C]`` (float) tensors."""
    t, k = routing.num_tokens, routing.slots
    shape = (t, routing.num_experts, routing.capacity)
    tok = jnp.broadcast_to(jnp.arange(t)[:, None], (t, k))
    pos = jnp.where(routing.kept, routing.position, routing.capacity)  # dropped: out of range
    idx = (tok, routing.expert_index, pos)
    dispatch = jnp.zeros(shape, bool).at[idx].max(routing.kept, mode="drop")
    combine = jnp.zeros(shape, routing.combine_weights.dtype).at[idx].add(
        routing.combine_weights, mode="drop")
    return dispatch, combine


def _einsum_ffn(x, routing, w1, w2, activation):
    dispatch, combine = dispatch_tensors(routing)
    dt = jnp.result_type(x, w1, w2)
    xin = jnp.einsum("tec,td->ecd", dispatch.astype(dt), x, precision=_HI)
    out = expert_buffers_ffn(xin, w1, w2, activation)
    return jnp.einsum("tec,ecd->td", combine.astype(dt), out, precision=_HI)


def expert_buffers_ffn(xin: Float[Array, "E C d"], w1: Float[Array, "E d F"],
                       w2: Float[Array, "E F d"], activation: Callable[[Array], Array]
                       ) -> Float[Array, "E C d"]:
    """Each expert's FFN on its ``[C, d]`` buffer: ``act(xin[e] @ w1[e]) @ w2[e]``."""
    h = activation(jnp.einsum("ecd,edf->ecf", xin, w1, precision=_HI))
    return jnp.einsum("ecf,efd->ecd", h, w2, precision=_HI)


# --------------------------------------------------------------------------------------------
# sorted layouts shared by ragged and block_sparse
# --------------------------------------------------------------------------------------------


def _layout(routing: Routing, multiple: int) -> tuple[Array, Array, Array, int]:
    """Rows of the expert-sorted buffer, each expert's group padded to ``multiple`` rows.

    Returns ``dest [T*k]`` (row of each slot; ``rows`` for dropped slots), ``row_token
    [rows]`` (token of each row; ``T`` for padding), ``group_rows [E]`` (padded group sizes) and
    the static row count ``rows = max_kept (+ E*(multiple-1)) rounded up to multiple``.
    """
    e, t = routing.num_experts, routing.num_tokens
    expert = routing.expert_index.reshape(-1)
    kept = routing.kept.reshape(-1)
    load = routing.expert_load()
    group_rows = -(-load // multiple) * multiple
    offsets = jnp.cumsum(group_rows) - group_rows
    rows = routing.max_kept + (e * (multiple - 1) if multiple > 1 else 0)
    rows = -(-rows // multiple) * multiple
    dest = jnp.where(kept, offsets[expert] + routing.position.reshape(-1), rows)
    token = jnp.arange(t * routing.slots, dtype=jnp.int32) // routing.slots
    row_token = jnp.full((rows,), t, jnp.int32).at[dest].set(token, mode="drop")
    return dest, row_token, group_rows, rows


def _gather_rows(x: Array, row_token: Array) -> Array:
    return x.at[row_token].get(mode="fill", fill_value=0)


def _combine(y_rows: Array, dest: Array, routing: Routing) -> Array:
    t, k = routing.num_tokens, routing.slots
    y_slots = y_rows.at[dest].get(mode="fill", fill_value=0).reshape(t, k, -1)
    w = routing.combine_weights.astype(y_rows.dtype)
    return jnp.einsum("tk,tkd->td", w, y_slots, precision=_HI)


def _ragged_ffn(x, routing, w1, w2, activation, backend, tile):
    dest, row_token, group_rows, _ = _layout(routing, 1)
    xs = _gather_rows(x, row_token)
    h = activation(gmm(xs, w1, group_rows, backend=backend, tile=tile))
    ys = gmm(h, w2, group_rows, backend=backend, tile=tile)
    return _combine(ys, dest, routing)


# --------------------------------------------------------------------------------------------
# block_sparse (MegaBlocks on sparsejax.formats.BlockSparse)
# --------------------------------------------------------------------------------------------


def block_diagonal_topology(routing: Routing, d_ff: int, block_shape: tuple[int, int],
                            dtype: Any = jnp.float32) -> tuple[BlockSparse, Array, Array]:
    """The MegaBlocks topology: a ``BlockSparse [rows, E * d_ff]`` (zero data) whose row block
    ``i`` keeps the ``d_ff / bn`` column blocks of the expert that owns it, plus ``dest`` and
    ``row_token`` of the padded expert-sorted layout (see `_layout`)."""
    bm, bn = block_shape
    e = routing.num_experts
    dest, row_token, group_rows, rows = _layout(routing, bm)
    nrb, s = rows // bm, d_ff // bn
    ends = jnp.cumsum(group_rows)
    start = jnp.arange(nrb, dtype=jnp.int32) * bm
    owner = jnp.clip(jnp.searchsorted(ends, start, side="right"), 0, e - 1).astype(jnp.int32)
    used = start < ends[-1]
    indices = jnp.where(used[:, None], owner[:, None] * s + jnp.arange(s, dtype=jnp.int32), 0)
    counts = jnp.where(used, s, 0).astype(jnp.int32)
    data = jnp.zeros((nrb, s, bm, bn), dtype)
    topo = BlockSparse(data, indices.astype(jnp.int32), counts, (rows, e * d_ff), (bm, bn))
    return topo, dest, row_token


def _block_sparse_ffn(x, routing, w1, w2, activation, backend, bm, bn):
    e, d, f = w1.shape
    dt = jnp.result_type(x, w1, w2)
    topo, dest, row_token = block_diagonal_topology(routing, f, (bm, bn), dt)
    xs = _gather_rows(x, row_token).astype(dt)
    w1_cat = jnp.transpose(w1, (1, 0, 2)).reshape(d, e * f).astype(dt)
    w2_cat = w2.reshape(e * f, d).astype(dt)
    h = sddmm(xs, w1_cat, topo, backend=backend)
    valid = h.valid_slots()[:, :, None, None]
    h = h.replace(data=jnp.where(valid, activation(h.data), jnp.zeros((), h.data.dtype)))
    ys = bsr_matmul(h, w2_cat, backend=backend)
    return _combine(ys, dest, routing)

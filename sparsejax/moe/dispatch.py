"""Dispatch + expert feed-forward + combine, with interchangeable backends.

For a `Routing` of ``T`` tokens and expert weights ``w1 [E, d, F]``, ``w2 [E, F, d]`` (and, for
gated experts, ``w3 [E, d, F]``), `moe_ffn` computes ::

    y[t] = sum_j combine_weights[t, j] * expert(e, x[t]),   e = expert_index[t, j]
    expert(e, x) = act(x @ w1[e]) @ w2[e]                     (two-matrix MLP)
    expert(e, x) = (act(x @ w1[e]) * (x @ w3[e])) @ w2[e]     (gated: SwiGLU with silu, GEGLU)

over the kept slots ``j``. The gated names are Mixtral's: ``w1`` is the gate projection
(``w_gate``, ``gate_proj``), ``w3`` the up projection (``w_up``, ``up_proj``), ``w2`` the down
projection (``w_down``, ``down_proj``).

``backend=`` names one registered implementation (op ``"moe_ffn"`` of
`sparsejax._backend.IMPLEMENTATIONS`); all compute exactly the sum above and differ in layout:

* ``"einsum"``: one-hot dispatch and combine tensors ``[T, E, capacity]`` and batched einsums
  over the ``[E, capacity, d]`` expert buffers (the Switch/GShard/flaxformer reference; memory
  and FLOPs scale with ``E * capacity``, i.e. ``T * E`` when dropless).
* ``"ragged_dot"`` / ``"ragged_xla"``: the kept slots sorted by expert into
  ``min(T * k, E * capacity)`` rows (no padding), grouped matmuls `sparsejax.moe.gmm` with
  ``jax.lax.ragged_dot`` (GPU/TPU) or the tiled XLA loop (CPU), then un-sort and weight
  (MaxText's dropless path). ``w1`` and ``w3`` run as one grouped matmul.
* ``"block_sparse_<ops backend>"`` (``xla``, ``reference``, ``pallas_gpu``, ``pallas_tpu``):
  the MegaBlocks formulation on `sparsejax.formats.BlockSparse`: each expert's rows are padded
  to a multiple of the block rows ``bm``, the hidden layer ``x_sorted @ [w1_0 | ... |
  w1_{E-1}]`` (and the ``w3`` one) is computed only on the block-diagonal topology with
  `sparsejax.ops.sddmm`, and the output is `sparsejax.ops.bsr_matmul` of the block-sparse hidden
  layer with the stacked ``w2`` (Pallas kernels for the ``pallas_*`` names).
* ``"auto"``: ``ragged_dot`` on GPU/TPU, ``ragged_xla`` elsewhere.

Gradients flow to ``x``, the expert weights and the combine weights (hence to the router) in
every backend. Products accumulate in float32, or float64 for float64 inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._backend import backends, implementation, resolve
from sparsejax._checks import check_callable, check_float_array, check_int, must_be
from sparsejax.formats import BlockSparse
from sparsejax.moe.gmm import gmm
from sparsejax.moe.routing import Routing
from sparsejax.ops import bsr_matmul, sddmm

__all__ = ["block_diagonal_topology", "dispatch_tensors", "expert_buffers_ffn", "moe_ffn"]

_HI = jax.lax.Precision.HIGHEST


def _check_experts(x: Any, routing: Any, w1: Any, w2: Any, w3: Any
                   ) -> tuple[Array, Array, Array, Array | None]:
    if not isinstance(routing, Routing):
        raise TypeError(f"`routing` must be a sparsejax.moe.Routing; got {type(routing).__name__}.")
    x = check_float_array(x, "x")
    w1 = check_float_array(w1, "w1")
    w2 = check_float_array(w2, "w2")
    if x.ndim != 2:
        raise ValueError(must_be("x", "2-D [tokens, d_model]", x))
    if w1.ndim != 3:
        raise ValueError(must_be("w1", "3-D [E, d_model, d_ff]", w1))
    if w2.ndim != 3:
        raise ValueError(must_be("w2", "3-D [E, d_ff, d_model]", w2))
    e, d, f = w1.shape
    # Blame the one array that disagrees with the other two (x and w2 both carry d_model).
    if d != x.shape[1] and w2.shape != (e, f, d):
        raise ValueError(must_be("w1", f"of shape [E, d_model, d_ff] with d_model = "
                                 f"{x.shape[1]} (x.shape[1]) and [E, d_ff] = "
                                 f"{[w2.shape[0], w2.shape[1]]} (from w2)", w1))
    if w2.shape != (e, f, d):
        raise ValueError(must_be("w2", f"of shape [E, d_ff, d_model] = {(e, f, d)} (from w1 "
                                 f"{w1.shape})", w2))
    if x.shape[1] != d:
        raise ValueError(must_be("x", f"[tokens, {d}] (d_model = w1.shape[1] = w2.shape[2])", x))
    if w3 is not None:
        w3 = check_float_array(w3, "w3")
        if w3.shape != w1.shape:
            raise ValueError(must_be("w3", f"of w1's shape [E, d_model, d_ff] = {w1.shape}", w3))
    if routing.num_experts != e:
        raise ValueError(f"`routing.num_experts` (the router logits' expert axis) must equal the "
                         f"number of experts w1.shape[0] = {e}; got {routing.num_experts}.")
    if routing.num_tokens != x.shape[0]:
        raise ValueError(f"`routing` must route the {x.shape[0]} tokens of `x`; got "
                         f"{routing.num_tokens}.")
    return x, w1, w2, w3


def moe_ffn(
    x: Float[Array, "T d"],
    routing: Routing,
    w1: Float[Array, "E d F"],
    w2: Float[Array, "E F d"],
    w3: Float[Array, "E d F"] | None = None,
    *,
    activation: Callable[[Array], Array] = jax.nn.gelu,
    backend: str = "auto",
    interpret: bool | None = None,
    block_shape: tuple[int, int] | None = None,
    tile: int = 128,
) -> Float[Array, "T d"]:
    """Mixture-of-experts feed-forward ``sum_j g_tj * expert(e_tj, x_t)`` (module docstring).

    Args:
        x: ``[T, d]`` tokens.
        routing: a `Routing` over ``E`` experts for these ``T`` tokens.
        w1: ``[E, d, F]`` first layer (the gate projection of gated experts).
        w2: ``[E, F, d]`` second (down) layer.
        w3: ``[E, d, F]`` up projection of gated experts, or ``None`` for two-matrix experts.
        activation: elementwise hidden activation (``jax.nn.silu`` with ``w3``: SwiGLU).
        backend: one of ``sparsejax._backend.backends("moe_ffn")`` (module docstring).
        interpret: Pallas interpret mode of the ``block_sparse_pallas_*`` backends
            (``None``: exactly on CPU).
        block_shape: ``(bm, bn)`` of the ``block_sparse_*`` backends, ``bn`` dividing ``F``;
            default ``(min(tile, 128), F)``.
        tile: row tile of the ``ragged_xla`` loop.

    Returns:
        ``[T, d]`` in ``x.dtype`` (tokens with no kept slot give zeros).

    Raises:
        ValueError: mismatched shapes (naming the argument), a routing over another number of
            experts or tokens, an unknown backend, a block shape that does not divide ``F``.
        TypeError: non-float arrays, a ``routing`` that is not a `Routing`.
    """
    x, w1, w2, w3 = _check_experts(x, routing, w1, w2, w3)
    tile = check_int(tile, "tile", minimum=1)
    choice = resolve("moe_ffn", backend)
    check_callable(activation, "activation", "an elementwise callable")
    bm = bn = 0
    if choice.name.startswith("block_sparse"):
        f = w1.shape[2]
        bm, bn = (min(tile, 128), f) if block_shape is None else block_shape
        bm = check_int(bm, "block_shape[0]", minimum=1)
        bn = check_int(bn, "block_shape[1]", minimum=1)
        if f % bn:
            raise ValueError(f"`block_shape[1]` must divide d_ff = {f}; got {bn}.")
    fn = implementation("moe_ffn", choice)
    y = fn(x, routing, w1, w2, w3, activation=activation, interpret=interpret, tile=tile,
           block_shape=(bm, bn))
    return y.astype(x.dtype)


MOE_FFN_BACKENDS = backends("moe_ffn")
"""The accepted ``backend=`` values of `moe_ffn` (``"auto"`` and the registered ones)."""


def _hidden(h1: Array, h3: Array | None, activation: Callable[[Array], Array]) -> Array:
    """``act(h1)``, or ``act(h1) * h3`` for gated experts."""
    a = activation(h1)
    return a if h3 is None else a * h3


# --------------------------------------------------------------------------------------------
# einsum (dispatch / combine tensors)
# --------------------------------------------------------------------------------------------


def dispatch_tensors(routing: Routing) -> tuple[Array, Array]:
    """One-hot ``dispatch [T, E, C]`` (bool) and ``combine [T, E, C]`` (float) tensors.

    One jitted program (an eager call compiles once per shape, not once per op).
    """
    return _dispatch_tensors(routing)


@jax.jit
def _dispatch_tensors(routing: Routing) -> tuple[Array, Array]:
    t, k = routing.num_tokens, routing.slots
    shape = (t, routing.num_experts, routing.capacity)
    tok = jnp.broadcast_to(jnp.arange(t)[:, None], (t, k))
    pos = jnp.where(routing.kept, routing.position, routing.capacity)  # dropped: out of range
    idx = (tok, routing.expert_index, pos)
    dispatch = jnp.zeros(shape, bool).at[idx].max(routing.kept, mode="drop")
    combine = jnp.zeros(shape, routing.combine_weights.dtype).at[idx].add(
        routing.combine_weights, mode="drop")
    return dispatch, combine


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "tile", "block_shape"))
def einsum_ffn(x, routing, w1, w2, w3=None, *, activation, interpret=None, tile=128,
               block_shape=(0, 0)):
    """The ``"einsum"`` backend of `moe_ffn` (validated inputs)."""
    del interpret, tile, block_shape
    dispatch, combine = dispatch_tensors(routing)
    dt = jnp.result_type(x, w1, w2)
    xin = jnp.einsum("tec,td->ecd", dispatch.astype(dt), x, precision=_HI)
    out = expert_buffers_ffn(xin, w1, w2, activation, w3)
    return jnp.einsum("tec,ecd->td", combine.astype(dt), out, precision=_HI)


def expert_buffers_ffn(xin: Float[Array, "E C d"], w1: Float[Array, "E d F"],
                       w2: Float[Array, "E F d"], activation: Callable[[Array], Array],
                       w3: Float[Array, "E d F"] | None = None) -> Float[Array, "E C d"]:
    """Each expert's FFN on its ``[C, d]`` buffer: ``act(xin[e] @ w1[e]) @ w2[e]``, gated by
    ``xin[e] @ w3[e]`` when ``w3`` is given."""
    h1 = jnp.einsum("ecd,edf->ecf", xin, w1, precision=_HI)
    h3 = None if w3 is None else jnp.einsum("ecd,edf->ecf", xin, w3, precision=_HI)
    return jnp.einsum("ecf,efd->ecd", _hidden(h1, h3, activation), w2, precision=_HI)


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


def sorted_rows_ffn(xs, group_rows, w1, w2, w3, activation, gmm_backend, tile):
    """Each expert's FFN on its rows of the expert-sorted ``xs [rows, d]`` (``group_rows [E]``
    rows per expert, in order; rows past their sum give 0): two grouped matmuls `gmm`."""
    f = w1.shape[2]
    w13 = w1 if w3 is None else jnp.concatenate([w1, w3], axis=2)  # one grouped matmul
    h = gmm(xs, w13, group_rows, backend=gmm_backend, tile=tile)
    h = _hidden(h[:, :f], None if w3 is None else h[:, f:], activation)
    return gmm(h, w2, group_rows, backend=gmm_backend, tile=tile)


def _ragged_ffn(gmm_backend, x, routing, w1, w2, w3, activation, tile):
    dest, row_token, group_rows, _ = _layout(routing, 1)
    xs = _gather_rows(x, row_token)
    ys = sorted_rows_ffn(xs, group_rows, w1, w2, w3, activation, gmm_backend, tile)
    return _combine(ys, dest, routing)


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "tile", "block_shape"))
def ragged_dot_ffn(x, routing, w1, w2, w3=None, *, activation, interpret=None, tile=128,
                   block_shape=(0, 0)):
    """The ``"ragged_dot"`` backend of `moe_ffn` (validated inputs)."""
    return _ragged_ffn("ragged_dot", x, routing, w1, w2, w3, activation, tile)


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "tile", "block_shape"))
def ragged_xla_ffn(x, routing, w1, w2, w3=None, *, activation, interpret=None, tile=128,
                   block_shape=(0, 0)):
    """The ``"ragged_xla"`` backend of `moe_ffn` (validated inputs)."""
    return _ragged_ffn("xla", x, routing, w1, w2, w3, activation, tile)


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


def _block_sparse_ffn(ops_backend, x, routing, w1, w2, w3, activation, interpret, bm, bn):
    e, d, f = w1.shape
    dt = jnp.result_type(x, w1, w2)
    topo, dest, row_token = block_diagonal_topology(routing, f, (bm, bn), dt)
    xs = _gather_rows(x, row_token).astype(dt)

    def hidden(w):
        w_cat = jnp.transpose(w, (1, 0, 2)).reshape(d, e * f).astype(dt)
        return sddmm(xs, w_cat, topo, backend=ops_backend, interpret=interpret)

    h1 = hidden(w1)
    h3 = None if w3 is None else hidden(w3).data
    valid = h1.valid_slots()[:, :, None, None]
    act = _hidden(h1.data, h3, activation)
    h = h1.replace(data=jnp.where(valid, act, jnp.zeros((), act.dtype)))
    ys = bsr_matmul(h, w2.reshape(e * f, d).astype(dt), backend=ops_backend, interpret=interpret)
    return _combine(ys, dest, routing)


def _block_sparse_backend(ops_backend: str) -> Callable:
    @functools.partial(jax.jit,
                       static_argnames=("activation", "interpret", "tile", "block_shape"))
    def run(x, routing, w1, w2, w3=None, *, activation, interpret=None, tile=128,
            block_shape=(128, 128)):
        del tile
        return _block_sparse_ffn(ops_backend, x, routing, w1, w2, w3, activation, interpret,
                                 *block_shape)

    run.__name__ = run.__qualname__ = f"block_sparse_{ops_backend}_ffn"
    run.__doc__ = f"The ``\"block_sparse_{ops_backend}\"`` backend of `moe_ffn`."
    return run


block_sparse_xla_ffn = _block_sparse_backend("xla")
block_sparse_reference_ffn = _block_sparse_backend("reference")
block_sparse_pallas_gpu_ffn = _block_sparse_backend("pallas_gpu")
block_sparse_pallas_tpu_ffn = _block_sparse_backend("pallas_tpu")

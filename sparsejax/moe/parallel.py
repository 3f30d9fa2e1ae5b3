"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged with all-to-all.

With ``n`` devices on ``axis_name``, tokens (and their router logits) are split into ``n``
groups, one per device, and the experts into ``n`` slices of ``E / n``. Under
``jax.shard_map`` each device routes its own tokens, sends each token to the devices that hold
its experts, runs its ``E / n`` experts on what it received, sends the outputs back and combines
locally. Two exchanges (``exchange=``):

* ``"padded"`` (GShard): each device packs its tokens into the ``[E, C, d]`` capacity buffers of
  the einsum dispatch (`sparsejax.moe.dispatch_tensors`), a dense ``lax.all_to_all`` sends
  expert slice ``j`` to device ``j``, which computes ``[E / n, n * C, d]`` rows. Memory and
  FLOPs follow the capacity ``C``, whatever the routing; dropless routing has ``C = T / n``,
  i.e. ``E * T / n`` buffer rows per device.
* ``"ragged"`` (dropless expert parallelism, MaxText's ``ragged_all_to_all`` path): each device
  sorts its kept slots by expert (no padding), sends device ``j`` exactly the rows of ``j``'s
  experts with a variable-size all-to-all (`sparsejax.moe.exchange.ragged_all_to_all`:
  ``jax.lax.ragged_all_to_all`` on GPU/TPU, a bit-identical dense ``all_to_all`` emulation on
  CPU, where XLA lacks the ragged op), regroups the received rows by local expert and runs the
  grouped matmuls `sparsejax.moe.gmm` (their work follows the rows actually received), then the
  reverse exchange. The static receive buffer holds the worst case, ``n * min(T k / n,
  (E / n) C)`` rows (``T * min(k, E / n)`` when dropless) instead of the padded ``E * T / n``.

The result equals the single-device layer that routes each group of ``T / n`` tokens
separately (identical for dropless routing, where grouping does not matter).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float

from sparsejax._backend import backends
from sparsejax._checks import check_choice, check_float_array, check_int
from sparsejax.moe.dispatch import (
    _combine,
    _gather_rows,
    _layout,
    dispatch_tensors,
    expert_buffers_ffn,
    sorted_rows_ffn,
)
from sparsejax.moe.exchange import ragged_all_to_all
from sparsejax.moe.routing import Routing

__all__ = ["EXCHANGES", "expert_parallel_moe_ffn"]

EXCHANGES = ("padded", "ragged")
"""Accepted ``exchange=`` values of `expert_parallel_moe_ffn` (module docstring)."""

_HI = jax.lax.Precision.HIGHEST


def expert_parallel_moe_ffn(
    x: Float[Array, "T d"],
    logits: Float[Array, "T E"],
    w1: Float[Array, "E d F"],
    w2: Float[Array, "E F d"],
    w3: Float[Array, "E d F"] | None = None,
    *,
    mesh: Mesh,
    axis_name: str,
    router: Callable[[Array], Routing],
    activation: Callable[[Array], Array] = jax.nn.gelu,
    exchange: str = "padded",
    collective: str = "auto",
    gmm_backend: str = "auto",
    tile: int = 128,
) -> Float[Array, "T d"]:
    """The MoE feed-forward with experts sharded over ``mesh`` axis ``axis_name``.

    Args:
        x: ``[T, d]`` tokens (sharded or not; split into ``n`` groups along ``T``).
        logits: ``[T, E]`` router logits.
        w1: ``[E, d, F]`` experts' first layer (split into ``n`` slices along ``E``).
        w2: ``[E, F, d]`` experts' second layer.
        w3: ``[E, d, F]`` up projection of gated experts (see `sparsejax.moe.moe_ffn`), or
            ``None``.
        mesh: a ``jax.sharding.Mesh``.
        axis_name: the mesh axis of size ``n`` the experts and token groups are split over.
        router: ``logits [T / n, E] -> Routing`` applied per group, e.g.
            ``functools.partial(top_k_routing, k=2, capacity_factor=1.25)``.
        activation: elementwise hidden activation.
        exchange: ``"padded"`` (capacity buffers, dense ``all_to_all``) or ``"ragged"``
            (expert-sorted rows, variable-size all-to-all); see the module docstring.
        collective: backend of the ragged exchange: ``"auto"``, ``"ragged_all_to_all"``
            (GPU/TPU only) or ``"all_to_all"`` (`sparsejax.moe.exchange`).
        gmm_backend: `sparsejax.moe.gmm` backend of the ragged exchange's experts.
        tile: row tile of the ``"xla"`` grouped matmul.

    Returns:
        ``[T, d]``, sharded along ``T`` over ``axis_name``.

    Raises:
        ValueError: ``axis_name`` not in the mesh, ``E`` or ``T`` not divisible by its size,
            mismatched shapes, an unknown ``exchange``, ``collective`` or ``gmm_backend``.
    """
    x = check_float_array(x, "x")
    logits = check_float_array(logits, "logits")
    w1 = check_float_array(w1, "w1")
    w2 = check_float_array(w2, "w2")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis_name not in mesh.shape:
        raise ValueError(f"`axis_name` must be one of the mesh axes {tuple(mesh.shape)}; got "
                         f"{axis_name!r}.")
    n = mesh.shape[axis_name]
    if w1.ndim != 3 or w2.shape != (w1.shape[0], w1.shape[2], w1.shape[1]):
        raise ValueError(f"`w1` must be [E, d, F] and `w2` [E, F, d]; got {w1.shape} and "
                         f"{w2.shape}.")
    e, d, _ = w1.shape
    if w3 is not None:
        w3 = check_float_array(w3, "w3")
        if w3.shape != w1.shape:
            raise ValueError(f"`w3` must have w1's shape {w1.shape}; got {w3.shape}.")
    if x.ndim != 2 or x.shape[1] != d or logits.shape != (x.shape[0], e):
        raise ValueError(f"`x` must be [T, {d}] and `logits` [T, {e}] (the experts' axis); got "
                         f"x {x.shape} and logits {logits.shape}.")
    if e % n:
        raise ValueError(f"the number of experts {e} must be divisible by the size {n} of mesh "
                         f"axis {axis_name!r}.")
    if x.shape[0] % n:
        raise ValueError(f"the number of tokens {x.shape[0]} must be divisible by the size {n} "
                         f"of mesh axis {axis_name!r}.")
    check_choice(exchange, "exchange", EXCHANGES)
    check_choice(collective, "collective", backends("ragged_all_to_all"))
    check_choice(gmm_backend, "gmm_backend", backends("gmm"))
    tile = check_int(tile, "tile", minimum=1)
    spec = PartitionSpec(axis_name)

    def route(logits):
        routing = router(logits)
        if not isinstance(routing, Routing) or routing.num_experts != e:
            raise ValueError(f"`router` must return a Routing over {e} experts.")
        return routing

    def ragged(x, logits, w1, w2, w3):
        routing = route(logits)
        return _ragged_local(x, routing, w1, w2, w3, axis_name, n, activation, collective,
                             gmm_backend, tile).astype(x.dtype)

    def local(x, logits, w1, w2, w3):
        routing = route(logits)
        dispatch, combine = dispatch_tensors(routing)  # [T/n, E, C]
        dt = jnp.result_type(x, w1, w2)
        xin = jnp.einsum("tec,td->ecd", dispatch.astype(dt), x, precision=_HI)
        xin = jax.lax.all_to_all(xin, axis_name, 0, 1, tiled=True)  # [E/n, n*C, d]
        out = expert_buffers_ffn(xin, w1, w2, activation, w3)
        out = jax.lax.all_to_all(out, axis_name, 1, 0, tiled=True)  # [E, C, d]
        y = jnp.einsum("tec,ecd->td", combine.astype(dt), out, precision=_HI)
        return y.astype(x.dtype)

    w3_spec = None if w3 is None else spec
    # check_vma off for the ragged body: the grouped matmul's fori_loop carries start
    # replicated (zeros) and become device-varying
    fn = jax.shard_map(ragged if exchange == "ragged" else local, mesh=mesh,
                       in_specs=(spec, spec, spec, spec, w3_spec), out_specs=spec,
                       check_vma=exchange != "ragged")
    return fn(x, logits, w1, w2, w3)


def _exclusive_cumsum(a: Array, axis: int = 0) -> Array:
    return jnp.cumsum(a, axis=axis) - a


def _ragged_local(x, routing, w1, w2, w3, axis_name, n, activation, collective, gmm_backend,
                  tile):
    """One device's share of the ragged exchange (inside ``shard_map``; ``w*`` local)."""
    el, d = w1.shape[0], x.shape[1]
    dest, row_token, group_rows, rows = _layout(routing, 1)
    xs = _gather_rows(x, row_token)  # [rows, d] kept slots sorted by expert
    loads = group_rows.reshape(n, el)  # rows for device j's local experts
    send_sizes = jnp.sum(loads, axis=1)
    input_offsets = _exclusive_cumsum(send_sizes)
    recv_loads = jax.lax.all_to_all(loads, axis_name, 0, 0, tiled=True)  # [source, el]
    recv_sizes = jnp.sum(recv_loads, axis=1)
    recv_start = _exclusive_cumsum(recv_sizes)
    output_offsets = jax.lax.all_to_all(recv_start, axis_name, 0, 0, tiled=True)
    bound = min(rows, el * routing.capacity)  # static worst case of one device's slice
    size = n * bound
    recv = ragged_all_to_all(xs, jnp.zeros((size, d), xs.dtype), input_offsets, send_sizes,
                             output_offsets, recv_sizes, axis_name, backend=collective,
                             slice_rows=bound)
    # received rows are source-major, expert-minor: their row in the expert-major order
    r = jnp.arange(size, dtype=jnp.int32)
    src = jnp.searchsorted(jnp.cumsum(recv_sizes), r, side="right")
    valid = src < n
    src = jnp.minimum(src, n - 1)
    q = r - recv_start[src]  # row within the source's slice
    ends = jnp.cumsum(recv_loads, axis=1)  # [n, el]
    ex = jnp.minimum(jnp.sum(q[:, None] >= ends[src], axis=1), el - 1)
    within = q - (ends - recv_loads)[src, ex]
    group = jnp.sum(recv_loads, axis=0)  # [el] rows per local expert
    pos = _exclusive_cumsum(group)[ex] + _exclusive_cumsum(recv_loads)[src, ex] + within
    pos = jnp.where(valid, pos, size)
    xg = jnp.zeros_like(recv).at[pos].set(recv, mode="drop")
    yg = sorted_rows_ffn(xg, group, w1, w2, w3, activation, gmm_backend, tile)
    back = yg.at[pos].get(mode="fill", fill_value=0)  # received order
    return_offsets = jax.lax.all_to_all(input_offsets, axis_name, 0, 0, tiled=True)
    ys = ragged_all_to_all(back, jnp.zeros((rows, yg.shape[1]), yg.dtype), recv_start,
                           recv_sizes, return_offsets, send_sizes, axis_name,
                           backend=collective, slice_rows=bound)
    return _combine(ys, dest, routing)

"""Variable-size all-to-all: ``jax.lax.ragged_all_to_all`` and an ``all_to_all`` equivalent.

`ragged_all_to_all` has the semantics of ``jax.lax.ragged_all_to_all`` with one slice per
device of the mapped axis (``input_offsets``, ``send_sizes``, ``output_offsets``,
``recv_sizes`` all of length ``n``, the axis size): device ``i`` sends rows
``operand[input_offsets[j] : input_offsets[j] + send_sizes[j]]`` to device ``j``, which writes
them into its ``output`` at rows ``output_offsets[j] + r`` (the offset is the *sender's*) and
leaves every other row of ``output`` as it was. Backends (op ``"ragged_all_to_all"`` of
`sparsejax._backend.IMPLEMENTATIONS`):

* ``"ragged_all_to_all"``: ``jax.lax.ragged_all_to_all``, which only the GPU and TPU compilers
  implement (XLA:CPU in jax 0.10 rejects the HLO op ``ragged-all-to-all``); it moves only the
  routed rows.
* ``"all_to_all"``: the same result built from a dense ``jax.lax.all_to_all`` of an
  ``[n, B, ...]`` send buffer (each slice zero-padded to ``B = slice_rows`` rows, default the
  ``N`` rows of ``operand``) and a scatter into ``output``. Pure data movement, so bit-identical
  to the ragged collective (when no slice exceeds ``B``), and it runs everywhere (the CPU
  choice), at the cost of ``n * B`` rows sent and received.
* ``"auto"``: ``ragged_all_to_all`` on GPU/TPU, ``all_to_all`` elsewhere.

Both are differentiable in ``operand`` and ``output`` (the VJP is the reverse exchange).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, Shaped

from sparsejax._backend import implementation
from sparsejax._checks import check_int

__all__ = ["ragged_all_to_all"]


def ragged_all_to_all(
    operand: Shaped[Array, "N ..."],
    output: Shaped[Array, "M ..."],
    input_offsets: Int[Array, " n"],
    send_sizes: Int[Array, " n"],
    output_offsets: Int[Array, " n"],
    recv_sizes: Int[Array, " n"],
    axis_name: str,
    *,
    backend: str = "auto",
    slice_rows: int | None = None,
) -> Shaped[Array, "M ..."]:
    """``jax.lax.ragged_all_to_all`` with one slice per device, on any platform.

    Call inside ``jax.shard_map`` (or another mapped context) over ``axis_name``.

    Args:
        operand: ``[N, ...]`` rows to send (slice ``j`` goes to device ``j``).
        output: ``[M, ...]`` the buffer received rows are written into.
        input_offsets: ``int32 [n]`` first row of slice ``j`` in ``operand``.
        send_sizes: ``int32 [n]`` rows of slice ``j``.
        output_offsets: ``int32 [n]`` row of device ``j``'s ``output`` where slice ``j`` starts.
        recv_sizes: ``int32 [n]`` rows received from device ``j`` (must equal what device
            ``j`` sends here: ``all_to_all(send_sizes)``).
        axis_name: the mapped axis of size ``n``.
        backend: ``"auto"``, ``"ragged_all_to_all"`` or ``"all_to_all"`` (module docstring).
        slice_rows: static bound on ``send_sizes`` (default ``N``): the ``all_to_all``
            backend pads each slice to this many rows (rows past it are not sent); the ragged
            collective ignores it.

    Returns:
        ``output`` with the received rows written in.

    Raises:
        ValueError: offsets and sizes not of shape ``[n]``, ``operand`` and ``output`` rows of
            different trailing shapes, an unknown backend.
    """
    n = jax.lax.axis_size(axis_name)
    for name, a in (("input_offsets", input_offsets), ("send_sizes", send_sizes),
                    ("output_offsets", output_offsets), ("recv_sizes", recv_sizes)):
        if jnp.shape(a) != (n,) or not jnp.issubdtype(jnp.result_type(a), jnp.integer):
            raise ValueError(f"`{name}` must be an int array of shape ({n},) (one entry per "
                             f"device of axis {axis_name!r}); got shape {jnp.shape(a)}.")
    if operand.shape[1:] != output.shape[1:] or operand.dtype != output.dtype:
        raise ValueError(f"`operand` and `output` must have the same row shape and dtype; got "
                         f"{operand.dtype}{list(operand.shape)} and "
                         f"{output.dtype}{list(output.shape)}.")
    rows = operand.shape[0]
    slice_rows = rows if slice_rows is None else check_int(slice_rows, "slice_rows", minimum=0,
                                                           maximum=rows)
    fn = implementation("ragged_all_to_all", backend)
    ints = [jnp.asarray(a, jnp.int32) for a in
            (input_offsets, send_sizes, output_offsets, recv_sizes)]
    return fn(operand, output, *ints, axis_name, slice_rows)


def exchange_ragged(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes,
                    axis_name, slice_rows):
    """The ``"ragged_all_to_all"`` backend: ``jax.lax.ragged_all_to_all`` (GPU/TPU)."""
    del slice_rows
    return jax.lax.ragged_all_to_all(operand, output, input_offsets, send_sizes,
                                     output_offsets, recv_sizes, axis_name=axis_name)


def exchange_dense(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes,
                   axis_name, slice_rows):
    """The ``"all_to_all"`` backend: a padded ``jax.lax.all_to_all`` plus a scatter."""
    rows = operand.shape[0]
    r = jnp.arange(slice_rows, dtype=jnp.int32)
    src = jnp.where(r < send_sizes[:, None], input_offsets[:, None] + r, rows)  # [n, B]
    send = operand.at[src].get(mode="fill", fill_value=0)  # [n, B, ...]
    recv = jax.lax.all_to_all(send, axis_name, 0, 0, tiled=True)  # [n, B, ...] by source
    where = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)  # by source
    dst = jnp.where(r < recv_sizes[:, None], where[:, None] + r, output.shape[0])
    return output.at[dst].set(recv, mode="drop")

"""Sparse-input matmul: ``y = x @ W`` reading only the rows of ``W`` whose input is nonzero.

The kernel behind activation sparsity (`sparsejax.activation`): at batch 1 a linear layer is
bound by reading its weight, and an input entry that is zero means a weight row that need not be
read. `sparse_input_matmul` takes a dense ``x`` that is mostly zero (e.g. after
`sparsejax.activation.sparsify`) and a dense weight ``W [K, N]`` (the Flax ``[in, out]``
layout, rows = inputs), and reads only the kept rows:

* the kept inputs are compacted first: ``keep = any(x != 0, axis=batch)`` (the union over the
  batch rows), their ascending indices ``idx`` (``_blocks.pack_indices``) and the count ``nnz``;
  the gathered inputs ``x[:, idx]`` are zero past ``nnz``;
* ``xla`` (the CPU default), two loops whose cost scales with ``nnz`` (see
  ``benchmarks/activation.py``), accumulated in float32:

  - batches of at most ``ROW_LOOP_MAX_BATCH`` rows (decoding): a ``lax.fori_loop`` over
    ``ceil(nnz / ROW_UNROLL)`` trips, each reading ``ROW_UNROLL`` kept rows of ``W`` in place
    (``dynamic_slice``, no copy) into a rank-1 update ``acc += x[:, k, None] * W[k]`` that XLA
    fuses into one pass over the rows; the ``[B, N]`` accumulator stays in cache, so the weight
    is streamed once, as by a dense GEMV;
  - larger batches: ``ceil(nnz / XLA_CHUNK)`` chunks, each a ``[chunk, N]`` row gather and one
    small product (there the product's arithmetic, not the copy, dominates); above
    ``DENSE_FALLBACK_DENSITY`` (0.8) of kept inputs a ``lax.cond`` runs the dense product
    instead.

  The first version gathered 64-row chunks at every batch size: the gather writes a
  ``[64, N]`` copy (2.8 MB for ``N = 11008``, past the L2 cache) that the product then reads
  again, so each kept row cost about 1.5 dense rows (0.74 / 0.51 of dense at 50 / 75%);
* ``pallas_gpu`` (`sparsejax.ops.sparse_input_gpu`, Triton): one program per column tile of
  ``W``, looping over the kept chunks and gather-loading their rows (a GEMV for batch 1, a
  ``tl.dot`` for small batches);
* ``pallas_tpu`` (`sparsejax.ops.sparse_input_tpu`, Mosaic): the kept indices are
  scalar-prefetched and each kept row of ``W`` is DMA'd from HBM; chunks past ``nnz`` issue no
  copy;
* ``reference``: dense ``x @ W`` (the test oracle).

The TEAL kernel (FasterDecoding/TEAL ``kernels/sparse_gemv.py``) applies the threshold inside the
kernel with masked row loads; here the threshold is a separate `sparsejax.activation.sparsify`
and the kernel skips exact zeros, so any sparsifier (TEAL, CATS, R-Sparse's sparse part, Deja Vu)
reuses it.

Gradients (``jax.custom_vjp``, every backend): ``dx = g @ W.T`` and ``dW = x.T @ g`` (dense
products; ``dW`` is zero on the rows of inputs that are zero in the whole batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._backend import resolve
from sparsejax._blocks import pack_indices
from sparsejax._checks import check_float_array, must_be
from sparsejax.ops._dispatch import dispatched_vjp

__all__ = ["compact_inputs", "sparse_input_matmul"]

_HI = jax.lax.Precision.HIGHEST

#: Rows of ``W`` gathered per step of the ``xla`` chunk loop (batches over ``ROW_LOOP_MAX_BATCH``).
XLA_CHUNK = 64

#: Largest batch the ``xla`` path serves with the row-streaming loop.
ROW_LOOP_MAX_BATCH = 16

#: Kept rows of ``W`` read per trip of the ``xla`` row-streaming loop.
ROW_UNROLL = 4

#: Kept-input fraction above which the ``xla`` path runs the dense product instead (a chunk's
#: gather copies its rows before the product reads them, so near full density the loop costs
#: more than one dense GEMV).
DENSE_FALLBACK_DENSITY = 0.8


def compact_inputs(
    x: Float[Array, "B K"], chunk: int
) -> tuple[Int[Array, ""], Int[Array, " Kp"], Float[Array, "B Kp"]]:
    """The kept inputs of ``x`` packed to the front, in chunks of ``chunk``.

    Args:
        x: ``[B, K]``; input ``k`` is kept when ``x[b, k] != 0`` for some ``b``.
        chunk: the padded length ``Kp`` is ``K`` rounded up to a multiple of ``chunk``.

    Returns:
        ``(nnz, idx, xg)``: the kept count (int32 scalar), the ascending kept indices (int32
        ``[Kp]``, padding repeats the last kept index, ``0`` when none is kept) and the gathered
        inputs ``x[:, idx]`` (``[B, Kp]``, zero past ``nnz``).
    """
    k = x.shape[1]
    kp = max(-(-k // chunk) * chunk, chunk)
    keep = jnp.any(x != 0, axis=0)
    idx, nnz = pack_indices(jnp.pad(keep, (0, kp - k)), kp, pad="last")
    valid = jnp.arange(kp) < nnz
    xg = jnp.where(valid, jnp.take(x, idx, axis=1, mode="clip"), 0).astype(x.dtype)
    return nnz, idx, xg


def _reference(x: Array, w: Array) -> Array:
    out = jnp.matmul(x, w, preferred_element_type=jnp.float32, precision=_HI)
    return out.astype(jnp.result_type(x, w))


def _xla(x: Array, w: Array) -> Array:
    """The ``xla`` backend: the row-streaming loop for small batches, else the chunk loop."""
    if x.shape[0] <= ROW_LOOP_MAX_BATCH:
        return _xla_rows(x, w)
    return _xla_chunks(x, w)


def _xla_rows(x: Array, w: Array, *, unroll: int = ROW_UNROLL) -> Array:
    """Row-streaming loop (cost ~ ``nnz`` rows read in place); ``x [B, K]``, ``w [K, N]``."""
    b = x.shape[0]
    n = w.shape[1]
    dtype = jnp.result_type(x, w)
    nnz, idx, xg = compact_inputs(x, unroll)
    xg = xg.astype(jnp.float32)

    def body(c, acc):
        for j in range(unroll):  # padding slots repeat a kept row with a zero input
            row = jax.lax.dynamic_slice_in_dim(w, idx[c * unroll + j], 1, axis=0)
            xs = jax.lax.dynamic_slice_in_dim(xg, c * unroll + j, 1, axis=1)
            acc = acc + xs * row.astype(jnp.float32)
        return acc

    trips = (nnz + unroll - 1) // unroll
    return jax.lax.fori_loop(0, trips, body, jnp.zeros((b, n), jnp.float32)).astype(dtype)


def _xla_chunks(x: Array, w: Array, *, chunk: int = XLA_CHUNK) -> Array:
    """The chunked row-gather loop (cost ~ ``nnz``); ``x [B, K]``, ``w [K, N]``."""
    b, k = x.shape
    n = w.shape[1]
    dtype = jnp.result_type(x, w)
    nnz, idx, xg = compact_inputs(x, chunk)

    def body(c, acc):
        rows = jax.lax.dynamic_slice_in_dim(idx, c * chunk, chunk)
        xs = jax.lax.dynamic_slice_in_dim(xg, c * chunk, chunk, axis=1)
        ws = jnp.take(w, rows, axis=0, mode="clip")
        return acc + jnp.matmul(xs, ws, preferred_element_type=jnp.float32, precision=_HI)

    def loop():
        trips = (nnz + chunk - 1) // chunk
        return jax.lax.fori_loop(0, trips, body, jnp.zeros((b, n), jnp.float32)).astype(dtype)

    return jax.lax.cond(nnz > DENSE_FALLBACK_DENSITY * k, lambda: _reference(x, w), loop)


def _sim_bwd(backend, interpret, res, g):
    del backend, interpret
    x, w = res
    g = g.astype(jnp.float32)
    dx = jnp.matmul(g, w.T, preferred_element_type=jnp.float32, precision=_HI)
    dw = jnp.matmul(x.T, g, preferred_element_type=jnp.float32, precision=_HI)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_sim = dispatched_vjp("sparse_input_matmul", _sim_bwd)
_sim_jit = jax.jit(_sim, static_argnums=(0, 1))


def sparse_input_matmul(
    x: Float[Array, "... K"],
    w: Float[Array, "K N"],
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "... N"]:
    """``x @ w`` reading only the rows of ``w`` whose input is nonzero somewhere in the batch.

    Exact: the result equals the dense ``x @ w`` (accumulated in float32) for finite ``w``; the
    speed-up over a dense product is about the fraction of inputs that are zero in every batch
    row (1 at batch 1), so use it for decoding-sized batches.

    Args:
        x: ``[..., K]`` activations, mostly zero (e.g. `sparsejax.activation.sparsify`);
            leading axes are flattened into one batch axis.
        w: ``[K, N]`` weight (Flax ``Dense`` kernel layout ``[in, out]``).
        backend: ``"auto"`` (``pallas_tpu`` on TPU, ``pallas_gpu`` on GPU, else ``xla``),
            ``"xla"``, ``"pallas_gpu"``, ``"pallas_tpu"`` or ``"reference"`` (dense ``x @ w``).
            Under ``"auto"`` a Pallas kernel that cannot take the operands (dtype, batch too
            large) falls back to ``xla``.
        interpret: run a Pallas backend in interpret mode; ``None``: exactly on CPU.

    Returns:
        ``[..., N]`` in ``result_type(x, w)``.

    Raises:
        TypeError: non-float ``x`` or ``w``.
        ValueError: ``w`` not 2-D, ``x.shape[-1] != w.shape[0]``, unknown backend.
    """
    x = check_float_array(jnp.asarray(x) if not hasattr(x, "dtype") else x, "x", min_ndim=1)
    w = check_float_array(jnp.asarray(w) if not hasattr(w, "dtype") else w, "w")
    if w.ndim != 2:
        raise ValueError(must_be("w", "a 2-D array [K, N]", f"shape {tuple(w.shape)}", raw=True))
    if x.shape[-1] != w.shape[0]:
        raise ValueError(must_be("x", f"an array [..., K] with K = w.shape[0] = {w.shape[0]}",
                                 f"shape {tuple(x.shape)}", raw=True))
    resolved = resolve("sparse_input_matmul", backend)
    lead = x.shape[:-1]
    k, n = w.shape
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0 or k == 0 or n == 0:
        return jnp.zeros((*lead, n), jnp.result_type(x, w))
    return _sim_jit(resolved, interpret, x2, w).reshape(*lead, n)


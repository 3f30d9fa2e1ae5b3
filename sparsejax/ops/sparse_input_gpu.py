"""Pallas GPU kernel (Triton lowering) for `sparsejax.ops.sparse_input_matmul`.

``y = x @ W`` for a mostly-zero ``x [B, K]`` and a dense ``W [K, N]``. The kept inputs are
compacted outside the kernel (`sparsejax.ops.sparse_input.compact_inputs`: ascending kept
indices, their count ``nnz`` and the gathered inputs, a few small XLA ops on ``[B, K]``). The grid
has one program per ``tn``-wide column tile of ``W``; each loops over the
``ceil(nnz / tk)`` kept chunks only, gather-loading the ``[tk, tn]`` rows of ``W`` at the kept
indices (a masked load: rows past ``nnz`` are not read) and accumulating in float32 registers:

* batch 1 (GEMV): ``acc += sum(x_chunk[:, None] * W_rows, axis=0)`` on the CUDA cores;
* ``1 < B <= MAX_BATCH``: the batch is zero-padded to a power of two >= 16 and the chunk is a
  ``tl.dot``.

TEAL's kernel (FasterDecoding/TEAL ``kernels/sparse_gemv.py``) instead masks the loads of every
``[tk, tn]`` tile by ``|x| > tau`` and split-K reduces with atomics; compacting first makes the
loop length (not only the memory traffic) proportional to ``nnz`` and keeps the result
deterministic. Pure, forward-only; gradients come from `sparsejax.ops.sparse_input`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float

from sparsejax._backend import UnsupportedShapeError
from sparsejax._checks import must_be
from sparsejax._pallas import check_pow2, check_rank, check_tile, pad_to, result_dtype
from sparsejax.ops.sparse_input import compact_inputs

__all__ = ["MAX_BATCH", "sparse_input_matmul"]

MAX_BATCH = 64
"""Largest batch the kernel takes (``auto`` falls back to ``xla`` above it)."""


def _kernel(nnz_ref, idx_ref, x_ref, w_ref, o_ref, *, tk, tn, bp, n):
    n0 = pl.program_id(0) * tn
    nnz = nnz_ref[0]
    cols = n0 + jnp.arange(tn)
    in_cols = cols < n

    def body(c, acc):
        off = c * tk
        rows = idx_ref[pl.ds(off, tk)]
        valid = off + jnp.arange(tk) < nnz
        xs = x_ref[:, pl.ds(off, tk)]
        at = w_ref.at[rows[:, None], jnp.minimum(cols, n - 1)[None, :]]
        ws = plgpu.load(at, mask=valid[:, None] & in_cols[None, :], other=0.0).astype(xs.dtype)
        if bp == 1:
            prod = xs.reshape(tk, 1).astype(jnp.float32) * ws.astype(jnp.float32)
            return acc + jnp.sum(prod, axis=0, keepdims=True)
        return acc + jnp.dot(xs, ws, preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, pl.cdiv(nnz, tk), body, jnp.zeros((bp, tn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def sparse_input_matmul(
    x: Float[Array, "B K"],
    w: Float[Array, "K N"],
    *,
    block_k: int = 32,
    block_n: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: Any = False,
) -> Float[Array, "B N"]:
    """``x @ w`` reading only the rows of ``w`` whose input is nonzero (Pallas Triton).

    Args:
        x: ``[B, K]`` with ``B <= MAX_BATCH``.
        w: ``[K, N]``.
        block_k: kept rows per loop step ``tk`` (power of two >= 16).
        block_n: column tile ``tn`` (power of two >= 16; the last tile is masked, ``W`` is not
            copied).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining stages.
        interpret: ``False`` on GPU; ``True`` to run on CPU.

    Returns:
        ``[B, N]`` in ``result_type(x, w)`` (float32 accumulation).

    Raises:
        TypeError: a dtype other than float32/bfloat16/float16 (`UnsupportedDtypeError`).
        ValueError: mismatched shapes; ``B > MAX_BATCH`` or a tile that is not a power of two
            >= 16 (`UnsupportedShapeError`).
    """
    check_rank(x, "x")
    check_rank(w, "w")
    tk = check_tile(block_k, "block_k")
    tn = check_tile(block_n, "block_n")
    check_pow2(tk, "block_k")
    check_pow2(tn, "block_n")
    b, k = (int(d) for d in x.shape)
    n = int(w.shape[1])
    if int(w.shape[0]) != k:
        raise ValueError(must_be("w", f"an array [K, N] with K = x.shape[1] = {k}",
                                 f"shape {tuple(w.shape)}", raw=True))
    if b > MAX_BATCH:
        raise UnsupportedShapeError(must_be("x.shape[0]", f"at most {MAX_BATCH} (the GEMV / "
                                            "small-batch kernel)", b))
    dtype = result_dtype("sparse_input_matmul", x.dtype, w.dtype)
    if b == 0 or k == 0 or n == 0:
        return jnp.zeros((b, n), dtype)
    nnz, idx, xg = compact_inputs(x.astype(dtype), tk)
    kp = idx.shape[0]
    bp = 1 if b == 1 else max(16, 1 << (b - 1).bit_length())
    np_ = -(-n // tn) * tn
    out = pl.pallas_call(
        functools.partial(_kernel, tk=tk, tn=tn, bp=bp, n=n),
        grid=(np_ // tn,),
        in_specs=[
            pl.BlockSpec((1,), lambda j: (0,)),
            pl.BlockSpec((kp,), lambda j: (0,)),
            pl.BlockSpec((bp, kp), lambda j: (0, 0)),
            pl.BlockSpec((k, n), lambda j: (0, 0)),
        ],
        out_specs=pl.BlockSpec((bp, tn), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((bp, np_), dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="sparsejax_sparse_input_matmul_gpu",
    )(nnz.reshape(1), idx, pad_to(xg, (bp, kp)), w)
    return out[:b, :n]

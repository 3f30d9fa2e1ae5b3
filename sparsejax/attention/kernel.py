"""``attention``: block-sparse multi-head attention with one mask type and several backends.

Backends (``backend=``):

* ``"reference"``: dense softmax attention over `BlockMask.to_dense` (O(L^2), for tests);
* ``"xla"``: gathers only the kept KV blocks of every query block, so time and memory scale with
  the block density; differentiable (the CPU default);
* ``"pallas_tpu"``: splash-style Pallas TPU kernel: scalar-prefetched block indices, empty blocks
  fetch nothing, full blocks skip masking, online softmax in VMEM scratch;
* ``"pallas_gpu"``: Pallas (Triton) GPU kernel: one program per (batch, head, query block) loops
  over its kept KV blocks only, online softmax;
* ``"auto"``: ``pallas_tpu`` on TPU, ``pallas_gpu`` on GPU, ``xla`` elsewhere; a kernel that
  raises `sparsejax._backend.NotSupportedError` (e.g. a block size Triton cannot tile) falls
  back to ``xla``.

Dispatch (keyword-only ``backend=``, ``interpret=None`` meaning "interpret exactly on CPU") is
`sparsejax._backend`'s, shared with `sparsejax.ops`; the backend modules are named as in ``ops``:
``sparsejax.attention.reference``, ``.xla``, ``.pallas_tpu``, ``.pallas_gpu``, each with one
``attention(q, k, v, mask, scale)`` function.

The Pallas kernels compute the forward pass; their backward pass is the gradient of the ``xla``
path (recomputed from ``q``, ``k``, ``v``), so every backend is differentiable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._backend import (
    BACKENDS,
    IMPLEMENTATIONS,
    implementation,
    resolve,
    resolve_interpret,
    with_fallback,
)
from sparsejax._pallas import KERNEL_DTYPES
from sparsejax.attention import xla
from sparsejax.attention.mask import BlockMask
from sparsejax.attention.static import DEFAULT_BLOCK, causal_mask, full_mask


def _default_block(seq: int) -> int:
    return min(DEFAULT_BLOCK, seq)


def resolve_mask(
    mask: BlockMask | None,
    *,
    causal: bool,
    batch: int,
    heads: int,
    seq_q: int,
    seq_kv: int,
) -> BlockMask:
    """The mask ``attention`` will use: ``mask`` (validated), ``& causal`` if asked, or full.

    Args:
        mask: A `BlockMask` or ``None``.
        causal: Intersect with a causal mask (query ``i`` sees keys ``j <= i``).
        batch: Batch size of ``q``.
        heads: Query heads of ``q``.
        seq_q: Query length.
        seq_kv: Key length.

    Returns:
        The mask.
    """
    if mask is None:
        bq, bk = _default_block(seq_q), _default_block(seq_kv)
        if causal:
            return causal_mask(seq_q, seq_kv, block_q=bq, block_kv=bk)
        return full_mask(seq_q, seq_kv, block_q=bq, block_kv=bk)
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a BlockMask or None, got {type(mask).__name__}")
    if (mask.seq_q, mask.seq_kv) != (seq_q, seq_kv):
        raise ValueError(
            f"mask has (seq_q, seq_kv) = ({mask.seq_q}, {mask.seq_kv}) but q/k have "
            f"({seq_q}, {seq_kv})"
        )
    bm, hm = mask.block_map.shape[:2]
    if bm not in (1, batch):
        raise ValueError(f"mask batch dim {bm} must be 1 or the batch size {batch}")
    if hm not in (1, heads):
        raise ValueError(f"mask head dim {hm} must be 1 or the number of query heads {heads}")
    if causal:
        mask = mask & causal_mask(seq_q, seq_kv, block_q=mask.block_q, block_kv=mask.block_kv)
    return mask


def _validate(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"{name} must have shape [batch, heads, seq, dim], got {getattr(x, 'shape', None)}"
            )
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree on [batch, heads, seq]: {k.shape} vs {v.shape}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size: {q.shape[0]} vs {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head dim: {q.shape[3]} vs {k.shape[3]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
        )


def _with_xla_grad(forward, q, k, v, mask, scale):
    """Run ``forward`` but differentiate through the xla path (recomputation).

    A static mask is closed over (its NumPy metadata stays exact and compile-time); a dynamic one
    is passed through as a non-differentiable input."""
    if mask.is_static:

        @jax.custom_vjp
        def g(q, k, v):
            return forward(q, k, v, mask)

        def g_fwd(q, k, v):
            return forward(q, k, v, mask), (q, k, v)

        def g_bwd(res, ct):
            _, vjp = jax.vjp(lambda q, k, v: xla.attention(q, k, v, mask, scale), *res)
            return vjp(ct)

        g.defvjp(g_fwd, g_bwd)
        return g(q, k, v)

    @jax.custom_vjp
    def f(q, k, v, mask):
        return forward(q, k, v, mask)

    def fwd(q, k, v, mask):
        return forward(q, k, v, mask), (q, k, v, mask)

    def bwd(res, g):
        q, k, v, mask = res
        _, vjp = jax.vjp(lambda q, k, v: xla.attention(q, k, v, mask, scale), q, k, v)
        dq, dk, dv = vjp(g)
        return dq, dk, dv, jax.tree_util.tree_map(_zero_cotangent, mask)

    f.defvjp(fwd, bwd)
    return f(q, k, v, mask)


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(x.shape, jax.dtypes.float0)


def attention(
    q: Float[Array, "batch heads seq_q dim"],
    k: Float[Array, "batch kv_heads seq_kv dim"],
    v: Float[Array, "batch kv_heads seq_kv dim_v"],
    mask: BlockMask | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
    interpret: bool | None = None,
) -> Float[Array, "batch heads seq_q dim_v"]:
    """Block-sparse scaled dot-product attention ``softmax(q k^T * scale + mask) v``.

    Grouped-query attention: ``k``/``v`` may have fewer heads than ``q`` (query head ``h`` uses KV
    head ``h // (heads // kv_heads)``). Logits, softmax and accumulation are float32 for every
    input dtype; the output has ``q.dtype``. A query row with no kept key (an empty row of the
    mask) returns zeros, never NaN, and contributes zero gradient.

    Args:
        q: Queries ``[batch, heads, seq_q, dim]`` (float32, bfloat16 or float16).
        k: Keys ``[batch, kv_heads, seq_kv, dim]``.
        v: Values ``[batch, kv_heads, seq_kv, dim_v]``.
        mask: A `sparsejax.attention.BlockMask` of geometry ``(seq_q, seq_kv)`` whose batch
            and head dims are 1 or equal to ``batch`` / ``heads``. ``None``: every key (blocks of
            ``min(128, seq)``).
        causal: Also apply a causal mask (``j <= i``).
        scale: Logit scale; default ``1 / sqrt(dim)``.
        backend: ``"auto"``, ``"reference"``, ``"xla"``, ``"pallas_tpu"`` or ``"pallas_gpu"``.
        interpret: Run a Pallas backend in interpret mode; ``None`` (default): exactly when JAX's
            default platform is the CPU.

    Returns:
        ``[batch, heads, seq_q, dim_v]`` in ``q.dtype``.
    """
    _validate(q, k, v)
    batch, heads, seq_q, dim = q.shape
    seq_kv = k.shape[2]
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a Python float or None, got {scale!r}")
    scale = float(scale)
    choice = resolve("attention", backend)
    mask = resolve_mask(
        mask, causal=causal, batch=batch, heads=heads, seq_q=seq_q, seq_kv=seq_kv
    )
    if choice.name in ("reference", "xla"):
        return implementation("attention", choice)(q, k, v, mask, scale)
    kernel = IMPLEMENTATIONS["attention"][choice.name].load()  # interpret, fallback: below
    run_interpret = resolve_interpret(interpret)

    def fwd(q, k, v, m):
        return kernel(q, k, v, m, scale, interpret=run_interpret)

    run = with_fallback(lambda: _with_xla_grad(fwd, q, k, v, mask, scale),
                        lambda: xla.attention(q, k, v, mask, scale), auto=choice.auto)
    return run()


def dense_attention(
    q: Float[Array, "batch heads seq_q dim"],
    k: Float[Array, "batch kv_heads seq_kv dim"],
    v: Float[Array, "batch kv_heads seq_kv dim_v"],
    mask: BlockMask | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> Float[Array, "batch heads seq_q dim_v"]:
    """Same as ``attention(..., backend="reference")``: dense softmax over the equivalent mask."""
    return attention(q, k, v, mask, causal=causal, scale=scale, backend="reference")


__all__ = ["BACKENDS", "attention", "dense_attention", "resolve_mask"]

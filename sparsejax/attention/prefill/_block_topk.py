"""Block top-k prefill (MInference block-sparse, as run by The Sparse Frontier).

Reference: PiotrNawrot/sparse-frontier ``sparse_frontier/modelling/attention/minference/block.py``
(``chunk_size = 16``, ``top_chunks = 64``): mean-pooled ``q . k`` block scores (zero padded), the
diagonal, sub-diagonal and first block forced, ``top_k`` blocks per query block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_int
from sparsejax.attention._qk import check_qk, repeat_kv, topk_rows
from sparsejax.attention.mask import BlockMask
from sparsejax.attention.static import causal_mask

__all__ = ["block_topk_blocks", "block_topk_mask"]


def block_topk_blocks(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    block_size: int = 16,
    top_k: int = 64,
) -> Bool[Array, "batch heads nb nb"]:
    """Block top-k selection (MInference block-sparse; sparse-frontier ``chunk 16, top 64``).

    Query and key blocks are mean pooled (the partial last block zero padded, as in the
    reference); query block ``m`` keeps its diagonal block, the sub-diagonal block and block 0
    (forced) plus the highest-scoring causal blocks, ``min(top_k, m + 1)`` in all.

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        block_size: Block edge (16).
        top_k: Blocks per query block (64; the reference requires ``>= 3``).

    Returns:
        Bool ``[B, H, nb, nb]`` (lower block triangular), ``nb = ceil(L / block_size)``.
    """
    check_qk(q, k)
    block_size = check_int(block_size, "block_size", minimum=1)
    top_k = check_int(top_k, "top_k", minimum=3)
    return _block_topk_core(q, k, jnp.int32(top_k), block_size=block_size)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _block_topk_core(q, k, top_k, *, block_size):
    b, h, lq, d = q.shape
    kk = repeat_kv(k, h)
    nb = -(-lq // block_size)
    pad = nb * block_size - lq

    def pool(x):
        x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, 0), (0, pad), (0, 0)))
        return x.reshape(b, h, nb, block_size, d).sum(axis=3) / block_size

    p = jnp.einsum("bhmd,bhnd->bhmn", pool(q), pool(kk))
    m = jnp.arange(nb)[:, None]
    n = jnp.arange(nb)[None, :]
    forced = (n == m) | (n == m - 1) | (n == 0)
    p = jnp.where(forced, jnp.inf, p)
    p = jnp.where(n <= m, p, -jnp.inf)
    return topk_rows(p, jnp.minimum(top_k, nb)) & (n <= m)


def block_topk_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    block_size: int = 16,
    top_k: int = 64,
) -> BlockMask:
    """Block top-k prefill mask: the kept blocks of `block_topk_blocks` AND causal.

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        block_size: Block edge (16).
        top_k: Blocks per query block.

    Returns:
        A dynamic ``BlockMask`` ``[B, H, L, L]`` whose kernel metadata is ``min(top_k, nb)`` wide.
    """
    blocks = block_topk_blocks(q, k, block_size=block_size, top_k=top_k)
    lq = q.shape[2]
    kept = BlockMask.from_blocks(
        blocks, block_size, block_size, lq, lq, max_kv_blocks=min(top_k, blocks.shape[-1])
    )
    return kept & causal_mask(lq, block_q=block_size, block_kv=block_size)

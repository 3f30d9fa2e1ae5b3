"""SparseD: head-specific sparse attention for diffusion language models, computed once and reused.

Rules follow the reference (INV-WZQ/SparseD, ``models/Dream/modeling_dream.py`` and
``models/Dream/SparseD_utils.py::create_attention_block_mask``):

* denoising steps ``0 .. end`` (``end = int(T * skip) + 1``, ``skip = 0.2``) use full attention;
  at step ``end`` the block mask is computed from that step's ``q`` and ``k`` and cached per
  (batch, head); every later step reuses it;
* selection, per query block of ``block_size`` rows (bidirectional attention, no causal mask):

  1. *prompt blocks*: softmax over all keys; score each KV block by the mean ``|A|`` over the
     ``block_size x block_size`` block (zero padded at the ends); keep the top
     ``max(1, int(n_kv * rho) + 1)`` blocks; then clear every generation block;
  2. *isolated selection*: softmax over the generation keys only (KV blocks ``last ..``); keep
     the top ``max(1, int(n_gen * rho) + 1)`` of those blocks; OR them in.

  ``last`` is the first query block with ``L - idx * block_size <= new_generation`` (or the last
  block). Defaults: ``block_size=128, rho=0.3`` for long prompts; the reference uses ``32, 0.5``
  for short ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_int, check_positive_float, check_sparsity
from sparsejax.attention._qk import check_qk, repeat_kv, topk_rows
from sparsejax.attention.mask import BlockMask

__all__ = [
    "SparseDSchedule",
    "sparsed_blocks",
    "sparsed_generation_start",
    "sparsed_mask",
    "sparsed_update",
]


@dataclasses.dataclass(frozen=True)
class SparseDSchedule:
    """When SparseD attends densely, builds its mask, and reuses it.

    Attributes:
        num_steps: total number of denoising steps ``T``.
        skip: fraction of early steps with full attention (0.2).
    """

    num_steps: int
    skip: float = 0.2

    def __post_init__(self):
        check_int(self.num_steps, "num_steps", minimum=1)
        check_sparsity(self.skip, "skip")

    @property
    def end(self) -> int:
        """The step ``int(T * skip) + 1`` at which the mask is built (the last dense step)."""
        return int(self.num_steps * self.skip) + 1

    def is_dense(self, step: int | Int[Array, ""]) -> bool | Bool[Array, ""]:
        """Full attention at ``step`` (steps ``0 .. end``)."""
        return step <= self.end

    def builds_mask(self, step: int | Int[Array, ""]) -> bool | Bool[Array, ""]:
        """The mask is computed from this step's ``q``/``k`` (``step == end``)."""
        return step == self.end

    def reuses_mask(self, step: int | Int[Array, ""]) -> bool | Bool[Array, ""]:
        """The cached mask is used (``step > end``)."""
        return step > self.end


def sparsed_generation_start(seq_len: int, new_generation: int, block_size: int) -> int:
    """Index ``last`` of the first generation block (the reference's rule).

    Args:
        seq_len: Sequence length ``L`` (prompt plus generation tokens).
        new_generation: Generation tokens at the end of the sequence.
        block_size: Selection block.

    Returns:
        The first query block ``idx`` with ``seq_len - idx * block_size <= new_generation``, or
        the last block if none.
    """
    check_int(seq_len, "seq_len", minimum=1)
    check_int(new_generation, "new_generation", minimum=0)
    check_int(block_size, "block_size", minimum=1)
    nb = -(-seq_len // block_size)
    first = max(0, -(-(seq_len - new_generation) // block_size))
    return min(first, nb - 1)


def _block_scores(
    q_blk: jnp.ndarray,
    k: jnp.ndarray,
    kv_valid: jnp.ndarray,
    q_rows: jnp.ndarray,
    block_size: int,
    scale: float,
) -> jnp.ndarray:
    """Mean |softmax| per KV block for one query block. q_blk [B,H,bs,D], k [B,H,Lk,D]."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q_blk.astype(jnp.float32), k.astype(jnp.float32)) * scale
    s = jnp.where(kv_valid[None, None, None, :], s, -jnp.inf)
    a = jax.nn.softmax(s, axis=-1)
    a = jnp.where(q_rows[None, None, :, None] & kv_valid[None, None, None, :], a, 0.0)
    lk = k.shape[2]
    nk = lk // block_size
    a = a.reshape(*a.shape[:3], nk, block_size)
    return jnp.abs(a).sum(axis=(2, 4)) / (block_size * block_size)


def sparsed_blocks(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    new_generation: int,
    block_size: int = 128,
    rho: float = 0.3,
    scale: float | None = None,
) -> Bool[Array, "batch heads nb nb"]:
    """SparseD's head-specific block selection (computed once, from one step's q and k).

    Args:
        q: queries ``[B, H, L, D]``.
        k: keys ``[B, Hkv, L, D]`` (``H`` a multiple of ``Hkv``; GQA keys are repeated).
        new_generation: number of generation (masked) tokens at the end of the sequence.
        block_size: selection block (128 long prompts / 32 short in the reference).
        rho: selection ratio (0.3 long / 0.5 short).
        scale: Logit scale of the selection softmax. The two reference models differ here:
            SparseD's Dream code (``models/Dream/modeling_dream.py``) divides the logits by
            ``sqrt(head_dim)``, which is the default ``scale=None`` (``1 / sqrt(D)``); its LLaDA
            code (``models/LLaDA/modeling_llada.py``) divides by ``sqrt(num_heads)`` (the number
            of query heads), so reproduce LLaDA with ``scale=1 / math.sqrt(H)`` (LLaDA-8B:
            ``H = 32``, ``D = 128``, i.e. logits twice as large as Dream's convention).

    Returns:
        Bool ``[B, H, nb, nb]`` block selection, ``nb = ceil(L / block_size)``: query block ``m``
        visits KV block ``j`` (bidirectional).
    """
    _, _, _, d = check_qk(q, k)
    block_size = check_int(block_size, "block_size", minimum=1)
    check_sparsity(rho, "rho")
    rho = float(rho)
    new_generation = check_int(new_generation, "new_generation", minimum=0)
    scale = 1.0 / math.sqrt(d) if scale is None else check_positive_float(scale, "scale")
    lq = q.shape[2]
    nb = -(-lq // block_size)
    last = sparsed_generation_start(lq, new_generation, block_size)
    n_gen = nb - last
    keep = jnp.asarray(  # traced budgets: a sweep over rho compiles once
        [min(nb, max(1, int(nb * rho) + 1)), min(n_gen, max(1, int(n_gen * rho) + 1))], jnp.int32
    )
    return _select_core(q, k, keep, jnp.float32(scale), last=last, block_size=block_size)


@functools.partial(jax.jit, static_argnames=("last", "block_size"))
def _select_core(q, k, keep, scale, *, last, block_size):
    b, h, lq, d = q.shape
    k = repeat_kv(k, h)
    nb = -(-lq // block_size)
    pad = nb * block_size - lq
    qp = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
    pos = jnp.arange(nb * block_size)
    kv_valid = pos < lq
    keep_all, keep_gen = keep[0], keep[1]
    gen_valid = kv_valid[last * block_size :]
    k_gen = kp[:, :, last * block_size :]
    q_blocks = qp.reshape(b, h, nb, block_size, d).transpose(2, 0, 1, 3, 4)
    row_valid = kv_valid.reshape(nb, block_size)

    def one_block(args):
        q_blk, rows = args
        s_all = _block_scores(q_blk, kp, kv_valid, rows, block_size, scale)  # [B,H,nb]
        prompt = topk_rows(s_all, keep_all) & (jnp.arange(nb) < last)
        s_gen = _block_scores(q_blk, k_gen, gen_valid, rows, block_size, scale)  # [B,H,n_gen]
        gen = topk_rows(s_gen, keep_gen)
        return prompt | jnp.pad(gen, ((0, 0), (0, 0), (last, 0)))

    out = jax.lax.map(one_block, (q_blocks, row_valid))  # [nb, B, H, nb]
    return out.transpose(1, 2, 0, 3)


def sparsed_mask(
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    *,
    new_generation: int,
    block_size: int = 128,
    rho: float = 0.3,
    scale: float | None = None,
) -> BlockMask:
    """SparseD selection as a ``BlockMask``: `sparsed_blocks` with full kept blocks.

    Args:
        q: Queries ``[B, H, L, D]``.
        k: Keys ``[B, Hkv, L, D]``.
        new_generation: Generation tokens at the end of the sequence.
        block_size: Selection block (also the mask's block).
        rho: Selection ratio.
        scale: Logit scale of the selection (see `sparsed_blocks` for Dream vs LLaDA).

    Returns:
        A dynamic ``BlockMask`` ``[B, H, L, L]`` (bidirectional: no token mask inside kept
        blocks). It is ``BlockMask.from_blocks(sparsed_blocks(...), block_size, block_size, L, L)``,
        the same step that turns the block selection cached by `sparsed_update` into a mask.
    """
    blocks = sparsed_blocks(
        q, k, new_generation=new_generation, block_size=block_size, rho=rho, scale=scale
    )
    lq = q.shape[2]
    return BlockMask.from_blocks(blocks, block_size, block_size, lq, lq)


def sparsed_update(
    schedule: SparseDSchedule,
    step: int | Int[Array, ""],
    q: Float[Array, "batch heads seq dim"],
    k: Float[Array, "batch kv_heads seq dim"],
    cached: Bool[Array, "batch heads nb nb"],
    *,
    new_generation: int,
    block_size: int = 128,
    rho: float = 0.3,
    scale: float | None = None,
) -> tuple[Bool[Array, ""], Bool[Array, "batch heads nb nb"]]:
    """One denoising step of the SparseD schedule (jit-compatible, ``step`` may be traced).

    The cache is the ``[B, H, nb, nb]`` block selection, not a mask object, so it has a fixed
    shape and dtype across ``lax.cond``/``lax.scan`` steps. A sparse step turns it into a mask
    with ``BlockMask.from_blocks(cached, block_size, block_size, L, L)`` and attends with it::

        dense, cached = sparsed_update(schedule, step, q, k, cached, new_generation=g)
        mask = BlockMask.from_blocks(cached, bs, bs, L, L)
        out = jax.lax.cond(dense, lambda: attention(q, k, v), lambda: attention(q, k, v, mask))

    Args:
        schedule: The `SparseDSchedule`.
        step: Current denoising step.
        q: This step's queries ``[B, H, L, D]``.
        k: This step's keys ``[B, Hkv, L, D]``.
        cached: The cached block selection (any value before step ``end``; e.g. all True).
        new_generation: Generation tokens at the end of the sequence.
        block_size: Selection block.
        rho: Selection ratio.
        scale: Logit scale (see `sparsed_blocks`).

    Returns:
        ``(dense, blocks)``: ``dense`` is True when this step must use full attention; ``blocks``
        is the selection to cache (recomputed at ``step == end``, otherwise ``cached``
        unchanged), which the sparse steps (``step > end``) use.
    """

    def build(_):
        return sparsed_blocks(
            q, k, new_generation=new_generation, block_size=block_size, rho=rho, scale=scale
        )

    blocks = jax.lax.cond(jnp.asarray(schedule.builds_mask(step)), build, lambda _: cached, None)
    return jnp.asarray(schedule.is_dense(step)), blocks

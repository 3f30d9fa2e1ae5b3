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

__all__ = [
    "SparseDSchedule",
    "sparsed_generation_start",
    "sparsed_block_select",
    "sparsed_mask",
    "sparsed_update",
]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_rho(rho: float) -> float:
    if not isinstance(rho, (int, float)) or isinstance(rho, bool) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be a float in [0, 1], got {rho!r}")
    return float(rho)


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
        _check_int(self.num_steps, "num_steps", 1)
        if not isinstance(self.skip, (int, float)) or not 0.0 <= self.skip <= 1.0:
            raise ValueError(f"skip must be a float in [0, 1], got {self.skip!r}")

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

    The first query block ``idx`` with ``seq_len - idx * block_size <= new_generation``, or the last
    block if none.
    """
    _check_int(seq_len, "seq_len", 1)
    _check_int(new_generation, "new_generation", 0)
    _check_int(block_size, "block_size", 1)
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


def _topk_mask(scores: jnp.ndarray, k: int) -> jnp.ndarray:
    _, idx = jax.lax.top_k(scores, k)
    return jnp.any(jax.nn.one_hot(idx, scores.shape[-1], dtype=bool), axis=-2)


def sparsed_block_select(
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
        scale: logit scale, default ``1 / sqrt(D)``.

    Returns:
        Bool ``[B, H, nb, nb]`` block mask, ``nb = ceil(L / block_size)``: query block ``m`` visits
        KV block ``j`` (bidirectional).
    """
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q and k must be [B, H, L, D], got shapes {q.shape} and {k.shape}")
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[2] != lq or k.shape[3] != d:
        raise ValueError(f"k must be [B, Hkv, L, D] matching q {q.shape}, got {k.shape}")
    if h % k.shape[1]:
        raise ValueError(f"q heads ({h}) must be a multiple of k heads ({k.shape[1]})")
    block_size = _check_int(block_size, "block_size", 1)
    rho = _check_rho(rho)
    new_generation = _check_int(new_generation, "new_generation", 0)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    return _select_core(
        q, k, new_generation=new_generation, block_size=block_size, rho=rho, scale=float(scale)
    )


@functools.partial(jax.jit, static_argnames=("new_generation", "block_size", "rho", "scale"))
def _select_core(q, k, *, new_generation, block_size, rho, scale):
    b, h, lq, d = q.shape
    k = jnp.repeat(k, h // k.shape[1], axis=1)
    nb = -(-lq // block_size)
    pad = nb * block_size - lq
    qp = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
    pos = jnp.arange(nb * block_size)
    kv_valid = pos < lq
    last = sparsed_generation_start(lq, new_generation, block_size)
    keep_all = min(nb, max(1, int(nb * rho) + 1))
    n_gen = nb - last
    keep_gen = min(n_gen, max(1, int(n_gen * rho) + 1))
    gen_valid = kv_valid[last * block_size :]
    k_gen = kp[:, :, last * block_size :]
    q_blocks = qp.reshape(b, h, nb, block_size, d).transpose(2, 0, 1, 3, 4)
    row_valid = kv_valid.reshape(nb, block_size)

    def one_block(args):
        q_blk, rows = args
        s_all = _block_scores(q_blk, kp, kv_valid, rows, block_size, scale)  # [B,H,nb]
        prompt = _topk_mask(s_all, keep_all) & (jnp.arange(nb) < last)
        s_gen = _block_scores(q_blk, k_gen, gen_valid, rows, block_size, scale)  # [B,H,n_gen]
        gen = _topk_mask(s_gen, keep_gen)
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
):
    """SparseD selection as a `sparsejax.attention.mask.BlockMask` (``block_size`` blocks).

    See `sparsed_block_select`; the returned mask is ``[B, H, L, L]`` with no token mask
    inside kept blocks (bidirectional).
    """
    from sparsejax.attention.mask import BlockMask

    blocks = sparsed_block_select(
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

    Args:
        schedule: the `SparseDSchedule`.
        step: current denoising step.
        q: this step's queries ``[B, H, L, D]``.
        k: this step's keys ``[B, Hkv, L, D]``.
        cached: the cached block mask (any value before step ``end``; e.g. all True).
        new_generation: generation tokens at the end of the sequence.
        block_size: selection block.
        rho: selection ratio.
        scale: logit scale (default ``1 / sqrt(D)``).

    Returns:
        ``(dense, mask)``: ``dense`` is True when this step must use full attention; ``mask`` is
        the block mask to cache (recomputed at ``step == end``, otherwise ``cached`` unchanged),
        which the sparse steps (``step > end``) use.
    """

    def build(_):
        return sparsed_block_select(
            q, k, new_generation=new_generation, block_size=block_size, rho=rho, scale=scale
        )

    mask = jax.lax.cond(jnp.asarray(schedule.builds_mask(step)), build, lambda _: cached, None)
    return jnp.asarray(schedule.is_dense(step)), mask

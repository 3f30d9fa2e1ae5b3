"""Decode attention over the kept KV entries only (the consumer of every ``*_keep`` selection)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sparsejax._blocks import pack_indices, slot_mask
from sparsejax._checks import check_int, is_concrete

__all__ = ["attend_kept", "keep_to_indices"]


def keep_to_indices(
    keep: Bool[Array, "*lead n"], size: int
) -> tuple[Int[Array, "*lead size"], Bool[Array, "*lead size"]]:
    """Kept positions of a keep mask as padded ascending index lists (jit-compatible).

    The gather-list form of `sparsejax._blocks.pack_indices`, the one packer the block-sparse
    kernels use too.

    Args:
        keep: Bool ``[..., N]``.
        size: Static list length (e.g. the token_budget); extra kept positions are dropped.

    Returns:
        ``(indices, valid)``: int32 ``[..., size]`` (padding 0) and bool ``[..., size]``.
    """
    size = check_int(size, "size", minimum=1)
    return _keep_to_indices(jnp.asarray(keep), size)  # one program for an eager call


@functools.partial(jax.jit, static_argnums=1)
def _keep_to_indices(keep: Array, size: int) -> tuple[Array, Array]:
    idx, counts = pack_indices(keep, size, pad="zero")
    return idx, slot_mask(counts, size)


def attend_kept(
    q: Float[Array, "batch heads dim"],
    k: Float[Array, "batch kv_heads kv_len dim"],
    v: Float[Array, "batch kv_heads kv_len dim_v"],
    keep: Bool[Array, "batch keep_heads kv_len"],
    *,
    token_budget: int | None = None,
    scale: float | None = None,
) -> Float[Array, "batch heads dim_v"]:
    """One decoding query per head attends to its kept KV entries only.

    The kept positions are packed into a ``[B, H, token_budget]`` index list (`keep_to_indices`),
    ``k``/``v`` are gathered there and softmax attention runs over ``token_budget`` entries instead
    of ``kv_len`` (the softmax and the value sum scale with the budget of Quest, SnapKV /
    Ada-SnapKV and MoA decoding; the packing is one pass of the shared packer). It equals dense
    attention under the equivalent mask (``keep`` as a one-row token mask); a head with no kept
    entry returns zeros, as `sparsejax.attention.attention` does.

    Args:
        q: Decoding queries ``[B, H, D]``.
        k: Key cache ``[B, Hkv, kv_len, D]`` (``H`` a multiple of ``Hkv``).
        v: Value cache ``[B, Hkv, kv_len, Dv]``.
        keep: Bool keep mask ``[B|1, H, kv_len]`` (per query head, e.g. `quest_keep`) or
            ``[B|1, Hkv, kv_len]`` (per KV head, shared by its query group, e.g. `snapkv_keep`);
            a 2-D ``[heads, kv_len]`` mask (e.g. `moa_keep`) is broadcast over the batch.
        token_budget: Static number of entries gathered per head (the method's budget). ``None``:
            the largest kept count of ``keep``, which must then be concrete (not traced).
            Kept entries beyond ``token_budget`` (in position order) are dropped.
        scale: Logit scale; default ``1 / sqrt(D)``.

    Returns:
        ``[B, H, Dv]`` in ``q.dtype``.
    """
    if getattr(q, "ndim", None) != 3:
        raise ValueError(f"`q` must be [B, H, D]; got shape {getattr(q, 'shape', None)}.")
    for name, x in (("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"`{name}` must be [B, Hkv, L, D]; got shape {getattr(x, 'shape', None)}.")
    b, h, d = q.shape
    _, hkv, lk, _ = k.shape
    if k.shape[0] != b or k.shape[3] != d or v.shape[:3] != k.shape[:3] or h % hkv:
        raise ValueError(
            f"`k` must be [B, Hkv, L, D] and `v` [B, Hkv, L, Dv] matching q {q.shape} with H a "
            f"multiple of Hkv; got k {k.shape} and v {v.shape}."
        )
    if getattr(keep, "dtype", None) != np.dtype(bool):
        raise TypeError(f"`keep` must be a bool array; got dtype {getattr(keep, 'dtype', None)}.")
    if keep.ndim == 2:
        keep = keep[None]
    if keep.ndim != 3 or keep.shape[0] not in (1, b) or keep.shape[1] not in (h, hkv):
        raise ValueError(
            f"`keep` must be [B|1, H|Hkv, kv_len] with B={b}, H={h}, Hkv={hkv}, kv_len={lk}; "
            f"got shape {keep.shape}."
        )
    if keep.shape[2] != lk:
        raise ValueError(f"`keep` must cover kv_len = {lk} positions; got shape {keep.shape}.")
    if token_budget is None:
        if not is_concrete(keep):
            raise ValueError("`token_budget` must be an int when `keep` is traced; got None.")
        token_budget = max(1, int(np.asarray(keep).sum(-1).max()))
    token_budget = min(check_int(token_budget, "token_budget", minimum=1), lk)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    idx, valid = keep_to_indices(keep, token_budget)
    return _attend(q, k, v, idx, valid, float(scale))


@functools.partial(jax.jit, static_argnums=5)
def _attend(q, k, v, idx, valid, scale):
    b, h, _ = q.shape
    hkv = k.shape[1]
    group = h // hkv
    heads = jnp.arange(h)
    if idx.shape[1] == h:
        sel = heads  # one list per query head
    else:
        sel = heads // group  # query head h reads its KV head's list
    idx = jnp.broadcast_to(idx, (b,) + idx.shape[1:])[:, sel]  # [B, H, K]
    valid = jnp.broadcast_to(valid, (b,) + valid.shape[1:])[:, sel]
    bi = jnp.arange(b)[:, None, None]
    hi = (heads // group)[None, :, None]
    kg = k[bi, hi, idx].astype(jnp.float32)  # [B, H, K, D]
    vg = v[bi, hi, idx].astype(jnp.float32)
    s = jnp.einsum("bhd,bhkd->bhk", q.astype(jnp.float32), kg) * scale
    s = jnp.where(valid, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(valid, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    return jnp.einsum("bhk,bhkd->bhd", p, vg).astype(q.dtype)

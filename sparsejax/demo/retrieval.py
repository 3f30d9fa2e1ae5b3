"""A synthetic long-context retrieval (needle / passkey) task over random embeddings (demo and
benchmark material, not part of the library API).

Every (batch row, head) holds a causal sequence of ``L`` random Gaussian keys and values. One
position, the *needle*, has a key ``u`` and a value equal to the code of its *label* (one of
``num_labels`` random codes). The last ``num_queries`` positions are the *question*: their queries
are ``strength * u / sqrt(D)`` plus noise, so softmax attention from the last query puts roughly
a constant mass on the needle wherever it is, and the attention output decodes to the label
(nearest code). Every other query is a random Gaussian vector (diffuse attention).

A sparse pattern answers correctly only if it keeps the needle for the answering query (the last
one), so accuracy against density measures how well a pattern finds the one key that matters:
static patterns (sink + window, MoA) succeed about as often as the needle falls inside their
window; the dynamic ones (vertical-slash, FlexPrefill, block top-k, Quest, SnapKV, SparseD) find
it from ``q`` and ``k``. Dense attention answers every instance (checked by the tests at the
default strength).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_int
from sparsejax.attention.mask import FULL, PARTIAL, BlockMask

__all__ = [
    "RetrievalTask",
    "make_retrieval_task",
    "mask_answer_row",
    "retrieval_predict",
    "retrieval_accuracy",
    "causal_density",
]


class RetrievalTask(NamedTuple):
    """One batch of the retrieval task.

    Attributes:
        q: queries ``[B, H, L, D]``.
        k: keys ``[B, H, L, D]``.
        v: values ``[B, H, L, D]``.
        codes: label codes ``[C, D]``.
        needle: needle position ``[B, H]``.
        label: needle label ``[B, H]``.
    """

    q: Float[Array, "batch heads seq dim"]
    k: Float[Array, "batch heads seq dim"]
    v: Float[Array, "batch heads seq dim"]
    codes: Float[Array, "labels dim"]
    needle: Int[Array, "batch heads"]
    label: Int[Array, "batch heads"]


def make_retrieval_task(
    key: Array,
    *,
    batch: int = 2,
    heads: int = 4,
    seq_len: int = 1024,
    head_dim: int = 64,
    num_queries: int = 16,
    num_labels: int = 16,
    strength: float = 12.0,
    query_noise: float = 0.5,
    min_depth: int | None = None,
) -> RetrievalTask:
    """Sample a batch of the retrieval task.

    Args:
        key: PRNG key.
        batch: batch rows ``B``.
        heads: heads ``H`` (independent instances).
        seq_len: sequence length ``L``.
        head_dim: head dimension ``D``.
        num_queries: length of the question at the end of the sequence.
        num_labels: number of label codes ``C``.
        strength: needle logit of a question query (``q . u / sqrt(D)`` is about ``strength``).
        query_noise: standard deviation of the noise added to question queries, relative to the
            needle direction's norm.
        min_depth: the needle lies in ``[0, L - min_depth)``; default ``num_queries + 1`` (always
            before the question).

    Returns:
        A `RetrievalTask`.
    """
    for name, val, lo in (
        ("batch", batch, 1),
        ("heads", heads, 1),
        ("seq_len", seq_len, 2),
        ("head_dim", head_dim, 1),
        ("num_queries", num_queries, 1),
        ("num_labels", num_labels, 2),
    ):
        check_int(val, name, minimum=lo)
    if min_depth is None:
        min_depth = num_queries + 1
    if not num_queries < seq_len or not 0 < min_depth < seq_len:
        raise ValueError(
            f"need num_queries < seq_len and 0 < min_depth < seq_len, got num_queries="
            f"{num_queries}, min_depth={min_depth}, seq_len={seq_len}"
        )
    return _make_task(
        key,
        batch,
        heads,
        seq_len,
        head_dim,
        num_queries,
        num_labels,
        float(strength),
        float(query_noise),
        min_depth,
    )


@functools.partial(jax.jit, static_argnums=tuple(range(1, 10)))
def _make_task(
    key, batch, heads, seq_len, head_dim, num_queries, num_labels, strength, query_noise, min_depth
):
    ks = jax.random.split(key, 8)
    shape = (batch, heads, seq_len, head_dim)
    k = jax.random.normal(ks[0], shape)
    v = jax.random.normal(ks[1], shape)
    q = jax.random.normal(ks[2], shape)
    codes = jax.random.normal(ks[3], (num_labels, head_dim))
    needle = jax.random.randint(ks[4], (batch, heads), 0, seq_len - min_depth)
    label = jax.random.randint(ks[5], (batch, heads), 0, num_labels)
    u = jax.random.normal(ks[6], (batch, heads, head_dim))
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True) * math.sqrt(head_dim)
    pos = jnp.arange(seq_len)
    at_needle = (pos[None, None, :] == needle[..., None])[..., None]
    k = jnp.where(at_needle, u[:, :, None, :], k)
    v = jnp.where(at_needle, codes[label][:, :, None, :], v)
    noise = jax.random.normal(ks[7], (batch, heads, num_queries, head_dim)) * query_noise
    qq = (u[:, :, None, :] + noise) * (strength / math.sqrt(head_dim))
    q = q.at[:, :, seq_len - num_queries :].set(qq)
    return RetrievalTask(q, k, v, codes, needle, label)


def mask_answer_row(mask: Any, row: int = -1) -> Bool[Array, "b h seq_kv"]:
    """Keys kept for one query row of a mask, without materialising the whole mask.

    Args:
        mask: a `sparsejax.attention.mask.BlockMask`, or a bool token mask
            ``[..., Lq, Lk]`` (the row is taken), or a keep vector ``[..., Lk]`` (returned as is).
        row: query row (default the last).

    Returns:
        Bool ``[Bm, Hm, Lk]`` (or the input's leading shape for arrays).
    """
    if isinstance(mask, BlockMask):
        r = row % mask.seq_q
        bm, hm = mask.block_map.shape[:2]
        b = jnp.arange(bm)[:, None, None]
        h = jnp.arange(hm)[None, :, None]
        kv = jnp.arange(mask.seq_kv)[None, None, :]
        blocks = jnp.asarray(mask.block_map)[:, :, r // mask.block_q]  # [bm, hm, nk]
        cls = jnp.take(blocks, kv[0, 0] // mask.block_kv, axis=-1)
        pred = mask.predicate(b, h, jnp.full_like(kv, r), kv)
        return (cls == FULL) | ((cls == PARTIAL) & pred)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be a BlockMask or a bool array, got dtype {mask.dtype}")
    return mask[..., row, :] if mask.ndim >= 4 else mask


def retrieval_predict(
    task: RetrievalTask, keep: Bool[Array, "b h seq"] | None = None
) -> Int[Array, "batch heads"]:
    """Label decoded from the last query's attention output over the kept keys.

    Args:
        task: the task.
        keep: keys the answering query may see, broadcastable to ``[B, H, L]`` (None: all).
            A row with no kept key outputs zeros (and decodes to the code nearest zero).

    Returns:
        Predicted labels ``[B, H]``.
    """
    qa = task.q[:, :, -1].astype(jnp.float32)
    s = jnp.einsum("bhd,bhkd->bhk", qa, task.k.astype(jnp.float32)) / math.sqrt(qa.shape[-1])
    if keep is not None:
        keep = jnp.broadcast_to(keep, s.shape)
        s = jnp.where(keep, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    out = jnp.einsum("bhk,bhkd->bhd", p, task.v.astype(jnp.float32))
    return jnp.argmax(out @ task.codes.T, axis=-1)


def retrieval_accuracy(task: RetrievalTask, keep: Bool[Array, "b h seq"] | None = None) -> float:
    """Fraction of instances whose label is decoded correctly (see `retrieval_predict`)."""
    return float(jnp.mean(retrieval_predict(task, keep) == task.label))


def causal_density(token_mask: Bool[Array, "*lead seq seq"]) -> float:
    """Kept fraction of the causal pairs ``j <= i`` of a square token mask (all leading dims)."""
    m = np.asarray(token_mask)
    lq = m.shape[-1]
    tril = np.tril(np.ones((lq, lq), dtype=bool))
    lead = int(np.prod(m.shape[:-2])) if m.ndim > 2 else 1
    return float((m & tril).sum() / (tril.sum() * lead))

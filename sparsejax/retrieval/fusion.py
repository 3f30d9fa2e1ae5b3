"""Fusing two ranked result lists (e.g. a sparse and a dense retriever) into one.

Both functions take per-query candidate lists ``(ids, scores)`` as returned by
`sparsejax.retrieval.search` (or a dense ``lax.top_k``), best first, and return the fused top
``k``. A document missing from a list contributes nothing from that list. Duplicate ids inside one
list count once (their first, best, position).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_choice, check_float, check_int, must_be

__all__ = ["convex_fusion", "reciprocal_rank_fusion"]


def _lists(lists, name):
    if not isinstance(lists, list | tuple) or not lists:
        raise TypeError(must_be(name, "a non-empty sequence of arrays [batch, n_j]", lists))
    out = [jnp.asarray(x) for x in lists]
    batch = out[0].shape[0]
    for j, x in enumerate(out):
        if x.ndim != 2 or x.shape[0] != batch:
            raise ValueError(must_be(f"{name}[{j}]", f"an array [{batch}, n]",
                                     f"shape {tuple(x.shape)}", raw=True))
    return out


def _union(ids_list):
    """Concatenated candidates [B, M] and a flag for the first occurrence of each id."""
    ids = jnp.concatenate([i.astype(jnp.int32) for i in ids_list], axis=1)
    m = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]
    earlier = jnp.tril(jnp.ones((m, m), bool), -1)
    first = ~jnp.any(same & earlier[None], axis=2)
    return ids, first


def _first_in_list(ids_all, ids_j):
    """For each candidate: (found in list j, position of its first occurrence there)."""
    hit = ids_all[:, :, None] == ids_j[:, None, :].astype(jnp.int32)
    return jnp.any(hit, axis=2), jnp.argmax(hit, axis=2)


def _top(ids, fused, first, k):
    fused = jnp.where(first, fused, -jnp.inf)
    vals, pos = lax.top_k(fused, k)
    return vals, jnp.take_along_axis(ids, pos, axis=1)


def reciprocal_rank_fusion(
    ids_list: Sequence[Int[Array, "batch _"]], k: int, *, rank_constant: float = 60.0,
) -> tuple[Float[Array, "batch k"], Int[Array, "batch k"]]:
    """Reciprocal-rank fusion: ``score(d) = sum_j 1 / (rank_constant + rank_j(d))``.

    ``rank_j(d)`` is 1 for the first document of list ``j`` (Cormack et al. 2009; the constant 60
    is theirs and Elasticsearch's/OpenSearch's default).

    Args:
        ids_list: sequence of ``[batch, n_j]`` id arrays, each best first.
        k: fused results kept (``<=`` the number of distinct candidates of every query).
        rank_constant: ``>= 0``.

    Returns:
        ``(fused scores [batch, k], ids [batch, k])``, best first; ties by first appearance in
        the concatenated lists.
    """
    ids_list = _lists(ids_list, "ids_list")
    rank_constant = check_float(rank_constant, "rank_constant", minimum=0.0)
    ids, first = _union(ids_list)
    k = check_int(k, "k", minimum=1, maximum=ids.shape[1])
    fused = jnp.zeros(ids.shape, jnp.float32)
    for ids_j in ids_list:
        found, pos = _first_in_list(ids, ids_j)
        fused += jnp.where(found, 1.0 / (rank_constant + 1.0 + pos), 0.0)
    return _top(ids, fused, first, k)


def _normalize(scores: jax.Array, how: str) -> jax.Array:
    scores = scores.astype(jnp.float32)
    if how == "none":
        return scores
    lo = jnp.min(scores, axis=1, keepdims=True)
    hi = jnp.max(scores, axis=1, keepdims=True)
    if how == "minmax":
        return (scores - lo) / jnp.where(hi > lo, hi - lo, 1.0)
    return scores / jnp.where(hi != 0, jnp.abs(hi), 1.0)  # "max"


def convex_fusion(
    ids_a: Int[Array, "batch n"],
    scores_a: Float[Array, "batch n"],
    ids_b: Int[Array, "batch m"],
    scores_b: Float[Array, "batch m"],
    k: int,
    *,
    alpha: float = 0.5,
    normalize: str = "minmax",
) -> tuple[Float[Array, "batch k"], Int[Array, "batch k"]]:
    """Convex combination ``alpha * s_a(d) + (1 - alpha) * s_b(d)`` of normalised scores.

    Each list's scores are normalised per query first: ``"minmax"`` maps them to ``[0, 1]``
    (Bruch et al. 2023's recommended form), ``"max"`` divides by the top score, ``"none"`` keeps
    them. A document missing from a list gets ``0`` from it.

    Args:
        ids_a: first retriever's ``[batch, n]`` ids, best first.
        scores_a: their scores ``[batch, n]``.
        ids_b: second retriever's ``[batch, m]`` ids, best first.
        scores_b: their scores ``[batch, m]``.
        k: fused results kept (``<= n + m``).
        alpha: weight of the first list, in ``[0, 1]``.
        normalize: ``"minmax"``, ``"max"`` or ``"none"``.

    Returns:
        ``(fused scores [batch, k], ids [batch, k])``, best first.
    """
    ids_a, scores_a, ids_b, scores_b = _lists([ids_a, scores_a, ids_b, scores_b], "inputs")
    if ids_a.shape != scores_a.shape or ids_b.shape != scores_b.shape:
        raise ValueError(must_be("scores_a, scores_b", "shaped like ids_a, ids_b",
                                 f"{scores_a.shape} vs {ids_a.shape}, {scores_b.shape} vs "
                                 f"{ids_b.shape}", raw=True))
    alpha = check_float(alpha, "alpha", minimum=0.0, maximum=1.0)
    check_choice(normalize, "normalize", ("minmax", "max", "none"))
    ids, first = _union([ids_a, ids_b])
    k = check_int(k, "k", minimum=1, maximum=ids.shape[1])
    fused = jnp.zeros(ids.shape, jnp.float32)
    for ids_j, s_j, a in ((ids_a, scores_a, alpha), (ids_b, scores_b, 1.0 - alpha)):
        found, pos = _first_in_list(ids, ids_j)
        s = jnp.take_along_axis(_normalize(s_j, normalize), pos, axis=1)
        fused += jnp.where(found, a * s, 0.0)
    return _top(ids, fused, first, k)

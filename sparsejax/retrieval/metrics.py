"""Ranking metrics for one relevant document per query."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_positive_int, must_be

__all__ = ["mrr_at_k", "recall_at_k"]


def _check(ranked, relevant):
    ranked, relevant = jnp.asarray(ranked), jnp.asarray(relevant)
    if ranked.ndim != 2 or relevant.shape != ranked.shape[:1]:
        raise ValueError(must_be("ranked, relevant", "shapes [batch, n] and [batch]",
                                 f"{tuple(ranked.shape)} and {tuple(relevant.shape)}", raw=True))
    return ranked, relevant


def mrr_at_k(ranked: Int[Array, "batch n"], relevant: Int[Array, " batch"],
             k: int = 10) -> Float[Array, ""]:
    """Mean reciprocal rank of the relevant id within the first ``k`` results (0 if absent)."""
    ranked, relevant = _check(ranked, relevant)
    k = check_positive_int(k, "k")
    hit = ranked[:, :k] == relevant[:, None]
    rank = jnp.argmax(hit, axis=1) + 1
    return jnp.mean(jnp.where(jnp.any(hit, axis=1), 1.0 / rank, 0.0))


def recall_at_k(ranked: Int[Array, "batch n"], relevant: Int[Array, " batch"],
                k: int = 100) -> Float[Array, ""]:
    """Fraction of queries whose relevant id is among the first ``k`` results."""
    ranked, relevant = _check(ranked, relevant)
    k = check_positive_int(k, "k")
    return jnp.mean(jnp.any(ranked[:, :k] == relevant[:, None], axis=1).astype(jnp.float32))

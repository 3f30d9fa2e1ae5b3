"""Training objectives of learned sparse retrieval: regularisers and the contrastive loss.

* `flops_loss`: FLOPS, ``sum_v (mean_i |w_iv|)^2`` (Paria et al. 2020), with the l0-masked
  variant (``threshold``: rows with at most that many active terms are left out);
* `l1_loss`: ``mean_i sum_v |w_iv|``;
* `regularizer_weight`: the quadratic warm-up of a regulariser's weight;
* `contrastive_loss`: InfoNCE with in-batch negatives over dot-product scores.

IDF-aware FLOPS (inference-free LSR): the query side is `inference_free_query` (IDF-weighted
tokens, no encoder), the FLOPS term is applied to the *document* vectors only; the IDF enters the
match ``q . d = sum_v idf_v d_v``, so the ranking loss pushes up high-IDF terms harder than the
regulariser pushes them down (see docs/retrieval.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_float, check_float_array, check_int, check_shape, must_be

__all__ = ["contrastive_loss", "flops_loss", "l1_loss", "regularizer_weight"]


def _reps(reps, name="reps") -> jax.Array:
    reps = check_float_array(reps, name)
    if reps.ndim != 2:
        raise ValueError(must_be(name, "an array [batch, vocab]", f"shape {tuple(reps.shape)}",
                                 raw=True))
    return reps


def flops_loss(reps: Float[Array, "batch vocab"], *,
               threshold: int | None = None) -> Float[Array, ""]:
    """FLOPS regulariser ``sum_v (mean_i |w_iv|)^2``: the expected number of multiplications of a
    dot product between two random vectors of the batch, made differentiable.

    With ``threshold`` (the l0-masked FLOPS of sentence-transformers' ``FlopsLoss`` and OpenSearch's
    ``flops_threshold``), a row whose number of non-zeros is ``<= threshold`` is zeroed before the
    mean (the mean still divides by the full batch): vectors already sparse enough are not pushed
    further.

    Args:
        reps: sparse representations ``[batch, vocab]``.
        threshold: optional int ``>= 0``.

    Returns:
        scalar float.
    """
    reps = _reps(reps)
    w = jnp.abs(reps)
    if threshold is not None:
        threshold = check_int(threshold, "threshold", minimum=0)
        keep = jnp.sum(reps != 0, axis=1) > threshold
        w = w * keep[:, None].astype(w.dtype)
    return jnp.sum(jnp.mean(w, axis=0) ** 2)


def l1_loss(reps: Float[Array, "batch vocab"]) -> Float[Array, ""]:
    """L1 regulariser ``mean_i sum_v |w_iv|`` (SparTerm / the LSR framework's ``L1``).

    Args:
        reps: sparse representations ``[batch, vocab]``.

    Returns:
        scalar float.
    """
    return jnp.mean(jnp.sum(jnp.abs(_reps(reps)), axis=1))


def regularizer_weight(step: int | Int[Array, ""], max_weight: float,
                       warmup_steps: int) -> Float[Array, ""]:
    """Quadratic warm-up of a regulariser weight: ``max_weight * min(1, step / warmup_steps)^2``.

    SPLADE's schedule (sentence-transformers' ``SpladeRegularizerWeightSchedulerCallback``,
    ``"quadratic"``): the weight grows from 0 at step 0 to ``max_weight`` at ``warmup_steps``
    and stays there. ``step`` may be traced (inside a jitted train step).

    Args:
        step: the training step (int or int scalar array).
        max_weight: the final weight (``>= 0``).
        warmup_steps: steps to reach it (``>= 1``).

    Returns:
        float32 scalar.
    """
    max_weight = check_float(max_weight, "max_weight", minimum=0.0)
    warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=1)
    ratio = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
    return max_weight * jnp.maximum(ratio, 0.0) ** 2


def contrastive_loss(queries: Float[Array, "batch vocab"], docs: Float[Array, "ndocs vocab"], *,
                     temperature: float = 1.0) -> Float[Array, ""]:
    """InfoNCE with in-batch negatives: query ``i``'s positive is document ``i``; every other
    document of the batch (and any extra hard negatives appended after the first ``batch`` rows of
    ``docs``) is a negative. Scores are dot products divided by ``temperature``.

    ``mean_i [logsumexp_j s_ij - s_ii]`` with ``s = queries @ docs.T / temperature``
    (sentence-transformers' ``SparseMultipleNegativesRankingLoss`` with scale ``1/temperature``).

    Args:
        queries: ``[batch, vocab]`` query vectors.
        docs: ``[ndocs, vocab]`` documents, ``ndocs >= batch``; row ``i < batch`` is query ``i``'s
            positive.
        temperature: ``> 0``.

    Returns:
        scalar float.
    """
    queries, docs = _reps(queries, "queries"), _reps(docs, "docs")
    check_shape(docs, (docs.shape[0], queries.shape[1]), "docs")
    if docs.shape[0] < queries.shape[0]:
        raise ValueError(must_be("docs", f"at least {queries.shape[0]} rows (one positive per "
                                 "query)", f"shape {tuple(docs.shape)}", raw=True))
    temperature = check_float(temperature, "temperature", minimum=0.0, exclusive_minimum=True)
    s = queries @ docs.T / temperature
    pos = jnp.diagonal(s[:, : queries.shape[0]])
    return jnp.mean(jax.nn.logsumexp(s, axis=1) - pos)

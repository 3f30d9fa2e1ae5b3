"""Sparse representations over the vocabulary: SPLADE pooling, term-weight heads, IDF queries.

Every function maps token-level arrays to one ``[batch, vocab]`` vector per text; the vectors are
scored against each other by a dot product (`sparsejax.retrieval.search` does it over an inverted
index).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import (
    check_choice,
    check_float_array,
    check_int,
    check_positive_int,
    check_shape,
    must_be,
)

__all__ = [
    "idf",
    "inference_free_query",
    "splade_pool",
    "term_weight_head",
    "term_weight_head_init",
    "term_weight_pool",
    "tied_mlm_logits",
]

POOLINGS = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")


def _check_mask(attention_mask, shape, name="attention_mask") -> jax.Array:
    attention_mask = jnp.asarray(attention_mask)
    check_shape(attention_mask, shape, name)
    return attention_mask


def _check_ids(token_ids, name="token_ids") -> jax.Array:
    token_ids = jnp.asarray(token_ids)
    if not jnp.issubdtype(token_ids.dtype, jnp.integer) or token_ids.ndim != 2:
        raise TypeError(must_be(name, "an int array [batch, length]",
                                f"dtype {token_ids.dtype}, shape {tuple(token_ids.shape)}",
                                raw=True))
    return token_ids


def splade_pool(
    logits: Float[Array, "batch length vocab"],
    attention_mask: Int[Array, "batch length"] | Bool[Array, "batch length"],
    *,
    pooling: str = "max",
    activation: str = "relu",
) -> Float[Array, "batch vocab"]:
    """SPLADE pooling of MLM logits: ``w_v = pool_t act(logit_tv)`` over the unmasked tokens.

    ``activation="relu"`` is SPLADE's ``log(1 + relu(x))``; ``"log1p_relu"`` applies ``log1p`` once
    more, ``log(1 + log(1 + relu(x)))`` (the l0-inspired variant of OpenSearch's inference-free
    models). The names and semantics are sentence-transformers' ``SpladePooling``
    ``activation_function``. Masked tokens contribute ``0`` (their logit is zeroed before the
    activation, as in the reference), so ``max`` of a row with no real token is ``0``.

    Args:
        logits: MLM logits ``[batch, length, vocab]``.
        attention_mask: 1/True for real tokens ``[batch, length]``.
        pooling: ``"max"`` (SPLADE v2 and later) or ``"sum"`` (SPLADE v1).
        activation: ``"relu"`` or ``"log1p_relu"`` (see above).

    Returns:
        ``[batch, vocab]`` non-negative term weights, dtype of ``logits``.
    """
    logits = check_float_array(logits, "logits")
    if logits.ndim != 3:
        raise ValueError(must_be("logits", "an array [batch, length, vocab]",
                                 f"shape {tuple(logits.shape)}", raw=True))
    check_choice(pooling, "pooling", POOLINGS)
    check_choice(activation, "activation", ACTIVATIONS)
    mask = _check_mask(attention_mask, logits.shape[:2])
    w = jnp.log1p(jax.nn.relu(logits * mask[..., None].astype(logits.dtype)))
    if activation == "log1p_relu":
        w = jnp.log1p(w)
    return jnp.max(w, axis=1) if pooling == "max" else jnp.sum(w, axis=1)


def tied_mlm_logits(
    hidden: Float[Array, "batch length hidden"],
    word_embeddings: Float[Array, "vocab hidden"],
    bias: Float[Array, " vocab"] | None = None,
) -> Float[Array, "batch length vocab"]:
    """Vocabulary logits of an encoder with a tied-embedding head: ``hidden @ E^T (+ bias)``.

    The expansion head for an encoder that has no MLM head (all-MiniLM-L6-v2): feed the result to
    `splade_pool`.

    Args:
        hidden: last hidden states ``[batch, length, hidden]``.
        word_embeddings: the input embedding table ``[vocab, hidden]``.
        bias: optional per-term bias ``[vocab]``.

    Returns:
        ``[batch, length, vocab]`` logits.
    """
    hidden = check_float_array(hidden, "hidden", min_ndim=1)
    word_embeddings = check_float_array(word_embeddings, "word_embeddings")
    if word_embeddings.ndim != 2 or word_embeddings.shape[1] != hidden.shape[-1]:
        raise ValueError(must_be("word_embeddings", f"an array [vocab, {hidden.shape[-1]}]",
                                 f"shape {tuple(word_embeddings.shape)}", raw=True))
    out = hidden @ word_embeddings.T
    return out if bias is None else out + bias


def term_weight_pool(
    weights: Float[Array, "batch length"],
    token_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"] | Bool[Array, "batch length"],
    vocab_size: int,
    *,
    pooling: str = "max",
) -> Float[Array, "batch vocab"]:
    """Scatter one weight per input token onto its vocabulary id (uniCOIL / the LSR framework's
    "MLP" encoder: no expansion, only the text's own terms get a weight).

    ``weights`` is the ``d -> 1`` head's output, e.g. ``relu(hidden @ kernel + bias)[..., 0]``.
    A term that occurs several times gets the ``max`` (uniCOIL) or the ``sum`` of its weights;
    masked tokens contribute nothing.

    Args:
        weights: per-token weights ``[batch, length]`` (non-negative for a valid index).
        token_ids: the input token ids ``[batch, length]``, in ``[0, vocab_size)``.
        attention_mask: 1/True for real tokens ``[batch, length]``.
        vocab_size: number of terms ``V``.
        pooling: ``"max"`` or ``"sum"``.

    Returns:
        ``[batch, vocab_size]`` term weights (``0`` for absent terms).
    """
    weights = check_float_array(weights, "weights")
    token_ids = _check_ids(token_ids)
    check_shape(weights, token_ids.shape, "weights")
    mask = _check_mask(attention_mask, token_ids.shape).astype(bool)
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    check_choice(pooling, "pooling", POOLINGS)
    rows = jnp.arange(token_ids.shape[0])[:, None]
    zero = jnp.zeros((token_ids.shape[0], vocab_size), weights.dtype)
    if pooling == "sum":
        return zero.at[rows, token_ids].add(jnp.where(mask, weights, 0), mode="drop")
    low = jnp.finfo(weights.dtype).min
    out = jnp.full_like(zero, low).at[rows, token_ids].max(jnp.where(mask, weights, low),
                                                            mode="drop")
    return jnp.where(out == low, 0, out)


def term_weight_head_init(hidden: int) -> dict:
    """Parameters of the ``d -> 1`` term-weight head: ``kernel`` zeros ``[hidden, 1]``, ``bias``
    ones ``[1]``, so an untrained head gives every input term weight 1 (a binary bag of words)."""
    hidden = check_positive_int(hidden, "hidden")
    return {"kernel": jnp.zeros((hidden, 1)), "bias": jnp.ones((1,))}


def term_weight_head(
    params: dict,
    hidden: Float[Array, "batch length hidden"],
    token_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"] | Bool[Array, "batch length"],
    vocab_size: int,
    *,
    pooling: str = "max",
) -> Float[Array, "batch vocab"]:
    """uniCOIL head: ``relu(hidden @ kernel + bias)`` per token, pooled by `term_weight_pool`.

    Args:
        params: ``{"kernel": [hidden, 1], "bias": [1]}`` (`term_weight_head_init`).
        hidden: encoder states ``[batch, length, hidden]``.
        token_ids: input ids ``[batch, length]``.
        attention_mask: tokens that get a weight (mask out ``[CLS]``/``[SEP]`` here if wanted).
        vocab_size: number of terms.
        pooling: ``"max"`` or ``"sum"`` over repeats of a term.

    Returns:
        ``[batch, vocab_size]`` non-negative term weights.
    """
    hidden = check_float_array(hidden, "hidden", min_ndim=1)
    w = jax.nn.relu(hidden @ params["kernel"] + params["bias"])[..., 0]
    return term_weight_pool(w, token_ids, attention_mask, vocab_size, pooling=pooling)


def idf(
    doc_term_ids: Int[Array, "docs length"],
    vocab_size: int,
    mask: Int[Array, "docs length"] | Bool[Array, "docs length"] | None = None,
) -> Float[Array, " vocab"]:
    """BM25 inverse document frequency of every term: ``log(1 + (N - df + 0.5) / (df + 0.5))``.

    ``df_v`` counts the documents that contain term ``v`` at least once (repeats within a document
    count once); ``N`` is the number of documents. This is the IDF of OpenSearch's inference-free
    sparse models and of BM25 (Lucene variant, as in ``bm25s``).

    Args:
        doc_term_ids: token ids of each document, padded ``[docs, length]``.
        vocab_size: number of terms ``V``; ids must lie in ``[0, V)``.
        mask: 1/True for real tokens (default: all real).

    Returns:
        float32 ``[vocab_size]``; a term in no document gets ``log(1 + (N + 0.5) / 0.5)``.
    """
    doc_term_ids = _check_ids(doc_term_ids, "doc_term_ids")
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    if mask is None:
        mask = jnp.ones(doc_term_ids.shape, bool)
    mask = _check_mask(mask, doc_term_ids.shape, "mask").astype(bool)
    return _idf(doc_term_ids, mask, vocab_size)


@functools.partial(jax.jit, static_argnames="vocab_size")
def _idf(doc_term_ids: jax.Array, mask: jax.Array, vocab_size: int) -> jax.Array:
    """`idf` after its checks, one compiled program (eagerly: one per op)."""
    ids = jnp.where(mask, doc_term_ids, vocab_size)
    ids = jnp.sort(ids, axis=1)
    first = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    ids = jnp.where(first, ids, vocab_size)
    df = jnp.zeros(vocab_size + 1, jnp.float32).at[ids.reshape(-1)].add(1.0)[:vocab_size]
    n = jnp.float32(doc_term_ids.shape[0])
    return jnp.log1p((n - df + 0.5) / (df + 0.5))


def inference_free_query(
    token_ids: Int[Array, "batch length"],
    attention_mask: Int[Array, "batch length"] | Bool[Array, "batch length"],
    idf: Float[Array, " vocab"],
    *,
    special_ids: Sequence[int] = (),
) -> Float[Array, "batch vocab"]:
    """Inference-free query vectors: each query term weighted by its IDF, no encoder at query time.

    ``q_v = idf_v`` if term ``v`` occurs among the unmasked tokens (once or more) and is not a
    special token, else ``0`` (OpenSearch's inference-free encoding: a binary bag of tokens times
    ``relu(idf)``).

    Args:
        token_ids: query token ids ``[batch, length]``.
        attention_mask: 1/True for real tokens ``[batch, length]``.
        idf: per-term weights ``[vocab]`` (`idf`, or learned).
        special_ids: ids that never weigh (``[CLS]``, ``[SEP]``, ``[PAD]`` ...).

    Returns:
        ``[batch, vocab]`` query vectors, dtype of ``idf``.
    """
    token_ids = _check_ids(token_ids)
    mask = _check_mask(attention_mask, token_ids.shape).astype(bool)
    idf_ = check_float_array(idf, "idf")
    if idf_.ndim != 1:
        raise ValueError(must_be("idf", "an array [vocab]", f"shape {tuple(idf_.shape)}",
                                 raw=True))
    vocab = idf_.shape[0]
    special = tuple(check_int(s, "special_ids", minimum=0, maximum=vocab - 1)
                    for s in special_ids)
    return _inference_free_query(token_ids, mask, idf_, special)


@functools.partial(jax.jit, static_argnames="special")
def _inference_free_query(token_ids: jax.Array, mask: jax.Array, idf_: jax.Array,
                          special: tuple[int, ...]) -> jax.Array:
    """`inference_free_query` after its checks, one compiled program."""
    vocab = idf_.shape[0]
    rows = jnp.arange(token_ids.shape[0])[:, None]
    bag = jnp.zeros((token_ids.shape[0], vocab), idf_.dtype)
    bag = bag.at[rows, jnp.where(mask, token_ids, vocab)].set(1, mode="drop")
    if special:
        bag = bag.at[:, jnp.asarray(special)].set(0)
    return bag * jax.nn.relu(idf_)

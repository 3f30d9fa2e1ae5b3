"""CoreMatching: core neurons and core tokens for joint neuron and token pruning.

* Core neurons (CoreInfer's definition, which CoreMatching builds on): for every token its
  *token-wise core neurons* are its ``token_top`` fraction of largest positive activations; the
  *core neurons* of a sequence are those that are token-wise core in at least a ``frequency``
  fraction of its tokens (`core_neurons`).
* Core tokens (wangqinsi1/2025-ICML-CoreMatching ``modeling_llama.py``, "elbow method"): each
  candidate token is scored by the overlap of its active neurons (``activation > 0``) with a
  reference set (``binary @ binary.T`` against a reference token in the reference code, or the
  core neurons); the scores are sorted in decreasing order, the elbow is the point furthest from
  the line joining the first and the last sorted score, and tokens scoring strictly above the
  elbow value are kept (`core_tokens`, `elbow_value`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_bool_array, check_float, check_float_array, must_be

__all__ = ["core_neurons", "core_tokens", "elbow_value"]


def core_neurons(
    acts: Float[Array, "tokens f"], token_top: float = 0.4, frequency: float = 0.8
) -> Bool[Array, " f"]:
    """Neurons that are among a token's top-``token_top`` positive activations in at least
    ``frequency`` of the tokens.

    Args:
        acts: intermediate activations ``[tokens, f]``.
        token_top: fraction of neurons per token that are token-wise core, in ``[0, 1]``.
        frequency: fraction of tokens in which a core neuron must be token-wise core.

    Returns:
        bool ``[f]``.
    """
    acts = check_float_array(acts, "acts")
    if acts.ndim != 2:
        raise ValueError(must_be("acts", "a 2-D array [tokens, f]", f"shape {tuple(acts.shape)}",
                                 raw=True))
    token_top = check_float(token_top, "token_top", minimum=0.0, maximum=1.0)
    frequency = check_float(frequency, "frequency", minimum=0.0, maximum=1.0)
    return _core_neurons(acts, int(acts.shape[1] * token_top), frequency)


@functools.partial(jax.jit, static_argnums=1)
def _core_neurons(acts: Array, k: int, frequency: float) -> Array:
    order = jnp.argsort(-acts, axis=1, stable=True)[:, :k]
    top = jnp.zeros(acts.shape, bool).at[jnp.arange(acts.shape[0])[:, None], order].set(True)
    top = top & (acts > 0)
    return jnp.mean(top, axis=0) >= frequency


def elbow_value(scores: Float[Array, " n"]) -> float:
    """The reference code's elbow: sort ``scores`` decreasingly, return the sorted value with the
    largest distance to the line from the first to the last sorted point."""
    data = np.sort(np.asarray(scores, np.float64))[::-1]
    x = np.arange(len(data))
    start = np.array([0.0, data[0]])
    end = np.array([len(data) - 1.0, data[-1]])
    line = end - start
    norm = np.linalg.norm(line)
    if norm == 0:
        return float(data[0])
    line = line / norm
    pts = np.vstack((x, data)).T - start
    proj = pts @ line
    dist = np.linalg.norm(pts - np.outer(proj, line), axis=1)
    return float(data[int(np.argmax(dist))])


def core_tokens(
    acts: Float[Array, "tokens f"], reference: Bool[Array, " f"]
) -> tuple[Bool[Array, " tokens"], Float[Array, " tokens"]]:
    """Tokens whose active neurons overlap ``reference`` most, cut at the elbow.

    Args:
        acts: intermediate activations of the candidate tokens ``[tokens, f]``.
        reference: bool ``[f]``: the core neurons (`core_neurons`) or a reference token's
            ``activation > 0`` (the reference code uses a text token's).

    Returns:
        ``(keep, scores)``: bool ``[tokens]`` (score strictly above the elbow value) and the
        overlap counts ``[tokens]``.
    """
    acts = check_float_array(acts, "acts")
    reference = check_bool_array(reference, "reference")
    if acts.ndim != 2 or reference.shape != (acts.shape[1],):
        raise ValueError(must_be("acts and reference", "shapes [tokens, f] and [f]",
                                 f"{tuple(acts.shape)} and {tuple(reference.shape)}", raw=True))
    scores = (acts > 0).astype(jnp.float32) @ reference.astype(jnp.float32)
    return scores > elbow_value(scores), scores

"""Pruning sparse vectors after encoding: keep the ``k`` largest terms, or those above a fraction
of the vector's maximum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax import masks
from sparsejax._checks import check_float, check_float_array, check_int, must_be

__all__ = ["keep_above_fraction", "max_active_dims"]


def _rows(reps) -> jax.Array:
    reps = check_float_array(reps, "reps")
    if reps.ndim != 2:
        raise ValueError(must_be("reps", "an array [batch, vocab]", f"shape {tuple(reps.shape)}",
                                 raw=True))
    return reps


def max_active_dims(reps: Float[Array, "batch vocab"], k: int) -> Float[Array, "batch vocab"]:
    """Keep the ``k`` entries of largest ``|w|`` in each row, zero the rest.

    sentence-transformers' ``select_max_active_dims``. Ties are kept by lower index
    (`sparsejax.masks.topk`), so each row keeps exactly ``min(k, vocab)`` entries (some may be 0).

    Args:
        reps: ``[batch, vocab]`` vectors.
        k: entries kept per row, ``>= 0`` (``k >= vocab`` keeps everything).

    Returns:
        ``[batch, vocab]``, same dtype.
    """
    reps = _rows(reps)
    k = min(check_int(k, "k", minimum=0), reps.shape[1])
    keep = jax.vmap(masks.topk, in_axes=(0, None))(jnp.abs(reps), k)
    return jnp.where(keep, reps, jnp.zeros((), reps.dtype))


def keep_above_fraction(reps: Float[Array, "batch vocab"],
                        fraction: float) -> Float[Array, "batch vocab"]:
    """Keep the entries strictly above ``fraction`` times their row's maximum, zero the rest.

    OpenSearch's ``prune_ratio`` rule (``w * (w > fraction * max_v w)``) for non-negative vectors;
    for signed vectors the rule is applied to ``|w|``. ``fraction = 0`` keeps every non-zero.

    Args:
        reps: ``[batch, vocab]`` vectors.
        fraction: in ``[0, 1]``.

    Returns:
        ``[batch, vocab]``, same dtype.
    """
    reps = _rows(reps)
    fraction = check_float(fraction, "fraction", minimum=0.0, maximum=1.0)
    a = jnp.abs(reps)
    keep = a > fraction * jnp.max(a, axis=1, keepdims=True)
    return jnp.where(keep, reps, jnp.zeros((), reps.dtype))

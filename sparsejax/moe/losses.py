"""Auxiliary router losses (flaxformer ``moe/routing.py`` formulas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sparsejax._checks import is_concrete, must_be
from sparsejax.moe.routing import _check_logits

__all__ = ["load_balancing_loss", "router_z_loss"]


def load_balancing_loss(logits: Float[Array, "T E"],
                        expert_index: Int[Array, "T k"]) -> Float[Array, ""]:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    ``f_i`` is the fraction of tokens that chose expert ``i`` among their ``k`` choices (before
    any capacity drop) and ``P_i = mean_t softmax(logits)[t, i]``. Since ``sum_i f_i = k``, it
    equals ``k`` for a balanced router with uniform probabilities (1 for Switch top-1) and grows
    to ``E`` when every token puts all its probability on one expert it chose; only ``P`` carries
    a gradient.

    Args:
        logits: ``[T, E]`` router logits.
        expert_index: ``int [T, k]`` chosen experts (e.g. ``Routing.expert_index`` of
            `top_k_routing`).

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: logits not 2-D, ``expert_index`` not an integer ``[T, k]`` with the logits'
            ``T``, an index outside ``[0, E)`` (checked when ``expert_index`` is concrete).
    """
    logits = _check_logits(logits)
    expert_index = jnp.asarray(expert_index)
    t, e = logits.shape
    if (expert_index.ndim != 2 or expert_index.shape[0] != t
            or not jnp.issubdtype(expert_index.dtype, jnp.integer)):
        raise ValueError(must_be("expert_index", f"an integer array of shape [T, k] with "
                                 f"T = {t}", expert_index))
    if is_concrete(expert_index) and expert_index.size:
        host = np.asarray(expert_index)  # checked on the host: no program compiled
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= e:
            raise ValueError(must_be("expert_index", f"in [0, {e}) (the logits' expert axis)",
                                     f"values in [{lo}, {hi}]", raw=True))
    # not jitted as one program: XLA's fused sums move the loss by an ulp against the eager value
    return _balance(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), expert_index)


def _balance(probs: Array, expert_index: Array, mask: Array | None = None) -> Array:
    """``E * sum_i f_i P_i`` from router probabilities ``[T, E]`` (or any gate on the simplex),
    averaged over the tokens with ``mask`` True (all when ``None``)."""
    e = probs.shape[1]
    chose = jnp.max(jax.nn.one_hot(expert_index, e, dtype=jnp.float32), axis=1)  # [T, E]
    w = jnp.ones(probs.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    f = jnp.sum(chose * w[:, None], axis=0) / n
    p = jnp.sum(probs.astype(jnp.float32) * w[:, None], axis=0) / n
    return e * jnp.sum(f * p)


def router_z_loss(logits: Float[Array, "T E"]) -> Float[Array, ""]:
    """Router z-loss (ST-MoE): ``mean_t logsumexp(logits[t])**2``.

    Args:
        logits: ``[T, E]`` router logits.

    Returns:
        Scalar float32 loss.
    """
    return _z_loss(_check_logits(logits))


@jax.jit
def _z_loss(logits: Array) -> Array:
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(log_z ** 2)

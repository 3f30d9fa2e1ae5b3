"""Auxiliary router losses (flaxformer ``moe/routing.py`` formulas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

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
        ValueError: logits not 2-D, ``expert_index`` not ``[T, k]`` with the logits' ``T``.
    """
    logits = _check_logits(logits)
    expert_index = jnp.asarray(expert_index)
    if expert_index.ndim != 2 or expert_index.shape[0] != logits.shape[0]:
        raise ValueError(f"`expert_index` must have shape [T, k] with T = {logits.shape[0]}; "
                         f"got {expert_index.shape}.")
    return _balance(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), expert_index)


def _balance(probs: Array, expert_index: Array) -> Array:
    """``E * sum_i f_i P_i`` from router probabilities ``[T, E]`` (or any gate on the simplex)."""
    e = probs.shape[1]
    chose = jnp.max(jax.nn.one_hot(expert_index, e, dtype=jnp.float32), axis=1)  # [T, E]
    return e * jnp.sum(jnp.mean(chose, axis=0) * jnp.mean(probs.astype(jnp.float32), axis=0))


def router_z_loss(logits: Float[Array, "T E"]) -> Float[Array, ""]:
    """Router z-loss (ST-MoE): ``mean_t logsumexp(logits[t])**2``.

    Args:
        logits: ``[T, E]`` router logits.

    Returns:
        Scalar float32 loss.
    """
    logits = _check_logits(logits)
    log_z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(log_z ** 2)

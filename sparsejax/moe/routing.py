"""Routers: router logits -> a routing decision (`Routing`).

Every router returns the same token-slot view, so the dispatch implementations of
`sparsejax.moe.moe_ffn` consume any of them:

* `top_k_routing`: each token picks its ``k`` most probable experts (Switch ``k=1``,
  GShard/Mixtral ``k=2``), with an expert capacity (later tokens beyond it are dropped, as in
  flaxformer's ``TokensChooseMaskedRouter``) or dropless;
* `expert_choice_routing`: each expert picks its ``capacity`` most probable tokens
  (Zhou et al. 2022); a token may be picked by zero or several experts.

Priority for capacity (flaxformer): all first choices of all tokens, in token order, come before
all second choices, and so on; an expert keeps the first ``capacity`` assignments it receives.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_bool, check_float_array, check_int, check_positive_float

__all__ = [
    "Routing",
    "expert_capacity",
    "expert_choice_routing",
    "top_k_routing",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Routing:
    """A routing decision for ``T`` tokens, ``k`` slots per token and ``E`` experts.

    Slot ``(t, j)`` sends token ``t`` to expert ``expert_index[t, j]`` at row
    ``position[t, j]`` of that expert's buffer; it is computed only when ``kept[t, j]``, and the
    expert's output is scaled by ``combine_weights[t, j]`` (zero where not kept) and summed over
    ``j``. Kept positions of one expert are ``0, 1, ..., load - 1`` (no gaps).

    Attributes:
        expert_index: ``int32 [T, k]`` expert of each slot.
        combine_weights: ``float [T, k]`` gate of each slot, ``0`` where dropped.
        position: ``int32 [T, k]`` row in the expert's buffer (arrival order).
        kept: ``bool [T, k]`` whether the slot is computed (within capacity / chosen).
        num_experts: ``E`` (static).
        capacity: static bound on the kept slots of one expert (buffer rows per expert).
    """

    expert_index: Int[Array, "T k"]
    combine_weights: Float[Array, "T k"]
    position: Int[Array, "T k"]
    kept: Bool[Array, "T k"]
    num_experts: int = dataclasses.field(metadata=dict(static=True))
    capacity: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_tokens(self) -> int:
        """``T``."""
        return self.expert_index.shape[0]

    @property
    def slots(self) -> int:
        """``k``: slots per token."""
        return self.expert_index.shape[1]

    @property
    def max_kept(self) -> int:
        """Static bound on the kept slots of all experts: ``min(T * k, E * capacity)``."""
        return min(self.num_tokens * self.slots, self.num_experts * self.capacity)

    def expert_load(self) -> Int[Array, " E"]:
        """Kept slots per expert (tokens each expert computes)."""
        return jnp.zeros(self.num_experts, jnp.int32).at[self.expert_index.reshape(-1)].add(
            self.kept.reshape(-1).astype(jnp.int32))

    def dropped_fraction(self) -> Float[Array, ""]:
        """Fraction of slots not computed (capacity overflow for `top_k_routing`; ``0`` when
        dropless). For `expert_choice_routing` use `unrouted_fraction`."""
        return jnp.mean((~self.kept).astype(jnp.float32))

    def unrouted_fraction(self) -> Float[Array, ""]:
        """Fraction of tokens that no expert computes (they only pass the residual path)."""
        return jnp.mean((~jnp.any(self.kept, axis=1)).astype(jnp.float32))

    def gates(self) -> Float[Array, "T E"]:
        """The dense ``[T, E]`` combine matrix (sum of the slot weights per expert)."""
        t = jnp.arange(self.num_tokens)[:, None]
        return jnp.zeros((self.num_tokens, self.num_experts), self.combine_weights.dtype).at[
            t, self.expert_index].add(self.combine_weights)


def _check_logits(logits: Any, name: str = "logits") -> Array:
    logits = check_float_array(logits, name)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"`{name}` must be a 2-D array [tokens, experts]; got shape "
                         f"{logits.shape}.")
    return logits


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float,
                    min_capacity: int = 1) -> int:
    """Rows per expert buffer: ``ceil(capacity_factor * T * k / E)``, at least ``min_capacity``
    and at most ``T`` (the MaxText formula).

    Raises:
        ValueError: ``capacity_factor <= 0`` or non-positive counts.
    """
    num_tokens = check_int(num_tokens, "num_tokens", minimum=1)
    num_experts = check_int(num_experts, "num_experts", minimum=1)
    k = check_int(k, "k", minimum=1)
    min_capacity = check_int(min_capacity, "min_capacity", minimum=1)
    cf = check_positive_float(capacity_factor, "capacity_factor")
    cap = math.ceil(cf * num_tokens * k / num_experts - 1e-9)
    return int(min(num_tokens, max(min_capacity, cap)))


def _slot_positions(expert_index: Array, num_experts: int) -> Array:
    """Arrival order per expert with slot-major priority: ``[T, k]`` int32."""
    onehot = jax.nn.one_hot(expert_index.T, num_experts, dtype=jnp.int32)  # [k, T, E]
    k, t, e = onehot.shape
    flat = onehot.reshape(k * t, e)
    pos = jnp.sum((jnp.cumsum(flat, axis=0) - 1) * flat, axis=1)  # [k*T]
    return pos.reshape(k, t).T.astype(jnp.int32)


def top_k_routing(
    logits: Float[Array, "T E"],
    k: int,
    *,
    capacity_factor: float | None = None,
    renormalize: bool = True,
    min_capacity: int = 1,
) -> Routing:
    """Token-choice top-k softmax routing (Switch ``k=1``, GShard/Mixtral ``k=2``).

    ``probs = softmax(logits)``; each token takes its ``k`` largest probabilities (ties: the lower
    expert index); the combine weights are those probabilities, divided by their sum when
    ``renormalize`` (Mixtral), as-is otherwise (Switch/GShard). With a ``capacity_factor``, each
    expert keeps the first ``expert_capacity(T, E, k, capacity_factor)`` assignments in priority
    order (all first choices before all second choices; within a choice, token order) and drops
    the rest (their weight becomes 0; the layer's residual path carries those tokens).
    ``capacity_factor=None`` is dropless (capacity ``T``).

    Args:
        logits: ``[T, E]`` router logits.
        k: experts per token, ``1 <= k <= E``.
        capacity_factor: ``> 0``, or ``None`` for dropless.
        renormalize: divide the ``k`` weights by their sum.
        min_capacity: lower bound on the capacity.

    Returns:
        The `Routing` (``k`` slots per token).

    Raises:
        ValueError: ``k`` outside ``[1, E]``, ``capacity_factor <= 0``, logits not 2-D.
        TypeError: non-float logits, non-int ``k``.
    """
    logits = _check_logits(logits)
    t, e = logits.shape
    k = check_int(k, "k", minimum=1, maximum=e)  # at most the number of experts
    if capacity_factor is None:
        capacity = t
    else:
        capacity = expert_capacity(t, e, k, capacity_factor, min_capacity)
    return _top_k_routing(logits, k, capacity, check_bool(renormalize, "renormalize"))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _top_k_routing(logits: Array, k: int, capacity: int, renormalize: bool) -> Routing:
    e = logits.shape[1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, index = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return _assign(index, weights.astype(logits.dtype), e, capacity)


def _assign(index: Array, weights: Array, num_experts: int, capacity: int) -> Routing:
    """A `Routing` from token choices ``index [T, k]`` and their weights: positions in priority
    order, slots at or beyond ``capacity`` dropped."""
    index = index.astype(jnp.int32)
    position = _slot_positions(index, num_experts)
    kept = position < capacity
    weights = jnp.where(kept, weights, jnp.zeros((), weights.dtype))
    return Routing(index, weights, position, kept, num_experts, capacity)


def expert_choice_routing(
    logits: Float[Array, "T E"],
    capacity_factor: float = 1.0,
    *,
    min_capacity: int = 1,
) -> Routing:
    """Expert-choice routing (Zhou et al. 2022): each expert takes its top tokens.

    ``probs = softmax(logits)`` over experts; expert ``e`` picks the
    ``C = expert_capacity(T, E, 1, capacity_factor)`` tokens with the largest ``probs[:, e]``
    (ties: the lower token index) and weights them by that probability. The result has ``E``
    slots per token (slot ``e`` is expert ``e``, kept when ``e`` picked the token); ``position``
    is the token's rank in the expert's choice.

    Args:
        logits: ``[T, E]`` router logits.
        capacity_factor: tokens per expert relative to ``T / E``; ``> 0``.
        min_capacity: lower bound on ``C``.

    Returns:
        The `Routing` (``E`` slots per token, ``capacity = C``).

    Raises:
        ValueError: ``capacity_factor <= 0``, logits not 2-D.
    """
    logits = _check_logits(logits)
    t, e = logits.shape
    capacity = expert_capacity(t, e, 1, capacity_factor, min_capacity)
    return _expert_choice(logits, capacity)


@functools.partial(jax.jit, static_argnums=(1,))
def _expert_choice(logits: Array, capacity: int) -> Routing:
    t, e = logits.shape
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    _, token = jax.lax.top_k(probs.T, capacity)  # [E, C] tokens each expert picks
    experts = jnp.broadcast_to(jnp.arange(e)[:, None], token.shape)
    rank = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32)[None, :], token.shape)
    kept = jnp.zeros((t, e), bool).at[token, experts].set(True)
    position = jnp.full((t, e), capacity, jnp.int32).at[token, experts].set(rank)
    weights = jnp.where(kept, probs, 0.0).astype(logits.dtype)
    index = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32)[None, :], (t, e))
    return Routing(index, weights, position, kept, e, capacity)

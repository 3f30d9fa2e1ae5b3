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

from sparsejax._checks import (
    check_bool_array,
    check_choice,
    check_float,
    check_float_array,
    check_int,
    check_positive_float,
    must_be,
)

__all__ = [
    "CAPACITY_FORMULAS",
    "PRIORITIES",
    "RENORMALIZE",
    "SCORES",
    "Routing",
    "expert_capacity",
    "expert_choice_routing",
    "jitter",
    "router_scores",
    "top_k_routing",
    "update_expert_bias",
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
        return _expert_load(self)

    def dropped_fraction(self) -> Float[Array, ""]:
        """Fraction of slots not computed (capacity overflow for `top_k_routing`; ``0`` when
        dropless). For `expert_choice_routing` use `unrouted_fraction`."""
        return _dropped_fraction(self)

    def unrouted_fraction(self) -> Float[Array, ""]:
        """Fraction of tokens that no expert computes (they only pass the residual path)."""
        return _unrouted_fraction(self)

    def gates(self) -> Float[Array, "T E"]:
        """The dense ``[T, E]`` combine matrix (sum of the slot weights per expert)."""
        return _gates(self)


# The statistics of a `Routing`, one jitted program each (an eager call compiles once per shape
# instead of once per op; under the caller's jit they inline).


@jax.jit
def _expert_load(r: Routing) -> Array:
    return jnp.zeros(r.num_experts, jnp.int32).at[r.expert_index.reshape(-1)].add(
        r.kept.reshape(-1).astype(jnp.int32))


@jax.jit
def _dropped_fraction(r: Routing) -> Array:
    return jnp.mean((~r.kept).astype(jnp.float32))


@jax.jit
def _unrouted_fraction(r: Routing) -> Array:
    return jnp.mean((~jnp.any(r.kept, axis=1)).astype(jnp.float32))


@jax.jit
def _gates(r: Routing) -> Array:
    t = jnp.arange(r.num_tokens)[:, None]
    return jnp.zeros((r.num_tokens, r.num_experts), r.combine_weights.dtype).at[
        t, r.expert_index].add(r.combine_weights)


def _check_logits(logits: Any, name: str = "logits") -> Array:
    logits = check_float_array(logits, name)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"`{name}` must be a 2-D array [tokens, experts]; got shape "
                         f"{logits.shape}.")
    return logits


CAPACITY_FORMULAS = ("ceil", "maxtext", "flaxformer")
"""Accepted ``formula=`` values of `expert_capacity`."""

RENORMALIZE = (False, True, "after_drops")
"""Accepted ``renormalize=`` values of `top_k_routing`."""

SCORES = ("softmax", "sigmoid")
"""Accepted ``score=`` values of `top_k_routing`."""

PRIORITIES = ("token", "batch")
"""Accepted ``priority=`` values of `top_k_routing`."""


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float,
                    min_capacity: int = 1, *, formula: str = "ceil") -> int:
    """Rows per expert buffer for ``T`` tokens, ``E`` experts and ``k`` choices per token.

    ``formula`` (port a configuration with the formula of the code it comes from):

    * ``"ceil"`` (sparsejax's default): ``min(T, max(min_capacity, ceil(cf * T * k / E)))``;
      never more rows than tokens.
    * ``"maxtext"`` (MaxText ``layers/moe.py``): ``int(max(ceil(T * k / E) * cf, cf))``, then at
      least ``min_capacity``. It rounds ``T * k / E`` up *before* scaling and truncates after,
      so it can differ from ``"ceil"`` (``T=10, k=1, E=4, cf=1.25``: ``"maxtext"`` 3,
      ``"ceil"`` 4, ``"flaxformer"`` 3); it is not capped at ``T``.
    * ``"flaxformer"`` (flaxformer ``moe_layers.py``): ``max(min_capacity, round(cf * T / E))``
      with Python's ``round`` (ties to even) and *without* ``k``; not capped at ``T``.

    Args:
        num_tokens: ``T >= 1`` (per routing group).
        num_experts: ``E >= 1``.
        k: choices per token ``>= 1`` (unused by ``"flaxformer"``).
        capacity_factor: ``cf > 0``.
        min_capacity: lower bound ``>= 1``.
        formula: one of `CAPACITY_FORMULAS`.

    Returns:
        The capacity, a Python int ``>= min_capacity``.

    Raises:
        ValueError: ``capacity_factor <= 0``, non-positive counts, an unknown formula.
    """
    num_tokens = check_int(num_tokens, "num_tokens", minimum=1)
    num_experts = check_int(num_experts, "num_experts", minimum=1)
    k = check_int(k, "k", minimum=1)
    min_capacity = check_int(min_capacity, "min_capacity", minimum=1)
    cf = check_positive_float(capacity_factor, "capacity_factor")
    check_choice(formula, "formula", CAPACITY_FORMULAS)
    if formula == "maxtext":
        return max(min_capacity, int(max(math.ceil(num_tokens * k / num_experts) * cf, cf)))
    if formula == "flaxformer":
        return max(min_capacity, int(round(cf * num_tokens / num_experts)))
    cap = math.ceil(cf * num_tokens * k / num_experts - 1e-9)
    return int(min(num_tokens, max(min_capacity, cap)))


def _slot_positions(expert_index: Array, num_experts: int, active: Array | None = None) -> Array:
    """Arrival order per expert with slot-major priority: ``[T, k]`` int32. Inactive slots
    (``active`` False) take no position (their value is meaningless)."""
    onehot = jax.nn.one_hot(expert_index.T, num_experts, dtype=jnp.int32)  # [k, T, E]
    if active is not None:
        onehot = onehot * active.T[:, :, None].astype(jnp.int32)
    k, t, e = onehot.shape
    flat = onehot.reshape(k * t, e)
    pos = jnp.sum((jnp.cumsum(flat, axis=0) - 1) * flat, axis=1)  # [k*T]
    return pos.reshape(k, t).T.astype(jnp.int32)


def _check_renormalize(renormalize: Any) -> Any:
    if not any(renormalize is v or (isinstance(v, str) and renormalize == v)
               for v in RENORMALIZE):
        raise ValueError(must_be("renormalize", f"one of {RENORMALIZE}", renormalize))
    return renormalize


def top_k_routing(
    logits: Float[Array, "T E"],
    k: int,
    *,
    capacity_factor: float | None = None,
    renormalize: bool | str = True,
    min_capacity: int = 1,
    capacity_formula: str = "ceil",
    score: str = "softmax",
    bias: Float[Array, " E"] | None = None,
    num_groups: int = 1,
    top_groups: int | None = None,
    routed_scaling_factor: float = 1.0,
    mask: Bool[Array, " T"] | None = None,
    priority: str = "token",
) -> Routing:
    """Token-choice top-k routing: Switch, GShard, Mixtral, Qwen-MoE and DeepSeek-V3 routers.

    Steps (each option names the model it reproduces):

    1. **scores** ``s = softmax(logits)`` (``score="softmax"``: Switch, GShard, Mixtral, Qwen) or
       ``sigmoid(logits)`` (``"sigmoid"``: DeepSeek-V3), in float32.
    2. **selection** on ``s + bias`` (``bias [E]``: the aux-loss-free balancing bias of DeepSeek-V3,
       see `update_expert_bias`; it changes *which* experts are chosen, never the weights). With
       ``num_groups > 1`` the experts form ``num_groups`` consecutive groups, each group is scored
       by the sum of its two largest ``s + bias`` (DeepSeek-V3), only the ``top_groups`` best
       groups stay eligible (as transformers' ``DeepseekV3TopkRouter``), and the token takes its
       ``k`` largest eligible experts (ties: the lower index).
    3. **weights** ``w = s[chosen]``; ``renormalize``:

       * ``False``: as-is (Switch top-1, flaxformer's ``TokensChooseMaskedRouter``, Qwen2-MoE with
         ``norm_topk_prob=False``);
       * ``True``: divided by their sum *before* capacity drops (Mixtral; Qwen with
         ``norm_topk_prob=True``; DeepSeek-V3 ``norm_topk_prob``, whose sum gets ``+1e-20``); a
         dropped slot's share is lost;
       * ``"after_drops"``: divided by the sum of the *kept* slots' weights (GShard top-2 as in
         praxis ``top2_gating_on_logits`` / fairscale ``top2gating``, denominator clamped at the
         dtype's eps): when one of two slots is dropped the other gets weight 1.

       then multiplied by ``routed_scaling_factor`` (DeepSeek-V3).
    4. **capacity**: with a ``capacity_factor``, each expert keeps the first
       ``expert_capacity(T, E, k, capacity_factor, min_capacity, formula=capacity_formula)``
       assignments in priority order and drops the rest (weight 0; the residual path carries the
       token). Priority: all first choices before all second choices, and so on; within one
       choice, token order (``priority="token"``) or descending score of the token's first
       choice, before renormalisation (``priority="batch"``: flaxformer's batch-prioritised
       routing). ``None`` is dropless.
    5. **padding**: tokens with ``mask`` False are routed nowhere and take no capacity.

    Args:
        logits: ``[T, E]`` router logits.
        k: experts per token, ``1 <= k <= E`` (``<= top_groups * E / num_groups`` with groups).
        capacity_factor: ``> 0``, or ``None`` for dropless.
        renormalize: one of `RENORMALIZE` (see step 3).
        min_capacity: lower bound on the capacity.
        capacity_formula: one of `CAPACITY_FORMULAS` (see `expert_capacity`).
        score: one of `SCORES`.
        bias: optional ``[E]`` selection bias.
        num_groups: expert groups (divides ``E``).
        top_groups: groups kept per token, ``1 <= top_groups <= num_groups`` (default all).
        routed_scaling_factor: multiplies the final weights.
        mask: optional bool ``[T]``, False for padding tokens.
        priority: ``"token"`` or ``"batch"`` (see step 4).

    Returns:
        The `Routing` (``k`` slots per token).

    Raises:
        ValueError: ``k`` outside its range, ``capacity_factor <= 0``, logits not 2-D, a bias or
            mask of the wrong shape, groups that do not divide ``E``, unknown options.
        TypeError: non-float logits or bias, non-int ``k``, non-bool mask.
    """
    logits = _check_logits(logits)
    t, e = logits.shape
    num_groups = check_int(num_groups, "num_groups", minimum=1, maximum=e)
    if e % num_groups:
        raise ValueError(must_be("num_groups", f"a divisor of the number of experts {e}",
                                 num_groups))
    top_groups = num_groups if top_groups is None else check_int(
        top_groups, "top_groups", minimum=1, maximum=num_groups)
    k = check_int(k, "k", minimum=1, maximum=top_groups * (e // num_groups))
    check_choice(score, "score", SCORES)
    check_choice(priority, "priority", PRIORITIES)
    renormalize = _check_renormalize(renormalize)
    scale = float(check_positive_float(routed_scaling_factor, "routed_scaling_factor"))
    if bias is not None:
        bias = check_float_array(bias, "bias")
        if bias.shape != (e,):
            raise ValueError(must_be("bias", f"an array of shape ({e},) (one per expert)",
                                     bias))
    if mask is not None:
        mask = check_bool_array(mask, "mask")
        if mask.shape != (t,):
            raise ValueError(must_be("mask", f"a bool array of shape ({t},) (one per token)",
                                     mask))
    if capacity_factor is None:
        capacity = t
    else:
        capacity = expert_capacity(t, e, k, capacity_factor, min_capacity,
                                   formula=capacity_formula)
    return _top_k_routing(logits, bias, mask, k, capacity, renormalize, score, num_groups,
                          top_groups, scale, priority)


def router_scores(logits: Float[Array, "T E"], score: str = "softmax") -> Float[Array, "T E"]:
    """``softmax`` or ``sigmoid`` of the logits in float32 (step 1 of `top_k_routing`)."""
    logits = _check_logits(logits)
    check_choice(score, "score", SCORES)
    return _scores(logits, score)


def _scores(logits: Array, score: str) -> Array:
    z = logits.astype(jnp.float32)
    return jax.nn.softmax(z, axis=-1) if score == "softmax" else jax.nn.sigmoid(z)


def _group_limited(choice: Array, num_groups: int, top_groups: int) -> Array:
    """DeepSeek-V3 group-limited selection scores: groups outside the top ``top_groups`` (by the
    sum of their two best scores) are excluded (score ``-inf``)."""
    t, e = choice.shape
    grouped = choice.reshape(t, num_groups, e // num_groups)
    best = jax.lax.top_k(grouped, min(2, e // num_groups))[0].sum(-1)  # [T, G]
    _, keep = jax.lax.top_k(best, top_groups)
    allowed = jnp.zeros((t, num_groups), bool).at[jnp.arange(t)[:, None], keep].set(True)
    return jnp.where(jnp.repeat(allowed, e // num_groups, axis=1), choice, -jnp.inf)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8, 9, 10))
def _top_k_routing(logits, bias, mask, k, capacity, renormalize, score, num_groups, top_groups,
                   scale, priority) -> Routing:
    e = logits.shape[1]
    s = _scores(logits, score)
    choice = s if bias is None else s + bias.astype(jnp.float32)
    if num_groups > 1 and top_groups < num_groups:
        choice = _group_limited(choice, num_groups, top_groups)
    _, index = jax.lax.top_k(choice, k)
    weights = jnp.take_along_axis(s, index, axis=1)
    top1 = weights[:, 0]  # batch priority: the top choice's score, before renormalisation
    if renormalize is True:
        denom = jnp.sum(weights, axis=-1, keepdims=True)
        weights = weights / (denom + 1e-20 if score == "sigmoid" else denom)
    active = None if mask is None else jnp.broadcast_to(mask[:, None], index.shape)
    order = None if priority == "token" else jnp.argsort(-top1, stable=True)
    routing = _assign(index, weights, e, capacity, active=active, order=order)
    w = routing.combine_weights
    if renormalize == "after_drops":
        denom = jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), jnp.finfo(w.dtype).eps)
        w = w / denom
    w = (w * scale) if scale != 1.0 else w
    return dataclasses.replace(routing, combine_weights=w.astype(logits.dtype))


def _assign(index: Array, weights: Array, num_experts: int, capacity: int, *,
            active: Array | None = None, order: Array | None = None) -> Routing:
    """A `Routing` from token choices ``index [T, k]`` and their weights: positions in priority
    order (token order, or the token permutation ``order``), slots at or beyond ``capacity``
    dropped. Slots with ``active`` False are not routed and take no buffer row."""
    index = index.astype(jnp.int32)
    if order is None:
        position = _slot_positions(index, num_experts, active)
    else:  # positions in the permuted token order, un-permuted
        act = None if active is None else active[order]
        position = jnp.zeros_like(index).at[order].set(
            _slot_positions(index[order], num_experts, act))
    kept = position < capacity
    if active is not None:
        kept = kept & active
        position = jnp.where(active, position, capacity)
    weights = jnp.where(kept, weights, jnp.zeros((), weights.dtype))
    return Routing(index, weights, position, kept, num_experts, capacity)


def update_expert_bias(bias: Float[Array, " E"], expert_load: Int[Array, " E"],
                       rate: float = 1e-3) -> Float[Array, " E"]:
    """DeepSeek-V3 aux-loss-free balancing: ``bias - rate * sign(load - mean(load))``.

    Call once per training step with the step's `Routing.expert_load` (summed over the batch);
    overloaded experts become less likely to be selected, underloaded ones more. The bias is
    not a trained parameter (keep it out of the optimizer, e.g. as an ``nnx.BatchStat``).

    Args:
        bias: ``[E]`` current selection bias (pass it to `top_k_routing`'s ``bias``).
        expert_load: ``[E]`` tokens per expert.
        rate: the bias update speed ``gamma > 0``.

    Returns:
        The updated ``[E]`` bias, in ``bias.dtype``.
    """
    bias = check_float_array(bias, "bias")
    load = jnp.asarray(expert_load)
    if bias.ndim != 1 or load.shape != bias.shape:
        raise ValueError(must_be("expert_load", f"an array of shape {bias.shape} (one per "
                                 "expert, like `bias`)", load))
    rate = check_positive_float(rate, "rate")
    load = load.astype(jnp.float32)
    return (bias - rate * jnp.sign(load - jnp.mean(load))).astype(bias.dtype)


def jitter(key: Array, x: Float[Array, "*s"], noise: float) -> Float[Array, "*s"]:
    """Router jitter (Switch/flaxformer): ``x * uniform(1 - noise, 1 + noise)`` elementwise.

    Apply to the router's *input* tokens during training (as flaxformer's ``jitter_noise``);
    ``noise = 0`` returns ``x``.
    """
    x = check_float_array(x, "x")
    noise = check_float(noise, "noise", minimum=0.0)
    if noise == 0.0:
        return x
    return x * jax.random.uniform(key, x.shape, x.dtype, 1.0 - noise, 1.0 + noise)


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

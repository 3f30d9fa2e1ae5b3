"""A mixture-of-experts feed-forward layer as two pure functions: `init_moe` and `moe_apply`.

``y = moe_ffn(x, router(x), w1, w2[, w3]) + shared(x)`` with the router chosen by
`MoEConfig.router`:

* ``"top_k"``: ``logits = x @ router`` then `top_k_routing` with the config's options (softmax
  or sigmoid scores, renormalisation, DeepSeek-V3 groups and scaling, the aux-loss-free
  ``expert_bias``, capacity, batch priority);
* ``"expert_choice"``: ``logits = x @ router`` then `expert_choice_routing`;
* ``"comet"``: `comet_routing` with the tree parameters of `comet_init`.

Gated experts (``gated=True``) add ``w3`` (SwiGLU with ``activation="silu"``, GEGLU with
``"gelu"``); ``num_shared_experts > 0`` adds always-on shared experts (DeepSeek: one MLP of width
``num_shared_experts * shared_d_ff``; with ``shared_gate=True`` Qwen2-MoE's
``sigmoid(x @ shared["gate"])`` scales it). Presets for Mixtral, Qwen2-MoE and DeepSeek-V3 are
`MoEConfig.mixtral`, `MoEConfig.qwen2_moe` and `MoEConfig.deepseek_v3`.

The Flax NNX (`sparsejax.nn.MoE`) and Equinox (`sparsejax.nn.eqx.MoE`) layers hold these
parameters and call `moe_apply`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._backend import backends
from sparsejax._checks import (
    check_bool,
    check_choice,
    check_float,
    check_float_array,
    check_int,
    check_positive_float,
    must_be,
)
from sparsejax.moe.dispatch import moe_ffn
from sparsejax.moe.gates import comet_gates, comet_init, comet_routing
from sparsejax.moe.losses import _balance, router_z_loss
from sparsejax.moe.routing import (
    CAPACITY_FORMULAS,
    PRIORITIES,
    SCORES,
    Routing,
    _check_renormalize,
    _scores,
    expert_choice_routing,
    jitter,
    top_k_routing,
)

__all__ = ["ACTIVATIONS", "ROUTERS", "MoEAux", "MoEConfig", "init_moe", "moe_apply"]

ROUTERS = ("top_k", "expert_choice", "comet")
ACTIVATIONS = {"gelu": jax.nn.gelu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
               "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
               "relu": jax.nn.relu, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Static configuration of an MoE feed-forward layer.

    Attributes:
        d_model: token width ``d``.
        d_ff: hidden width of each routed expert ``F``.
        num_experts: ``E`` routed experts.
        k: experts per token (``top_k``, ``comet``); ignored by ``expert_choice``.
        router: one of `ROUTERS`.
        capacity_factor: ``None`` (dropless; ``expert_choice`` then uses 1.0) or ``> 0``.
        capacity_formula: see `sparsejax.moe.expert_capacity`.
        renormalize: ``False``, ``True`` or ``"after_drops"`` (see `top_k_routing`).
        score: ``"softmax"`` or ``"sigmoid"`` router scores (``top_k``).
        num_groups, top_groups: DeepSeek-V3 group-limited selection (``top_k``).
        routed_scaling_factor: multiplies the routed weights (DeepSeek-V3).
        expert_bias: hold a ``[E]`` aux-loss-free selection bias ``params["expert_bias"]``
            (update it with `sparsejax.moe.update_expert_bias`; ``top_k``).
        priority: ``"token"`` or ``"batch"`` capacity priority (``top_k``).
        jitter_noise: router-input jitter during training (needs ``key`` in `moe_apply`).
        gated: gated experts with ``w3`` (SwiGLU / GEGLU).
        num_shared_experts: always-on shared experts (0: none).
        shared_d_ff: hidden width per shared expert (default ``d_ff``).
        shared_gate: Qwen2-MoE's sigmoid gate on the shared experts' output.
        gamma: COMET smooth-step width.
        activation: a key of `ACTIVATIONS` (``"gelu"`` is the tanh approximation, JAX's
            default; ``"gelu_exact"`` the erf form of PyTorch's default).
        backend: `moe_ffn` backend (``sparsejax._backend.backends("moe_ffn")``).
        tile: row tile / block rows of the ragged and block-sparse backends.
    """

    d_model: int
    d_ff: int
    num_experts: int
    k: int = 2
    router: str = "top_k"
    capacity_factor: float | None = None
    capacity_formula: str = "ceil"
    renormalize: bool | str = True
    score: str = "softmax"
    num_groups: int = 1
    top_groups: int | None = None
    routed_scaling_factor: float = 1.0
    expert_bias: bool = False
    priority: str = "token"
    jitter_noise: float = 0.0
    gated: bool = False
    num_shared_experts: int = 0
    shared_d_ff: int | None = None
    shared_gate: bool = False
    gamma: float = 1.0
    activation: str = "gelu"
    backend: str = "auto"
    tile: int = 128

    def __post_init__(self):
        check_int(self.d_model, "d_model", minimum=1)
        check_int(self.d_ff, "d_ff", minimum=1)
        check_int(self.num_experts, "num_experts", minimum=1)
        check_int(self.k, "k", minimum=1)
        check_int(self.tile, "tile", minimum=1)
        check_choice(self.router, "router", ROUTERS)
        if self.router != "expert_choice" and self.k > self.num_experts:
            raise ValueError(f"`k` must be <= num_experts = {self.num_experts}; got {self.k}.")
        check_choice(self.activation, "activation", tuple(ACTIVATIONS))
        check_choice(self.backend, "backend", backends("moe_ffn"))
        check_choice(self.capacity_formula, "capacity_formula", CAPACITY_FORMULAS)
        check_choice(self.score, "score", SCORES)
        check_choice(self.priority, "priority", PRIORITIES)
        _check_renormalize(self.renormalize)
        check_int(self.num_groups, "num_groups", minimum=1, maximum=self.num_experts)
        if self.num_experts % self.num_groups:
            raise ValueError(must_be("num_groups", f"a divisor of num_experts "
                                     f"{self.num_experts}", self.num_groups))
        if self.top_groups is not None:
            check_int(self.top_groups, "top_groups", minimum=1, maximum=self.num_groups)
        check_positive_float(self.routed_scaling_factor, "routed_scaling_factor")
        check_float(self.jitter_noise, "jitter_noise", minimum=0.0)
        for name in ("expert_bias", "gated", "shared_gate"):
            check_bool(getattr(self, name), name)
        check_int(self.num_shared_experts, "num_shared_experts", minimum=0)
        if self.shared_d_ff is not None:
            check_int(self.shared_d_ff, "shared_d_ff", minimum=1)
        check_positive_float(self.gamma, "gamma")
        if self.capacity_factor is not None:
            check_positive_float(self.capacity_factor, "capacity_factor")

    @classmethod
    def mixtral(cls, d_model: int, d_ff: int, num_experts: int = 8, k: int = 2,
                **kw: Any) -> MoEConfig:
        """Mixtral's sparse block: softmax top-k renormalised, SwiGLU experts, dropless."""
        return cls(d_model, d_ff, num_experts, k, gated=True, activation="silu",
                   renormalize=True, **kw)

    @classmethod
    def qwen2_moe(cls, d_model: int, d_ff: int, num_experts: int, k: int, shared_d_ff: int, *,
                  norm_topk_prob: bool = False, **kw: Any) -> MoEConfig:
        """Qwen2-MoE: softmax top-k (renormalised iff ``norm_topk_prob``), SwiGLU experts and one
        shared SwiGLU expert of width ``shared_d_ff`` behind a sigmoid gate."""
        return cls(d_model, d_ff, num_experts, k, gated=True, activation="silu",
                   renormalize=norm_topk_prob, num_shared_experts=1, shared_d_ff=shared_d_ff,
                   shared_gate=True, **kw)

    @classmethod
    def deepseek_v3(cls, d_model: int, d_ff: int, num_experts: int, k: int, *,
                    num_groups: int, top_groups: int, routed_scaling_factor: float,
                    num_shared_experts: int = 1, norm_topk_prob: bool = True,
                    **kw: Any) -> MoEConfig:
        """DeepSeek-V3: sigmoid scores, aux-loss-free ``expert_bias``, group-limited top-k,
        routed scaling, SwiGLU experts and ``num_shared_experts`` shared ones (no gate)."""
        return cls(d_model, d_ff, num_experts, k, score="sigmoid", expert_bias=True,
                   num_groups=num_groups, top_groups=top_groups,
                   routed_scaling_factor=routed_scaling_factor, renormalize=norm_topk_prob,
                   gated=True, activation="silu", num_shared_experts=num_shared_experts, **kw)


class MoEAux(NamedTuple):
    """Auxiliary outputs of `moe_apply`.

    Attributes:
        load_balancing_loss: Switch ``E * sum_i f_i P_i`` over the unmasked tokens (``P``: the
            router scores normalised per token; COMET: the gate; ``0`` for expert choice,
            balanced by construction).
        router_z_loss: ST-MoE z-loss of the router logits (``0`` for COMET).
        expert_load: ``int32 [E]`` tokens computed per expert (feed it to
            `sparsejax.moe.update_expert_bias`).
        dropped_fraction: fraction of tokens that no expert computed (padding included).
    """

    load_balancing_loss: Float[Array, ""]
    router_z_loss: Float[Array, ""]
    expert_load: Int[Array, " E"]
    dropped_fraction: Float[Array, ""]


def _mlp_init(key: Array, n: int | None, d: int, f: int, gated: bool, dtype: Any) -> dict:
    lead = () if n is None else (n,)
    k1, k2, k3 = jax.random.split(key, 3)
    out = {"w1": jax.random.normal(k1, (*lead, d, f), dtype) / jnp.sqrt(d).astype(dtype),
           "w2": jax.random.normal(k2, (*lead, f, d), dtype) / jnp.sqrt(f).astype(dtype)}
    if gated:
        out["w3"] = jax.random.normal(k3, (*lead, d, f), dtype) / jnp.sqrt(d).astype(dtype)
    return out


def init_moe(key: Array, config: MoEConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters: ``router``, ``w1``, ``w2`` (+ ``w3`` when gated, ``expert_bias`` (zeros) with
    ``config.expert_bias``, ``shared`` = ``{"w1", "w2"[, "w3"][, "gate"]}`` with shared
    experts). LeCun-normal experts, a ``0.02``-normal router ``[d, E]`` (COMET: the
    `comet_init` dict)."""
    if not isinstance(config, MoEConfig):
        raise TypeError(f"`config` must be a MoEConfig; got {type(config).__name__}.")
    kr, ke, ks, kg = jax.random.split(key, 4)
    e, d, f = config.num_experts, config.d_model, config.d_ff
    if config.router == "comet":
        router = comet_init(kr, d, e, config.k, gamma=config.gamma, dtype=dtype)
    else:
        router = jax.random.normal(kr, (d, e), dtype) * 0.02
    params = {"router": router, **_mlp_init(ke, e, d, f, config.gated, dtype)}
    if config.expert_bias:
        params["expert_bias"] = jnp.zeros((e,), jnp.float32)
    if config.num_shared_experts:
        fs = config.num_shared_experts * (config.shared_d_ff or f)
        shared = _mlp_init(ks, None, d, fs, config.gated, dtype)
        if config.shared_gate:
            shared["gate"] = jax.random.normal(kg, (d, 1), dtype) * 0.02
        params["shared"] = shared
    return params


def _route(params: dict, x: Array, config: MoEConfig, mask: Array | None, key: Array | None
           ) -> tuple[Routing, Array, Array]:
    """Routing, per-token router probabilities ``[T, E]`` and z-loss."""
    if config.router == "comet":
        routing = comet_routing(params["router"], x, gamma=config.gamma,
                                capacity_factor=config.capacity_factor)
        probs, _ = comet_gates(params["router"], x, gamma=config.gamma)
        return routing, probs, jnp.zeros((), jnp.float32)
    xr = x if key is None or config.jitter_noise == 0 else jitter(key, x, config.jitter_noise)
    logits = xr @ params["router"]
    if config.router == "expert_choice":
        routing = expert_choice_routing(logits, config.capacity_factor or 1.0)
        probs = _scores(logits, "softmax")
    else:
        routing = top_k_routing(
            logits, config.k, capacity_factor=config.capacity_factor,
            renormalize=config.renormalize, capacity_formula=config.capacity_formula,
            score=config.score, bias=params.get("expert_bias"), num_groups=config.num_groups,
            top_groups=config.top_groups, routed_scaling_factor=config.routed_scaling_factor,
            mask=mask, priority=config.priority)
        probs = _scores(logits, config.score)
        probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
    return routing, probs, router_z_loss(logits)


def _shared(shared: dict, x: Array, config: MoEConfig) -> Array:
    act = ACTIVATIONS[config.activation]
    hi = jax.lax.Precision.HIGHEST
    h = act(jnp.matmul(x, shared["w1"], precision=hi))
    if "w3" in shared:
        h = h * jnp.matmul(x, shared["w3"], precision=hi)
    y = jnp.matmul(h, shared["w2"], precision=hi)
    if "gate" in shared:
        y = jax.nn.sigmoid(jnp.matmul(x, shared["gate"], precision=hi)) * y
    return y


def moe_apply(params: dict[str, Any], x: Float[Array, "... d"], config: MoEConfig, *,
              mask: Bool[Array, "..."] | None = None, key: Array | None = None
              ) -> tuple[Float[Array, "... d"], MoEAux]:
    """The MoE feed-forward of ``x`` (leading axes flattened into tokens).

    Args:
        params: from `init_moe`.
        x: ``[..., d_model]``.
        config: the layer's `MoEConfig`.
        mask: optional bool ``x.shape[:-1]``: False marks padding tokens, which are routed
            nowhere (output: the shared experts only), take no capacity and do not count in
            the load-balancing loss (``top_k`` router).
        key: PRNG key for ``jitter_noise`` (``None``: no jitter, e.g. at evaluation).

    Returns:
        ``(y, aux)``: ``y`` of ``x``'s shape and the `MoEAux` losses and statistics.

    Raises:
        ValueError: ``x.shape[-1] != d_model``, a mask of another shape, a mask with a router
            other than ``top_k``.
    """
    x = check_float_array(x, "x")
    if x.ndim < 1 or x.shape[-1] != config.d_model:
        raise ValueError(f"`x` must have shape [..., {config.d_model}] (d_model); got {x.shape}.")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_ or mask.shape != x.shape[:-1]:
            raise ValueError(must_be("mask", f"a bool array of shape {x.shape[:-1]} "
                                     "(x.shape[:-1])", mask))
        if config.router != "top_k":
            raise ValueError(must_be("mask", f"None for router {config.router!r} (padding "
                                     "masks need router='top_k')", mask))
    return _moe_apply(params, x, mask, key, config)


@functools.partial(jax.jit, static_argnums=(4,))
def _moe_apply(params: dict[str, Any], x: Array, mask: Array | None, key: Array | None,
               config: MoEConfig) -> tuple[Array, MoEAux]:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, config.d_model)
    m2 = None if mask is None else mask.reshape(-1)
    routing, probs, z = _route(params, x2, config, m2, key)
    y = moe_ffn(x2, routing, params["w1"], params["w2"], params.get("w3"),
                activation=ACTIVATIONS[config.activation], backend=config.backend,
                tile=config.tile)
    if "shared" in params:
        y = y + _shared(params["shared"], x2, config).astype(y.dtype)
    if config.router == "expert_choice":
        lb = jnp.zeros((), jnp.float32)  # balanced by construction
    else:
        lb = _balance(probs, routing.expert_index, m2)
    aux = MoEAux(lb, z, routing.expert_load(), routing.unrouted_fraction())
    return y.reshape(*lead, config.d_model), aux

"""A mixture-of-experts feed-forward layer as two pure functions: `init_moe` and `moe_apply`.

``y = moe_ffn(x, router(x), w1, w2)`` with the router chosen by `MoEConfig.router`:

* ``"top_k"``: ``logits = x @ router`` then `top_k_routing` (capacity or dropless);
* ``"expert_choice"``: ``logits = x @ router`` then `expert_choice_routing`;
* ``"comet"``: `comet_routing` with the tree parameters of `comet_init`;
* ``"moex"``: `moex_logits` (from ``w1``, no router weights) then `top_k_routing`; use with
  ``activation="relu"`` (MoE-X's ReLU experts).

The Flax NNX (`sparsejax.nn.MoE`) and Equinox (`sparsejax.nn.eqx.MoE`) layers hold these
parameters and call `moe_apply`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    check_bool,
    check_choice,
    check_float_array,
    check_int,
    check_positive_float,
)
from sparsejax.moe.dispatch import IMPLEMENTATIONS, moe_ffn
from sparsejax.moe.gates import comet_gates, comet_init, comet_routing, moex_logits
from sparsejax.moe.losses import _balance, load_balancing_loss, router_z_loss
from sparsejax.moe.routing import (
    Routing,
    expert_choice_routing,
    top_k_routing,
)

__all__ = ["ACTIVATIONS", "ROUTERS", "MoEAux", "MoEConfig", "init_moe", "moe_apply"]

ROUTERS = ("top_k", "expert_choice", "comet", "moex")
ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Static configuration of an MoE feed-forward layer.

    Attributes:
        d_model: token width ``d``.
        d_ff: hidden width of each expert ``F``.
        num_experts: ``E``.
        k: experts per token (``top_k``, ``comet``, ``moex``); ignored by ``expert_choice``.
        router: one of `ROUTERS`.
        capacity_factor: ``None`` (dropless; ``expert_choice`` then uses 1.0) or ``> 0``.
        renormalize: renormalise the ``k`` weights (``top_k``, ``moex``).
        gamma: COMET smooth-step width.
        activation: ``"gelu"``, ``"relu"`` or ``"silu"``.
        implementation: ``"einsum"``, ``"ragged"`` or ``"block_sparse"`` (see `moe_ffn`).
        backend: backend of the implementation (see `moe_ffn`).
        tile: row tile / block rows of ``ragged`` and ``block_sparse``.
    """

    d_model: int
    d_ff: int
    num_experts: int
    k: int = 2
    router: str = "top_k"
    capacity_factor: float | None = None
    renormalize: bool = True
    gamma: float = 1.0
    activation: str = "gelu"
    implementation: str = "ragged"
    backend: str = "auto"
    tile: int = 128

    def __post_init__(self):
        check_int(self.d_model, "d_model", minimum=1)
        check_int(self.d_ff, "d_ff", minimum=1)
        check_int(self.num_experts, "num_experts", minimum=1)
        check_int(self.k, "k", minimum=1)
        check_int(self.tile, "tile", minimum=1)
        if self.router != "expert_choice" and self.k > self.num_experts:
            raise ValueError(f"`k` must be <= num_experts = {self.num_experts}; got {self.k}.")
        check_choice(self.router, "router", ROUTERS)
        check_choice(self.activation, "activation", tuple(ACTIVATIONS))
        check_choice(self.implementation, "implementation", IMPLEMENTATIONS)
        check_bool(self.renormalize, "renormalize")
        check_positive_float(self.gamma, "gamma")
        if self.capacity_factor is not None:
            check_positive_float(self.capacity_factor, "capacity_factor")


class MoEAux(NamedTuple):
    """Auxiliary outputs of `moe_apply`.

    Attributes:
        load_balancing_loss: Switch ``E * sum_i f_i P_i`` (COMET: ``P`` = mean gate;
            ``0`` for expert choice, balanced by construction).
        router_z_loss: ST-MoE z-loss of the router logits (``0`` for COMET).
        expert_load: ``int32 [E]`` tokens computed per expert.
        dropped_fraction: fraction of tokens that no expert computed.
    """

    load_balancing_loss: Float[Array, ""]
    router_z_loss: Float[Array, ""]
    expert_load: Int[Array, " E"]
    dropped_fraction: Float[Array, ""]


def init_moe(key: Array, config: MoEConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters ``{"router", "w1", "w2"}``: LeCun-normal experts, a zero-mean router.

    ``router`` is ``[d, E]`` (``top_k``, ``expert_choice``), the `comet_init` dict
    (``comet``), or ``None`` (``moex``, which routes from ``w1``).
    """
    if not isinstance(config, MoEConfig):
        raise TypeError(f"`config` must be a MoEConfig; got {type(config).__name__}.")
    kr, k1, k2 = jax.random.split(key, 3)
    e, d, f = config.num_experts, config.d_model, config.d_ff
    w1 = jax.random.normal(k1, (e, d, f), dtype) / jnp.sqrt(d).astype(dtype)
    w2 = jax.random.normal(k2, (e, f, d), dtype) / jnp.sqrt(f).astype(dtype)
    if config.router == "comet":
        router = comet_init(kr, d, e, config.k, gamma=config.gamma, dtype=dtype)
    elif config.router == "moex":
        router = None
    else:
        router = jax.random.normal(kr, (d, e), dtype) * 0.02
    return {"router": router, "w1": w1, "w2": w2}


def _route(params: dict, x: Array, config: MoEConfig) -> tuple[Routing, Array, Array]:
    """Routing, router probabilities ``[T, E]`` and z-loss."""
    if config.router == "comet":
        routing = comet_routing(params["router"], x, gamma=config.gamma,
                                capacity_factor=config.capacity_factor)
        probs, _ = comet_gates(params["router"], x, gamma=config.gamma)
        return routing, probs, jnp.zeros((), jnp.float32)
    if config.router == "moex":
        logits = moex_logits(x, params["w1"])
    else:
        logits = x @ params["router"]
    if config.router == "expert_choice":
        routing = expert_choice_routing(logits, config.capacity_factor or 1.0)
    else:
        routing = top_k_routing(logits, config.k, capacity_factor=config.capacity_factor,
                                renormalize=config.renormalize)
    return routing, logits, router_z_loss(logits)


def moe_apply(params: dict[str, Any], x: Float[Array, "... d"], config: MoEConfig
              ) -> tuple[Float[Array, "... d"], MoEAux]:
    """The MoE feed-forward of ``x`` (leading axes flattened into tokens).

    Args:
        params: from `init_moe`.
        x: ``[..., d_model]``.
        config: the layer's `MoEConfig`.

    Returns:
        ``(y, aux)``: ``y`` of ``x``'s shape and the `MoEAux` losses and statistics.

    Raises:
        ValueError: ``x.shape[-1] != d_model``.
    """
    x = check_float_array(x, "x")
    if x.ndim < 1 or x.shape[-1] != config.d_model:
        raise ValueError(f"`x` must have shape [..., {config.d_model}] (d_model); got {x.shape}.")
    return _moe_apply(params, x, config)


@functools.partial(jax.jit, static_argnums=(2,))
def _moe_apply(params: dict[str, Any], x: Array, config: MoEConfig) -> tuple[Array, MoEAux]:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, config.d_model)
    routing, logits, z = _route(params, x2, config)
    y = moe_ffn(x2, routing, params["w1"], params["w2"],
                activation=ACTIVATIONS[config.activation],
                implementation=config.implementation, backend=config.backend, tile=config.tile)
    if config.router == "comet":
        lb = _balance(logits, routing.expert_index)  # `logits` holds the COMET gates
    elif config.router == "expert_choice":
        lb = jnp.zeros((), jnp.float32)  # balanced by construction
    else:
        lb = load_balancing_loss(logits, routing.expert_index)
    aux = MoEAux(lb, z, routing.expert_load(), routing.unrouted_fraction())
    return y.reshape(*lead, config.d_model), aux


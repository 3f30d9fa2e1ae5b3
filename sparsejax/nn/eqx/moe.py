"""Equinox mixture-of-experts feed-forward layer over `sparsejax.moe.moe_apply`.

``MoE.__call__(x)`` returns ``(y, aux)`` (a `sparsejax.moe.MoEAux`); add the scaled
``aux.load_balancing_loss`` and ``aux.router_z_loss`` to the training loss. The Flax NNX
counterpart is `sparsejax.nn.MoE`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply

__all__ = ["MoE"]


class MoE(eqx.Module):
    """Router + ``E`` two-layer experts.

    Fields: ``w1 [E, d, F]``, ``w2 [E, F, d]``, ``router`` (``[d, E]``, the COMET tree dict, or
    ``None`` for ``router="moex"``) and the static ``config``.

    Args:
        config: the `sparsejax.moe.MoEConfig`.
        key: a ``jax.random`` key.
        dtype: parameter dtype.
    """

    w1: Array
    w2: Array
    router: Any
    config: MoEConfig = eqx.field(static=True)

    def __init__(self, config: MoEConfig, *, key: Array, dtype: Any = jnp.float32):
        params = init_moe(key, config, dtype)
        self.w1, self.w2, self.router = params["w1"], params["w2"], params["router"]
        self.config = config

    def __call__(self, x: Float[Array, "... d"]) -> tuple[Float[Array, "... d"], MoEAux]:
        return moe_apply({"router": self.router, "w1": self.w1, "w2": self.w2}, x, self.config)

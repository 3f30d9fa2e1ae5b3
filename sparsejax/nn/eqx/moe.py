"""Equinox mixture-of-experts feed-forward layer over `sparsejax.moe.moe_apply`.

``MoE.__call__(x)`` returns ``(y, aux)`` (a `sparsejax.moe.MoEAux`); add the scaled
``aux.load_balancing_loss`` and ``aux.router_z_loss`` to the training loss. The Flax NNX
counterpart is `sparsejax.nn.MoE`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply

__all__ = ["MoE"]


class MoE(eqx.Module):
    """Router + ``E`` experts (+ shared experts).

    Fields: ``params`` (`sparsejax.moe.init_moe`'s dict: ``router``, ``w1``, ``w2``, and
    ``w3`` / ``expert_bias`` / ``shared`` when configured) and the static ``config``. Keep
    ``params["expert_bias"]`` out of the optimizer (e.g. ``eqx.partition``) and update it with
    `sparsejax.moe.update_expert_bias`.

    Args:
        config: the `sparsejax.moe.MoEConfig`.
        key: a ``jax.random`` key.
        dtype: parameter dtype.
    """

    params: dict[str, Any]
    config: MoEConfig = eqx.field(static=True)

    def __init__(self, config: MoEConfig, *, key: Array, dtype: Any = jnp.float32):
        self.params = init_moe(key, config, dtype)
        self.config = config

    def __call__(self, x: Float[Array, "... d"], *, mask: Bool[Array, "..."] | None = None,
                 key: Array | None = None) -> tuple[Float[Array, "... d"], MoEAux]:
        return moe_apply(self.params, x, self.config, mask=mask, key=key)

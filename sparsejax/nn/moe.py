"""Flax NNX mixture-of-experts feed-forward layer over `sparsejax.moe.moe_apply`.

Example::

    from sparsejax.moe import MoEConfig
    from sparsejax.nn import MoE

    layer = MoE(MoEConfig(d_model=64, d_ff=128, num_experts=8, k=2), rngs=nnx.Rngs(0))
    y = layer(x)                                   # [..., 64]
    aux = nnx.pop(layer, nnx.Intermediate)         # sown MoEAux (losses, load, drops)

The Equinox counterpart is `sparsejax.nn.eqx.MoE`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply

__all__ = ["MoE"]


class MoE(nnx.Module):
    """Router + ``E`` two-layer experts; ``__call__`` returns ``y`` and sows the `MoEAux`.

    Parameters (``nnx.Param``): ``w1 [E, d, F]``, ``w2 [E, F, d]`` and ``router`` (``[d, E]``,
    the COMET tree dict, or absent for ``router="moex"``). Each call sows the `MoEAux` under
    ``nnx.Intermediate`` attribute ``aux`` (add ``aux.load_balancing_loss`` and
    ``aux.router_z_loss``, scaled, to the training loss).

    Args:
        config: the static `sparsejax.moe.MoEConfig`.
        rngs: ``nnx.Rngs`` (its ``params`` stream initialises the weights).
        dtype: parameter dtype.
    """

    def __init__(self, config: MoEConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        params = init_moe(rngs.params(), config, dtype)
        self.config = config
        self.w1 = nnx.Param(params["w1"])
        self.w2 = nnx.Param(params["w2"])
        router = params["router"]
        self.router = None if router is None else nnx.data(jax.tree.map(nnx.Param, router))

    def params(self) -> dict[str, Any]:
        """The parameters as `sparsejax.moe.init_moe`'s dict."""
        router = None if self.router is None else jax.tree.map(
            lambda p: p[...], self.router, is_leaf=lambda v: isinstance(v, nnx.Param))
        return {"router": router, "w1": self.w1[...], "w2": self.w2[...]}

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        y, aux = moe_apply(self.params(), x, self.config)
        self.sow(nnx.Intermediate, "aux", aux)
        return y

    def apply_with_aux(self, x: Float[Array, "... d"]) -> tuple[Float[Array, "... d"], MoEAux]:
        """``(y, aux)`` without sowing."""
        return moe_apply(self.params(), x, self.config)

"""Flax NNX mixture-of-experts feed-forward layer over `sparsejax.moe.moe_apply`.

Example::

    from sparsejax.moe import MoEConfig
    from sparsejax.nn import MoE

    layer = MoE(MoEConfig(d_model=64, d_ff=128, num_experts=8, k=2), rngs=nnx.Rngs(0))
    y, aux = layer(x)                              # [..., 64] and the MoEAux

``__call__`` *returns* the auxiliary losses (nothing is sown, so the layer's state does not
change between calls and ``nnx.jit`` traces once). The aux-loss-free ``expert_bias``
(``MoEConfig.expert_bias``) is an ``nnx.BatchStat`` (not trained by ``nnx.Optimizer(...,
wrt=nnx.Param)``); update it with ``layer.update_bias(aux.expert_load, rate)``. The Equinox
counterpart is `sparsejax.nn.eqx.MoE`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from sparsejax.moe.layer import MoEAux, MoEConfig, init_moe, moe_apply
from sparsejax.moe.routing import update_expert_bias

__all__ = ["MoE"]


def _is_var(v: Any) -> bool:
    return isinstance(v, nnx.Variable)


class MoE(nnx.Module):
    """Router + ``E`` experts (+ shared experts); ``__call__`` returns ``(y, aux)``.

    Parameters (``nnx.Param``) mirror `sparsejax.moe.init_moe`'s dict: ``router``, ``w1``,
    ``w2`` (``w3`` when gated), ``shared`` (shared experts); ``expert_bias`` is an
    ``nnx.BatchStat``.

    Args:
        config: the static `sparsejax.moe.MoEConfig`.
        rngs: ``nnx.Rngs`` (its ``params`` stream initialises the weights).
        dtype: parameter dtype.
    """

    def __init__(self, config: MoEConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        params = init_moe(rngs.params(), config, dtype)
        self.config = config
        self.names = tuple(params)
        for name, value in params.items():
            wrap = nnx.BatchStat if name == "expert_bias" else nnx.Param
            setattr(self, name, nnx.data(jax.tree.map(wrap, value)))

    def params(self) -> dict[str, Any]:
        """The parameters as `sparsejax.moe.init_moe`'s dict (plain arrays)."""
        return {n: jax.tree.map(lambda v: v[...], getattr(self, n), is_leaf=_is_var)
                for n in self.names}

    def __call__(self, x: Float[Array, "... d"], *, mask: Bool[Array, "..."] | None = None,
                 key: Array | None = None) -> tuple[Float[Array, "... d"], MoEAux]:
        """``(y, aux)`` of `sparsejax.moe.moe_apply` (``mask``: padding; ``key``: jitter)."""
        return moe_apply(self.params(), x, self.config, mask=mask, key=key)

    def update_bias(self, expert_load: Int[Array, " E"], rate: float = 1e-3) -> None:
        """Aux-loss-free balancing step: `sparsejax.moe.update_expert_bias` in place."""
        if "expert_bias" not in self.names:
            raise ValueError("`config.expert_bias` must be True to update the expert bias; got "
                             "False.")
        self.expert_bias[...] = update_expert_bias(self.expert_bias[...], expert_load, rate)

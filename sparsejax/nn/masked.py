"""`Masked`: a Flax NNX wrapper that re-parameterises a layer's weight as ``weight * mask``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool

from sparsejax.nn._masked import check_masked
from sparsejax.nn.linear import SparseStructure

__all__ = ["Masked"]


class Masked(nnx.Module):
    """Wrap an NNX layer so its forward uses ``where(mask, weight, 0)`` instead of ``weight``.

    The dense weight stays an ``nnx.Param`` of the wrapped layer (so an optimizer sees and updates
    it; its gradient is zero outside the mask); the mask is a `SparseStructure` variable (not an
    ``nnx.Param``, so ``nnx.Optimizer(..., wrt=nnx.Param)`` skips it). Each call builds the
    masked layer functionally (``nnx.split`` / ``nnx.merge``); the wrapped layer is not mutated.
    For masks that change during training prefer the optax transforms of `sparsejax.training`.

    Args:
        layer: an NNX module with a weight attribute (e.g. ``nnx.Linear``, ``nnx.Conv``).
        mask: bool array of the weight's shape (``True`` = kept).
        weight_name: the attribute holding the weight (``"kernel"`` for Flax layers).

    Raises:
        ValueError: the layer has no such weight or the mask's shape differs from it.
        TypeError: the mask is not boolean, or ``weight_name`` is not a string.
    """

    def __init__(self, layer: nnx.Module, mask: Bool[Array, "..."], *,
                 weight_name: str = "kernel"):
        weight = getattr(layer, weight_name, None) if isinstance(weight_name, str) else None
        value = weight[...] if isinstance(weight, nnx.Variable) else None
        mask = check_masked(layer, mask, weight_name, value)
        self.layer = layer
        self.mask = SparseStructure(mask)
        self.weight_name = weight_name

    def masked_layer(self) -> nnx.Module:
        """A copy of the wrapped layer whose weight is ``where(mask, weight, 0)``."""
        graphdef, state = nnx.split(self.layer)
        weight = state[self.weight_name]
        weight.set_value(jnp.where(self.mask[...], weight[...], jnp.zeros((), weight[...].dtype)))
        return nnx.merge(graphdef, state)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped layer's forward with the masked weight."""
        return self.masked_layer()(*args, **kwargs)

"""`Masked`: an Equinox wrapper that re-parameterises a layer's weight as ``weight * mask``
(the pattern of ``equinox.nn.WeightNorm``)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool

from sparsejax.nn._masked import check_masked

__all__ = ["Masked"]


class Masked(eqx.Module):
    """Wrap an Equinox layer so its forward uses ``where(mask, weight, 0)`` instead of ``weight``.

    Like ``equinox.nn.WeightNorm``, the wrapped layer keeps its dense weight (a trainable leaf,
    whose gradient is zero outside the mask) and each call swaps in the masked weight with
    ``eqx.tree_at``. The mask is a bool array leaf, which ``eqx.is_inexact_array`` filters (and so
    ``eqx.filter_grad`` / ``eqx.filter(model, eqx.is_inexact_array)``) leave out.

    Args:
        layer: an Equinox module with a weight attribute (e.g. ``eqx.nn.Linear``).
        mask: bool array of the weight's shape (``True`` = kept).
        weight_name: the attribute holding the weight (``"weight"`` for Equinox layers).

    Raises:
        ValueError: the layer has no such weight or the mask's shape differs from it.
        TypeError: the mask is not boolean, or ``weight_name`` is not a string.
    """

    layer: eqx.Module
    mask: Bool[Array, "..."]
    weight_name: str = eqx.field(static=True)

    def __init__(self, layer: eqx.Module, mask: Bool[Array, "..."], *,
                 weight_name: str = "weight"):
        weight = getattr(layer, weight_name, None) if isinstance(weight_name, str) else None
        mask = check_masked(layer, mask, weight_name,
                            weight if isinstance(weight, jax.Array) else None)
        self.layer = layer
        self.mask = mask
        self.weight_name = weight_name

    def masked_layer(self) -> eqx.Module:
        """The wrapped layer with its weight replaced by ``where(mask, weight, 0)``."""
        weight = getattr(self.layer, self.weight_name)
        return eqx.tree_at(lambda layer: getattr(layer, self.weight_name), self.layer,
                           jnp.where(self.mask, weight, jnp.zeros((), weight.dtype)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped layer's forward with the masked weight."""
        return self.masked_layer()(*args, **kwargs)

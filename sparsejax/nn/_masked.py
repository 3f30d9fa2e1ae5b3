"""The framework-free check behind `sparsejax.nn.Masked` and `sparsejax.nn.eqx.Masked`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import check_bool_array, check_shape, must_be

__all__ = ["check_masked"]


def check_masked(layer: Any, mask: Any, weight_name: Any, weight: Any) -> jax.Array:
    """``mask`` as a bool array of the shape of ``weight`` (the layer's ``weight_name``).

    Raises:
        TypeError: ``weight_name`` is not a string, or ``mask`` is not a bool array.
        ValueError: the layer has no array named ``weight_name``, or the shapes differ.
    """
    if not isinstance(weight_name, str):
        raise TypeError(must_be("weight_name", "a str naming the layer's weight", weight_name))
    if weight is None or not hasattr(weight, "shape"):
        raise ValueError(must_be("weight_name", f"the name of an array attribute of the "
                                 f"{type(layer).__name__}", weight_name))
    mask = check_bool_array(mask if isinstance(mask, jax.Array | np.ndarray)
                            else jnp.asarray(mask), "mask")
    check_shape(mask, tuple(weight.shape), "mask")
    return jnp.asarray(mask)

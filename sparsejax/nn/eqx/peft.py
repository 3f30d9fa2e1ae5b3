"""Equinox adapter of `sparsejax.peft`: ``eqx.nn.Linear`` layers fine-tuned through a sparse delta.

`to_delta` swaps each ``eqx.nn.Linear`` whose weight has a `sparsejax.peft.SparseDelta` for a
`DeltaLinear` (the frozen ``[out, in]`` weight and bias, read under ``stop_gradient``, and the
delta). Train it with `sparsejax.peft.train_delta` over ``eqx.filter(model, eqx.is_array)``:
``eqx.filter_grad`` gives the delta's values their gradient and the frozen arrays none worth
computing, `train_delta` allocates state for the values only and gives every other array a zero
update. `merge_delta` turns the layers back into ``eqx.nn.Linear``. The Flax NNX version is
`sparsejax.nn.to_delta`.

Example::

    delta = peft.sparse_delta(eqx.filter(model, eqx.is_array), 0.01, key=key)
    tuned = sj.nn.eqx.to_delta(model, delta)
    tx = peft.train_delta(optax.adam(1e-3))
    state = tx.init(eqx.filter(tuned, eqx.is_array))
    grads = eqx.filter_grad(loss)(tuned)
    updates, state = tx.update(grads, state, eqx.filter(tuned, eqx.is_array))
    tuned = eqx.apply_updates(tuned, updates)
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from sparsejax import peft
from sparsejax.nn import _surgery
from sparsejax.nn.eqx.surgery import _map_layers
from sparsejax.peft.delta import SparseDelta, delta_table
from sparsejax.select import path_str

__all__ = ["DeltaLinear", "merge_delta", "to_delta"]


class DeltaLinear(eqx.Module):
    """``(weight + delta) @ x + bias`` with the pretrained weight and bias frozen.

    Attributes:
        weight: ``[out, in]`` pretrained weight (no gradient flows to it).
        bias: ``[out]`` or ``None`` (frozen).
        delta: the `sparsejax.peft.SparseDelta` of ``weight`` (flat indices into ``[out, in]``).
    """

    weight: jax.Array
    bias: jax.Array | None
    delta: SparseDelta

    def __init__(self, weight: jax.Array, bias: jax.Array | None, delta: SparseDelta):
        if tuple(weight.shape) != delta.shape:
            raise ValueError(f"`delta` must be a SparseDelta of the weight's shape "
                             f"{tuple(weight.shape)}; got shape {delta.shape}.")
        self.weight, self.bias, self.delta = weight, bias, delta

    def merged(self) -> jax.Array:
        """The fine-tuned ``[out, in]`` weight (`sparsejax.peft.apply`)."""
        return peft.apply({"w": jax.lax.stop_gradient(self.weight)}, {"w": self.delta})["w"]

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.merged().T
        return y if self.bias is None else y + jax.lax.stop_gradient(self.bias)


def to_delta(model: Any, delta: Any) -> Any:
    """``model`` with its ``eqx.nn.Linear`` layers that have a delta as `DeltaLinear` layers.

    Args:
        model: an Equinox module (any pytree holding ``eqx.nn.Linear`` layers, or one itself).
        delta: a delta tree over ``eqx.filter(model, eqx.is_array)`` (a `SparseDelta` at
            ``.../weight``, ``None`` elsewhere), or a flat ``{"path/weight": SparseDelta}`` dict.

    Returns:
        the converted model.

    Raises:
        ValueError: a delta on a leaf that is not an ``eqx.nn.Linear`` weight, or of another shape.
    """
    table = delta_table(delta)

    def convert(path, lin):
        key = _surgery.join((path_str(path),) if path else (), "weight")
        if key not in table:
            return lin
        return DeltaLinear(lin.weight, lin.bias, table.pop(key))

    out = _map_layers(model, eqx.nn.Linear, convert)
    _surgery.check_all_used(table, "eqx.nn.Linear")
    return out


def merge_delta(model: Any) -> Any:
    """``model`` with its `DeltaLinear` layers as ``eqx.nn.Linear`` with the merged weight."""
    def convert(_, layer):
        w = layer.merged()
        lin = eqx.nn.Linear(w.shape[1], w.shape[0], use_bias=layer.bias is not None,
                            dtype=w.dtype, key=jax.random.PRNGKey(0))
        lin = eqx.tree_at(lambda x: x.weight, lin, w)
        if layer.bias is not None:
            lin = eqx.tree_at(lambda x: x.bias, lin, layer.bias)
        return lin

    return _map_layers(model, DeltaLinear, convert)

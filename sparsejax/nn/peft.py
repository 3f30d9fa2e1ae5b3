"""Flax NNX adapter of `sparsejax.peft`: ``nnx.Linear`` layers fine-tuned through a sparse delta.

`to_delta` swaps each ``nnx.Linear`` whose kernel has a `sparsejax.peft.SparseDelta` (a fixed
support from `sparsejax.peft.sparse_delta`, a SpIEL support from `sparsejax.peft.spiel`, SHiRA's
...) for a `DeltaLinear`: the pretrained kernel and bias are held as `Frozen` variables (not
``nnx.Param``: no gradient, no optimizer state), the delta's values as the only ``nnx.Param``, so
``nnx.Optimizer(model, tx, wrt=nnx.Param)`` trains the delta alone. The forward is
`sparsejax.peft.apply`; `merge_delta` turns the layers back into ``nnx.Linear`` with the merged
kernel. The Equinox version is `sparsejax.nn.eqx.to_delta`.

Example::

    delta = peft.sparse_delta(nnx.state(model, nnx.Param), 0.01, key=key)
    tuned = sj.nn.to_delta(model, delta)                  # model is left unchanged
    opt = nnx.Optimizer(tuned, optax.adam(1e-3), wrt=nnx.Param)
    ...
    merged = sj.nn.merge_delta(tuned)                     # plain nnx.Linear again
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from sparsejax import peft
from sparsejax.nn import _surgery
from sparsejax.nn.surgery import _dense_linear, _replace
from sparsejax.peft.delta import SparseDelta, delta_table

__all__ = ["DeltaIndices", "DeltaLinear", "Frozen", "merge_delta", "to_delta"]


class Frozen(nnx.Variable):
    """A pretrained array kept fixed (not an ``nnx.Param``)."""


class DeltaIndices(nnx.Variable):
    """The flat indices of a sparse delta (int32, not trained)."""


class DeltaLinear(nnx.Module):
    """``x @ (kernel + delta) + bias`` with only the delta's values trainable.

    Attributes:
        kernel: `Frozen` ``[in, out]`` pretrained kernel.
        bias: `Frozen` ``[out]`` or ``None``.
        indices: `DeltaIndices` ``[k]`` flat indices into the kernel.
        values: ``nnx.Param`` ``[k]``: the delta there.
    """

    def __init__(self, kernel: jax.Array, bias: jax.Array | None, delta: SparseDelta):
        if tuple(kernel.shape) != delta.shape:
            raise ValueError(f"`delta` must be a SparseDelta of the kernel's shape "
                             f"{tuple(kernel.shape)}; got shape {delta.shape}.")
        self.kernel = Frozen(kernel)
        self.bias = None if bias is None else Frozen(bias)
        self.indices = DeltaIndices(delta.indices)
        self.values = nnx.Param(delta.values)

    @property
    def delta(self) -> SparseDelta:
        """The layer's `sparsejax.peft.SparseDelta`."""
        return SparseDelta(self.indices[...], self.values[...], None, tuple(self.kernel.shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = peft.apply({"k": self.kernel[...]}, {"k": self.delta})["k"]
        y = x @ kernel
        return y if self.bias is None else y + self.bias[...]


def to_delta(model: nnx.Module, delta: Any) -> nnx.Module:
    """A copy of ``model`` whose ``nnx.Linear`` layers with a delta are `DeltaLinear` layers.

    Args:
        model: a Flax NNX module (or an ``nnx.Linear``); it is not modified.
        delta: a delta tree over ``nnx.state(model, nnx.Param)`` (a `SparseDelta` at
            ``.../kernel`` of the fine-tuned layers, ``None`` elsewhere), or a flat
            ``{"path/kernel": SparseDelta}`` dict.

    Returns:
        the converted copy.

    Raises:
        ValueError: a delta on a leaf that is not an ``nnx.Linear`` kernel, or of another shape.
        TypeError: a delta leaf that is not a `SparseDelta`.
    """
    table = delta_table(delta)
    model = nnx.clone(model)
    targets = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
    for path, lin in targets:
        key = _surgery.join(path, "kernel")
        if key not in table:
            continue
        d = table.pop(key)
        bias = None if lin.bias is None else lin.bias[...]
        model = _replace(model, path, DeltaLinear(lin.kernel[...], bias, d))
    _surgery.check_all_used(table, "nnx.Linear")
    return model


def merge_delta(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose `DeltaLinear` layers are ``nnx.Linear`` with the merged kernel
    (`sparsejax.peft.apply`)."""
    model = nnx.clone(model)
    for path, layer in [(p, m) for p, m in nnx.iter_modules(model)
                        if isinstance(m, DeltaLinear)]:
        kernel = peft.apply({"k": layer.kernel[...]}, {"k": layer.delta})["k"]
        bias = None if layer.bias is None else layer.bias[...]
        model = _replace(model, path, _dense_linear(kernel, bias))
    return model

"""Flax NNX layer for activation sparsity: a linear layer that thresholds its input and reads only
the kept rows of its kernel (`sparsejax.activation.sparsify` + `sparsejax.ops.sparse_input_matmul`).

The Equinox layer of the same name is in `sparsejax.nn.eqx`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sparsejax.activation.thresholds import sparsify
from sparsejax.ops.sparse_input import sparse_input_matmul

__all__ = ["Threshold", "ThresholdLinear"]


class Threshold(nnx.Variable):
    """A non-trainable variable holding an activation threshold ``tau``."""


class ThresholdLinear(nnx.Module):
    """``y = sparsify(x, tau) @ kernel + bias`` with only the kept kernel rows read (TEAL).

    Attributes:
        kernel: ``nnx.Param [in, out]`` (the ``nnx.Linear`` layout).
        bias: ``nnx.Param [out]`` or ``None``.
        tau: `Threshold` (scalar or ``[in]``), e.g. from `sparsejax.activation.calibrate_thresholds`.
        backend: passed to `sparsejax.ops.sparse_input_matmul`.
    """

    def __init__(self, kernel: Float[Array, "in out"], bias: Float[Array, " out"] | None = None,
                 tau: Any = 0.0, *, backend: str = "auto"):
        self.kernel = nnx.Param(jnp.asarray(kernel))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))
        self.tau = Threshold(jnp.asarray(tau, jnp.float32))
        self.backend = backend

    @classmethod
    def from_linear(cls, linear: nnx.Linear, tau: Any = 0.0, *,
                    backend: str = "auto") -> ThresholdLinear:
        """The layer with ``linear``'s kernel and bias."""
        bias = None if linear.bias is None else linear.bias[...]
        return cls(linear.kernel[...], bias, tau, backend=backend)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = sparse_input_matmul(sparsify(x, self.tau[...]), self.kernel[...], backend=self.backend)
        return y if self.bias is None else y + self.bias[...]


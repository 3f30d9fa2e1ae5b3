"""Equinox layer for activation sparsity (same name as `sparsejax.nn.ThresholdLinear`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax.activation.thresholds import sparsify
from sparsejax.ops.sparse_input import sparse_input_matmul

__all__ = ["ThresholdLinear"]


class ThresholdLinear(eqx.Module):
    """``y = sparsify(x, tau) @ kernel + bias`` with only the kept kernel rows read (TEAL).

    ``kernel`` is ``[in, out]`` (stored transposed from ``eqx.nn.Linear``'s ``[out, in]`` once, so
    the kept inputs select contiguous rows); ``tau`` is a non-trainable leaf (wrapped in
    ``jax.lax.stop_gradient`` in the forward pass).
    """

    kernel: Float[Array, "in out"]
    bias: Float[Array, " out"] | None
    tau: Float[Array, "..."]
    backend: str = eqx.field(static=True, default="auto")

    @classmethod
    def from_linear(cls, linear: eqx.nn.Linear, tau: Any = 0.0, *,
                    backend: str = "auto") -> ThresholdLinear:
        """The layer with ``linear``'s weight (transposed) and bias."""
        return cls(jnp.asarray(linear.weight).T, linear.bias, jnp.asarray(tau, jnp.float32),
                   backend)

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        tau = jax.lax.stop_gradient(self.tau)
        y = sparse_input_matmul(sparsify(x, tau), self.kernel, backend=self.backend)
        return y if self.bias is None else y + self.bias

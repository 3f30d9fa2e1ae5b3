"""Equinox layers of `sparsejax.nn`, under the same class names as the Flax NNX ones."""

from sparsejax.nn.eqx.ssvi import SSVIConv, SSVILinear

__all__ = ["SSVIConv", "SSVILinear"]

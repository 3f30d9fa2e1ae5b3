"""Equinox layers over sparsejax's core, with the same class names as their Flax NNX
counterparts in `sparsejax.nn`."""

from sparsejax.nn.eqx.moe import MoE

__all__ = ["MoE"]

"""Sparse training inside the user's loop: optax transforms that keep masks in the optimizer state.

See the "Sparse training" docs page for the recipes (optax, Flax NNX, Equinox, orbax, sharding).
"""

from sparsejax.training.moments import reset_moments

__all__ = ["reset_moments"]

"""Static sparse training: a fixed random mask from initialisation (Liu et al. 2022, "The
unreasonable effectiveness of random pruning for sparse training")."""

from __future__ import annotations

import jax
import optax

from sparsejax._checks import check_sparsity
from sparsejax.select import Where
from sparsejax.training._transform import key_data, masked_transform
from sparsejax.training.dynamic import ALLOCATIONS, random_masks

__all__ = ["static_sparse"]


def static_sparse(inner: optax.GradientTransformation, sparsity: float, *,
                  allocation: str = "erk", key: jax.Array | None = None,
                  where: Where = None) -> optax.GradientTransformationExtraArgs:
    """Train with one random mask drawn at ``init`` and never changed.

    Each selected leaf gets a uniformly random mask with its ``allocation`` share of ``sparsity``
    (ERK by default, the paper's best). Gradients are masked before ``inner``; the updates leave
    the params exactly masked after every step (the first step zeroes the pruned entries).

    Args:
        inner: the user's optimizer.
        sparsity: global sparsity in ``[0, 1]``.
        allocation: ``"erk"``, ``"er"`` or ``"uniform"``.
        key: PRNG key (required).
        where: leaf selector.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.
    """
    check_sparsity(sparsity)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS}; got {allocation!r}.")
    key = key_data(key)
    return masked_transform(
        inner, lambda params, k: random_masks(params, sparsity, k, allocation=allocation,
                                              where=where),
        None, None, key=key)

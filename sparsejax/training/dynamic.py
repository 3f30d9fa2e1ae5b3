"""Dynamic sparse training as optax transforms: RigL (Evci et al. 2020) and SET (Mocanu et al. 2018).

Both keep each leaf's nonzero count constant: every ``update_every`` steps until ``end_step``
(inclusive) each leaf runs `drop_and_grow` on the `DropGrowSchedule`'s drop fraction (rigl
``sparse_optimizers_base.py``, jaxpruner ``sparse_trainers.py``). Grown weights start at zero; the
inner optimizer's moments of grown and dropped entries are reset to zero (`reset_moments`); the
inner optimizer is not stepped at a mask-update step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparsejax import _registry
from sparsejax._checks import _is_none, check_sparsity
from sparsejax.select import Where
from sparsejax.training._transform import key_data, masked_transform
from sparsejax.training.drop_grow import DropGrowSchedule, drop_and_grow
from sparsejax.tree import compute_masks

__all__ = ["dynamic_sparse", "random_masks", "rigl", "sparse_evolutionary"]

PyTree = Any
ALLOCATIONS = _registry.SHAPE_ALLOCATIONS


def random_masks(params: PyTree, sparsity: float, key: jax.Array, *, allocation: str = "erk",
                 where: Where = None) -> PyTree:
    """Uniformly random masks with per-leaf sparsities from ``allocation`` (exact kept counts).

    Args:
        params: any pytree of arrays.
        sparsity: global sparsity in ``[0, 1]``.
        key: PRNG key.
        allocation: ``"erk"``, ``"er"`` or ``"uniform"``.
        where: leaf selector.

    Returns:
        a mask tree mirroring ``params``.
    """
    check_sparsity(sparsity)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS}; got {allocation!r}.")
    budget = _registry.ALLOCATIONS[allocation](params, float(sparsity), where=where)
    return compute_masks(params, sparsity=budget, scores="random", key=key, where=where)


def drop_fraction_at(step: jax.Array, drop_fraction: float, end_step: int) -> jax.Array:
    """Cosine-decayed drop fraction ``f0 / 2 * (1 + cos(pi * min(t, T) / T))`` (float32);
    `DropGrowSchedule.fraction` with ``anneal="cosine"``."""
    return DropGrowSchedule(1, end_step, drop_fraction, 0).fraction(step)


def dynamic_sparse(
    inner: optax.GradientTransformation,
    sparsity: float,
    *,
    grow: str = "gradient",
    allocation: str = "erk",
    drop_fraction: float = 0.3,
    update_every: int = 100,
    end_step: int,
    key: jax.Array,
    anneal: str = "cosine",
    update_at_mask_step: bool = False,
    where: Where = None,
) -> optax.GradientTransformationExtraArgs:
    """Prune-and-grow training at a constant sparsity (RigL with ``grow="gradient"``, SET with
    ``grow="random"``).

    At ``init`` each selected leaf gets a uniformly random mask with its ``allocation`` share of
    ``sparsity``. At steps ``t = k * update_every`` (``k >= 1``) with ``t <= end_step`` (inclusive;
    `DropGrowSchedule`), under ``lax.cond`` inside the compiled step, each leaf runs
    `drop_and_grow` with drop score ``|w|`` (the params this update receives), grow score
    ``|dense gradient|`` (RigL) or uniform noise (SET), the schedule's drop fraction and
    ``regrow_dropped=True`` (an entry dropped and regrown keeps its value and moments, as in
    rigl and jaxpruner). At such a step, as in rigl and jaxpruner, only the masks change: dropped
    entries become ``0``, grown entries start at ``0`` with zero moments (the inner optimizer's
    params-shaped moments of every changed entry are reset), kept entries do not move and the
    inner optimizer is not stepped (``update_at_mask_step=True``: it is, on the entries kept by
    both masks). ``update_every`` counts optimizer steps (under ``optax.MultiSteps``, applied
    updates). Params stay dense until the first step unless `sparsify` is applied at init. A leaf
    the inner optimizer does not move (a frozen layer: zero learning rate under
    ``optax.multi_transform``) keeps its mask (``hold_frozen`` of `masked_transform`): growing
    there would replace trained weights by zeros that never train.

    Args:
        inner: the user's optimizer; its per-parameter state must mirror the params (adam, adamw,
            sgd with momentum, chains of them, ``inject_hyperparams``), checked at ``init``.
        sparsity: global sparsity in ``[0, 1]``.
        grow: ``"gradient"`` (RigL: ``|dense gradient|``) or ``"random"`` (SET).
        allocation: ``"erk"`` (default), ``"er"`` or ``"uniform"``.
        drop_fraction: initial drop fraction ``f0`` in ``[0, 1]``.
        update_every: mask update period ``>= 1``, in optimizer steps.
        end_step: last step (inclusive) with a mask update; ``>= update_every``.
        key: PRNG key (initial masks; random growth).
        anneal: ``"cosine"`` (RigL / jaxpruner, default) or ``"constant"`` (Mocanu et al.'s SET:
            the same fraction at every update).
        update_at_mask_step: also take the inner optimizer step at a mask-update step.
        where: leaf selector.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.

    Raises:
        ValueError / TypeError: bad sparsity / drop fraction / allocation / grow / anneal,
            ``update_every < 1``, ``end_step < update_every``, a missing key; at ``init`` an inner
            state leaf the moment reset cannot match to a parameter.
    """
    check_sparsity(sparsity)
    schedule = DropGrowSchedule.create(update_every=update_every, end_step=end_step,
                                       drop_fraction=drop_fraction, anneal=anneal)
    if grow not in ("gradient", "random"):
        raise ValueError(f"`grow` must be 'gradient' (RigL) or 'random' (SET); got {grow!r}.")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS}; got {allocation!r}.")
    key = key_data(key)

    def init_masks(params, k):
        return random_masks(params, sparsity, k, allocation=allocation, where=where)

    def update_masks(params, grads, old, step, k):
        fraction = schedule.fraction(step)
        n = len(jax.tree.leaves(old))
        keys = iter(jax.random.split(k, max(n, 1)))

        def leaf(m, w, g):
            score = (jnp.abs(g) if grow == "gradient" else jax.random.uniform(next(keys), m.shape))
            return drop_and_grow(m, jnp.abs(w), score, fraction, regrow_dropped=True)

        return jax.tree.map(lambda m, w, g: None if m is None else leaf(m, w, g),
                            old, params, grads, is_leaf=_is_none)

    return masked_transform(inner, init_masks, update_masks, schedule, key=key, reset=True,
                            update_at_mask_step=update_at_mask_step, hold_frozen=True)


def rigl(inner: optax.GradientTransformation, sparsity: float, *, key: jax.Array,
         end_step: int, allocation: str = "erk", drop_fraction: float = 0.3,
         update_every: int = 100, update_at_mask_step: bool = False, where: Where = None
         ) -> optax.GradientTransformationExtraArgs:
    """RigL (Evci et al. 2020): `dynamic_sparse` growing by ``|dense gradient|``, cosine drop
    fraction.

    ``key`` (the initial random ERK masks) and ``end_step`` (inclusive) are required; see
    `dynamic_sparse` for the arguments.
    """
    return dynamic_sparse(inner, sparsity, grow="gradient", allocation=allocation,
                          drop_fraction=drop_fraction, update_every=update_every,
                          end_step=end_step, key=key, update_at_mask_step=update_at_mask_step,
                          where=where)


def sparse_evolutionary(inner: optax.GradientTransformation, sparsity: float, *,
                        key: jax.Array, end_step: int, allocation: str = "erk",
                        drop_fraction: float = 0.3, update_every: int = 100,
                        anneal: str = "cosine", update_at_mask_step: bool = False,
                        where: Where = None) -> optax.GradientTransformationExtraArgs:
    """SET, sparse evolutionary training (Mocanu et al. 2018): `dynamic_sparse` growing at random.

    The default follows the RigL / jaxpruner SET baseline (cosine drop fraction, drop by
    ``|w|``); ``anneal="constant"`` gives Mocanu's constant fraction (drop by ``|w|`` over all
    kept weights, not separately among positive and negative ones). ``key`` and ``end_step``
    (inclusive) are required; see `dynamic_sparse` for the arguments.
    """
    return dynamic_sparse(inner, sparsity, grow="random", allocation=allocation,
                          drop_fraction=drop_fraction, update_every=update_every,
                          end_step=end_step, key=key, anneal=anneal,
                          update_at_mask_step=update_at_mask_step, where=where)

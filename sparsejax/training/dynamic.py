"""Dynamic sparse training as optax transforms: RigL (Evci et al. 2020) and SET (Mocanu et al. 2018).

Both keep each leaf's nonzero count constant: every ``update_every`` steps until ``end_step`` they
drop the ``floor(nnz * f_t)`` kept entries of lowest ``|w|`` and grow as many among the entries
not kept after the drop, by ``|dense gradient|`` (RigL) or at random (SET), with the cosine-decayed
drop fraction ``f_t = f0 / 2 * (1 + cos(pi * t / end_step))`` (rigl ``sparse_optimizers_base.py``,
jaxpruner ``sparse_trainers.py``). Grown weights start at zero; the inner optimizer's moments of
grown and dropped entries are reset to zero (`reset_moments`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparsejax import _registry
from sparsejax import masks as _masks
from sparsejax._checks import _is_none, check_int, check_sparsity
from sparsejax.select import Where
from sparsejax.training._transform import key_data, masked_transform
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
    """Cosine-decayed drop fraction ``f0 / 2 * (1 + cos(pi * min(t, T) / T))`` (float32)."""
    t = jnp.minimum(jnp.asarray(step, jnp.float32), end_step)
    return jnp.float32(drop_fraction) / 2 * (1 + jnp.cos(jnp.float32(math.pi) * t / end_step))


def _drop_and_grow(w, g, m, fraction, grow, key):
    nnz = jnp.sum(m, dtype=jnp.int32)
    n_drop = jnp.floor(nnz.astype(jnp.float32) * fraction).astype(jnp.int32)
    kept = _masks.topk(jnp.where(m, jnp.abs(w).astype(jnp.float32), -jnp.inf), nnz - n_drop)
    if grow == "gradient":
        grow_score = jnp.abs(g).astype(jnp.float32)
    else:
        grow_score = jax.random.uniform(key, m.shape)
    grown = _masks.topk(jnp.where(kept, -jnp.inf, grow_score), n_drop)
    return kept | grown


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
    where: Where = None,
) -> optax.GradientTransformationExtraArgs:
    """Prune-and-grow training at a constant sparsity (RigL with ``grow="gradient"``, SET with
    ``grow="random"``).

    At ``init`` each selected leaf gets a uniformly random mask with its ``allocation`` share of
    ``sparsity``. At steps ``t > 0`` with ``t % update_every == 0`` and ``t < end_step``, under
    ``lax.cond`` inside the compiled step: drop ``floor(nnz * f_t)`` kept entries of lowest
    ``|w|`` (the params this update receives), then grow as many with the highest grow score among
    the entries not kept after the drop (an entry dropped and regrown keeps its value and moments).
    At such a step the new masks are computed first (from the incoming params and dense
    gradients), the inner optimizer's params-shaped moments of dropped and grown entries are reset
    to zero and those entries receive zero gradients, so they end the step with zero moments and
    zero weights; entries kept by both masks take the ordinary inner update.

    Args:
        inner: the user's optimizer; its per-parameter state must mirror the params (adam, adamw,
            sgd with momentum, chains of them, ``inject_hyperparams``), checked at ``init``.
        sparsity: global sparsity in ``[0, 1]``.
        grow: ``"gradient"`` (RigL: ``|dense gradient|``) or ``"random"`` (SET).
        allocation: ``"erk"`` (default), ``"er"`` or ``"uniform"``.
        drop_fraction: initial drop fraction ``f0`` in ``[0, 1]``.
        update_every: mask update period ``>= 1``.
        end_step: last step (exclusive) with mask updates; must be after the first update.
        key: PRNG key (initial masks; random growth).
        where: leaf selector.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.

    Raises:
        ValueError / TypeError: bad sparsity / drop fraction / allocation / grow, ``update_every
            < 1``, ``end_step <= update_every``, a missing key; at ``init`` an inner state leaf the
            moment reset cannot match to a parameter.
    """
    check_sparsity(sparsity)
    check_sparsity(drop_fraction, "drop_fraction")
    update_every = check_int(update_every, "update_every", minimum=1)
    end_step = check_int(end_step, "end_step", minimum=0)
    if end_step <= update_every:
        raise ValueError(f"`end_step` must be after the first mask update (step update_every = "
                         f"{update_every}); got {end_step}.")
    if grow not in ("gradient", "random"):
        raise ValueError(f"`grow` must be 'gradient' (RigL) or 'random' (SET); got {grow!r}.")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS}; got {allocation!r}.")
    key = key_data(key)

    def init_masks(params, k):
        return random_masks(params, sparsity, k, allocation=allocation, where=where)

    def update_masks(params, grads, old, step, k):
        fraction = drop_fraction_at(step, drop_fraction, end_step)
        n = len(jax.tree.leaves(old))
        keys = iter(jax.random.split(k, max(n, 1)))
        return jax.tree.map(
            lambda m, w, g: None if m is None else _drop_and_grow(w, g, m, fraction, grow,
                                                                  next(keys)),
            old, params, grads, is_leaf=_is_none)

    def should_update(step):
        return (step > 0) & (step % update_every == 0) & (step < end_step)

    return masked_transform(inner, init_masks, update_masks, should_update, key=key, reset=True)


def rigl(inner: optax.GradientTransformation, sparsity: float, *, allocation: str = "erk",
         drop_fraction: float = 0.3, update_every: int = 100, end_step: int,
         key: jax.Array | None = None, where: Where = None
         ) -> optax.GradientTransformationExtraArgs:
    """RigL (Evci et al. 2020): `dynamic_sparse` growing by ``|dense gradient|``.

    ``key`` is required (the initial random ERK masks); see `dynamic_sparse` for the arguments.
    """
    return dynamic_sparse(inner, sparsity, grow="gradient", allocation=allocation,
                          drop_fraction=drop_fraction, update_every=update_every,
                          end_step=end_step, key=key, where=where)


def sparse_evolutionary(inner: optax.GradientTransformation, sparsity: float, *,
                        allocation: str = "erk", drop_fraction: float = 0.3,
                        update_every: int = 100, end_step: int, key: jax.Array | None = None,
                        where: Where = None) -> optax.GradientTransformationExtraArgs:
    """SET, sparse evolutionary training (Mocanu et al. 2018): `dynamic_sparse` growing at random.

    ``key`` is required; see `dynamic_sparse` for the arguments.
    """
    return dynamic_sparse(inner, sparsity, grow="random", allocation=allocation,
                          drop_fraction=drop_fraction, update_every=update_every,
                          end_step=end_step, key=key, where=where)

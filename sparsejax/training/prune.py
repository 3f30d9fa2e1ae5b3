"""Gradual pruning as an optax transform (Zhu & Gupta 2017; jaxpruner's MagnitudePruning,
SaliencyPruning, GlobalMagnitudePruning), for any pattern, score, allocation and schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import _registry
from sparsejax import schedules as _schedules
from sparsejax._checks import _is_none, check_int, check_sparsity, is_concrete
from sparsejax.select import Where
from sparsejax.training._transform import full_masks, key_data, masked_transform
from sparsejax.tree import compute_masks

__all__ = ["prune"]

PyTree = Any
SCORES = tuple(name for name in _registry.SCORES if name != "wanda")  # wanda needs calibration
ALLOCATIONS = tuple(_registry.ALLOCATIONS)


def _score_fn(scores: str | Callable) -> Callable:
    """``(param, grad, key) -> score array`` (higher = kept)."""
    if callable(scores):
        return lambda w, g, k: jnp.asarray(scores(w, g))
    if scores == "magnitude":
        return lambda w, g, k: jnp.abs(w)
    if scores == "saliency":
        return lambda w, g, k: jnp.abs(w * g)
    if scores == "random":
        return lambda w, g, k: jax.random.uniform(k, jnp.shape(w))
    raise ValueError(f"`scores` must be one of {SCORES} or a callable (param, grad) -> scores; "
                     f"got {scores!r}.")


def _final_sparsity(schedule: Callable) -> float:
    """The schedule's value at a step past any ramp (2**30), for ERK/ER budgets."""
    value = schedule(2 ** 30)
    if not is_concrete(value):
        raise TypeError("`schedule` must be evaluable eagerly for allocation='erk'/'er' (its final "
                        "sparsity fixes the per-layer budgets); got a schedule returning a tracer.")
    return float(np.asarray(value))


def prune(
    inner: optax.GradientTransformation,
    schedule: float | Callable,
    *,
    pattern: str | Callable = "unstructured",
    scores: str | Callable = "magnitude",
    allocation: str | Callable = "uniform",
    where: Where = None,
    update_every: int = 10,
    end_step: int | None = None,
    key: jax.Array | None = None,
    **pattern_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Gradual pruning: wrap ``inner`` so the weights are pruned to ``schedule(step)`` and held.

    Every ``update_every`` optimizer steps (``count % update_every == 0``, step 0 included) the
    masks are recomputed by ``pattern x scores x allocation`` at sparsity ``schedule(count)``,
    under ``lax.cond`` (one compiled step). Entries already pruned get score ``-inf``, so under a
    non-decreasing schedule masks only shrink: a pruned entry never comes back. The updates
    returned leave the params exactly masked after every step (pruned entries get ``-params``),
    so ``optax.apply_updates`` is all the user calls. Gradients are masked (by the masks before
    and after this step's update) before ``inner`` sees them: moments of pruned entries receive
    zeros, and a global statistic such as ``optax.clip_by_global_norm`` sees the sparse gradient.

    Step convention: ``count`` = steps already taken (TF-MOT's; jaxpruner evaluates its
    ``PolynomialSchedule`` at ``count + 1``). A float ``schedule`` is one-shot pruning at step 0.
    Put this transform outermost (a transform chained after it would rescale the ``-params``).

    Args:
        inner: the user's optimizer (``optax.adam(1e-3)``, a chain, ``inject_hyperparams``...).
        schedule: a float in ``[0, 1]`` or a ``step -> sparsity`` function such as
            `sparsejax.schedules.polynomial`.
        pattern: ``"unstructured"``, ``"nm"`` (``n=``, ``m=``, ``axis=``; the schedule's value is
            not used: every update re-selects N of M among kept entries), ``"block"``
            (``block_shape=``), ``"channel"``, or a callable ``(scores, sparsity) -> mask``.
        scores: ``"magnitude"`` (``|w|``), ``"saliency"`` (``|w * g|`` with the gradients this
            transform receives), ``"random"`` (needs ``key``), or a callable
            ``(param, grad) -> scores``.
        allocation: ``"uniform"``, ``"global"`` (one top-k over all leaves; unstructured only),
            ``"erk"``/``"er"`` (per-leaf budgets of the final sparsity, each leaf following the
            schedule scaled to its budget, as jaxpruner does), or a callable
            ``(params, sparsity, *, where) -> per-leaf sparsity tree`` (treated like ``"erk"``; it is
            called while tracing the step, so it must read only the params' shapes).
        where: leaf selector (default: float leaves with ``ndim >= 2``).
        update_every: mask update period in steps, ``>= 1``.
        end_step: last step (inclusive) with a mask update, e.g. the schedule's end (jaxpruner's
            ``update_end_step``); ``None`` keeps updating every ``update_every`` steps (a no-op
            once the schedule is constant, but each such update costs a top-k).
        key: PRNG key, needed by ``scores="random"``.
        **pattern_kwargs: passed to the pattern (``n``, ``m``, ``axis``, ``block_shape``...).

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.

    Raises:
        ValueError / TypeError: a sparsity outside ``[0, 1]``, ``update_every < 1``, an unknown
            score / allocation, ``scores="random"`` without a key, ``"nm"`` with a non-uniform
            allocation, ``"global"`` with a structured pattern; pattern/shape errors at ``init``.
    """
    update_every = check_int(update_every, "update_every", minimum=1)
    if end_step is not None:
        end_step = check_int(end_step, "end_step", minimum=0)
    if not callable(schedule):
        check_sparsity(schedule, "schedule")
        schedule = _schedules.constant(float(schedule))
    score = _score_fn(scores)
    if scores == "random":
        key = key_data(key)
    elif key is not None:
        key = key_data(key)
    if not (callable(allocation) or allocation in ALLOCATIONS):
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS} or a callable "
                         f"(params, sparsity, *, where) -> sparsity tree; got {allocation!r}.")
    if pattern == "nm" and allocation != "uniform":
        raise ValueError(f"`allocation` must be 'uniform' with pattern='nm' (every leaf keeps N of "
                         f"M, there is no budget to split); got {allocation!r}.")
    if allocation == "global" and pattern != "unstructured":
        raise ValueError(f"`allocation` 'global' needs pattern='unstructured' (one top-k over all "
                         f"leaves); got pattern {pattern!r}.")
    # ERK / ER / callable: per-leaf budgets of the final sparsity, from the shapes only, so they are
    # recomputed identically at every trace (a restored state needs no init-time cache)
    final = None if allocation in ("uniform", "global") else _final_sparsity(schedule)

    def budgets(params):
        if allocation in ("erk", "er"):
            return _registry.ALLOCATIONS[allocation](params, final, where=where)
        return allocation(params, final, where=where)

    def init_masks(params, k):
        del k
        return full_masks(params, where)

    def update_masks(params, grads, old, step, k):
        s = schedule(step)
        n_leaves = len(jax.tree.leaves(params))
        keys = list(jax.random.split(k, n_leaves)) if k is not None else [None] * n_leaves
        flat, treedef = jax.tree.flatten(params)
        key_tree = jax.tree.unflatten(treedef, list(range(len(flat))))

        def leaf_score(m, w, g, i):
            if m is None:
                return None
            sc = score(w, g, keys[i]).astype(jnp.float32)
            return jnp.where(m, sc, -jnp.inf)

        score_tree = jax.tree.map(leaf_score, old, params, grads, key_tree, is_leaf=_is_none)
        if pattern == "nm":  # n of every m: no sparsity, no allocation
            sparsity, alloc = None, None
        elif final is not None:  # per-leaf sparsities: the allocation is already in them
            ratio = s / final if final > 0 else jnp.float32(0.0)
            sparsity = jax.tree.map(lambda b: None if b is None else b * ratio, budgets(params),
                                    is_leaf=_is_none)
            alloc = None
        else:
            sparsity, alloc = s, allocation
        return compute_masks(params, pattern, sparsity=sparsity, scores=score_tree, where=where,
                             allocation=alloc, **pattern_kwargs)

    def should_update(step):
        due = step % update_every == 0
        return due if end_step is None else due & (step <= end_step)

    return masked_transform(inner, init_masks, update_masks, should_update, key=key)

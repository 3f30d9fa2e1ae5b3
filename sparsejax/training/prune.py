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
from sparsejax._checks import (
    _is_none,
    check_callable,
    check_sparsity,
    in_unit_interval,
    is_concrete,
    is_function,
    must_be,
    sparsity_checked,
)
from sparsejax.select import Where
from sparsejax.training._transform import full_masks, key_data, masked_transform
from sparsejax.training.drop_grow import hyper_int
from sparsejax.tree import compute_masks

__all__ = ["prune"]

PyTree = Any
SCORES = tuple(name for name in _registry.SCORES if name != "wanda")  # wanda needs calibration
ALLOCATIONS = tuple(_registry.ALLOCATIONS)


def _score_fn(scores: str | Callable, grad_scores: Callable | None) -> Callable:
    """``(path, param, grad, key) -> score array`` (higher = kept)."""
    if grad_scores is not None:
        check_callable(grad_scores, "grad_scores", "a callable (param, grad) -> scores")
        if scores != "magnitude":
            raise ValueError(must_be("scores", "left at its default 'magnitude' when grad_scores "
                                     "is given (one score rule)", scores))
        return lambda path, w, g, k: jnp.asarray(grad_scores(w, g))
    if is_function(scores):  # compute_masks' contract: (path, leaf) -> scores
        return lambda path, w, g, k: jnp.asarray(scores(path, w))
    if scores == "magnitude":
        return lambda path, w, g, k: jnp.abs(w)
    if scores == "saliency":
        return lambda path, w, g, k: jnp.abs(w * g)
    if scores == "random":
        return lambda path, w, g, k: jax.random.uniform(k, jnp.shape(w))
    raise ValueError(must_be("scores", f"one of {SCORES} or a callable (path, leaf) -> scores "
                             "(compute_masks' contract; use grad_scores= for (param, grad) -> "
                             "scores)", scores))


def _check_schedule_value(value: Any, step: int) -> None:
    """A concrete schedule value outside ``[0, 1]`` (or NaN) raises as the same float would."""
    if is_concrete(value):
        check_sparsity(value, f"schedule({step})")


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
    grad_scores: Callable | None = None,
    update_every: int = 10,
    begin_step: int | None = None,
    end_step: int | None = None,
    update_at_mask_step: bool = True,
    key: jax.Array | None = None,
    n: int | None = None,
    m: int | None = None,
    axis: int | None = None,
    block_shape: tuple[int, ...] | None = None,
    pattern_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradual pruning: wrap ``inner`` so the weights are pruned to ``schedule(step)`` and held.

    At the steps ``t`` (``count``, optimizer steps already taken) with ``begin_step <= t <=
    end_step`` and ``(t - begin_step) % update_every == 0`` (TF-MOT's ``PruningSchedule``: the
    period counts from ``begin_step``, ``end_step`` inclusive) the masks are recomputed by ``pattern
    x scores x allocation`` at sparsity ``schedule(t)``, under ``lax.cond`` (one compiled step).
    Before ``begin_step`` the weights stay dense, whatever ``schedule(0)`` is (TF-MOT: the first
    mask is chosen from the warmed-up weights). Entries already pruned get score ``-inf``, so under
    a non-decreasing schedule masks only shrink: a pruned entry never comes back. The updates
    returned leave the params exactly masked after every step (pruned entries get ``-params``), so
    ``optax.apply_updates`` is all the user calls. Gradients are masked (by the masks before and
    after this step's update) before ``inner`` sees them: moments of pruned entries receive zeros,
    and a global statistic such as ``optax.clip_by_global_norm`` sees the sparse gradient.

    Step convention: ``count`` = steps already taken (TF-MOT's; jaxpruner evaluates its
    ``PolynomialSchedule`` at ``count + 1``). A float ``schedule`` is one-shot pruning at step 0.
    Put this transform outermost (a transform chained after it would rescale the ``-params``).

    Args:
        inner: the user's optimizer (``optax.adam(1e-3)``, a chain, ``inject_hyperparams``...).
        schedule: a float in ``[0, 1]`` or a ``step -> sparsity`` function such as
            `sparsejax.schedules.polynomial`.
        pattern: ``"unstructured"``, ``"nm"`` or ``"nm_transposable"`` (``n=``, ``m=``,
            ``axis=``; the schedule's value is not used: every update re-selects N of M among kept
            entries; the transposable one N of M along both axes), ``"block"``
            (``block_shape=``), ``"channel"``, or a callable ``(scores, sparsity) -> mask``.
        scores: ``"magnitude"`` (``|w|``), ``"saliency"`` (``|w * g|`` with the gradients this
            transform receives), ``"random"`` (needs ``key``), or a callable ``(path, leaf) ->
            scores`` (`sparsejax.compute_masks`' contract).
        grad_scores: a callable ``(param, grad) -> scores`` that also reads the gradient this
            transform receives (replaces ``scores``, which must stay at its default).
        allocation: ``"uniform"``, ``"global"`` (one top-k over all leaves; unstructured only),
            ``"erk"``/``"er"`` (per-leaf budgets of the final sparsity, each leaf following the
            schedule scaled to its budget, as jaxpruner does), or a callable
            ``(params, sparsity, *, where) -> per-leaf sparsity tree`` (treated like ``"erk"``; it is
            called while tracing the step, so it must read only the params' shapes).
        where: leaf selector (default: float leaves with ``ndim >= 2``).
        update_every: mask update period in optimizer steps, ``>= 1`` (TF-MOT's ``frequency``).
        begin_step: first mask update; ``None``: the schedule's ``begin_step`` if it has one
            (`sparsejax.schedules.polynomial`), else ``0``.
        end_step: last step (inclusive) with a mask update; ``None``: the schedule's
            ``end_step`` if it has one, else no end (each update past the ramp is a no-op that
            costs a top-k).
        update_at_mask_step: also take the inner optimizer step at a mask-update step (on the
            entries kept by both masks), as TF-MOT does (its pruned forward and the optimizer
            step happen in the same step); ``False`` only changes the masks at such a step.
        key: PRNG key, needed by ``scores="random"``.
        n: ``"nm"``: entries kept per group.
        m: ``"nm"``: group size.
        axis: ``"nm"`` / ``"channel"``: the pattern's axis.
        block_shape: ``"block"``: the block shape.
        pattern_kwargs: any other keywords for the pattern (e.g. a callable pattern's). All
            arguments are named parameters, so ``optax.inject_hyperparams(prune,
            static_args=...)`` can name any of them.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SparseState`.

    Raises:
        ValueError / TypeError: a sparsity outside ``[0, 1]``, ``update_every < 1``, an unknown
            score / allocation, ``scores="random"`` without a key, ``"nm"`` with a non-uniform
            allocation, ``"global"`` with a structured pattern; pattern/shape errors at ``init``.
    """
    update_every = hyper_int(update_every, "update_every", minimum=1)
    if begin_step is None:
        begin_step = getattr(schedule, "begin_step", 0)
    begin_step = hyper_int(begin_step, "begin_step", minimum=0)
    if end_step is None:
        end_step = getattr(schedule, "end_step", None)
    if end_step is not None:
        end_step = hyper_int(end_step, "end_step", minimum=0)
        if is_concrete(end_step) and is_concrete(begin_step) and end_step < begin_step:
            raise ValueError(must_be("end_step", f">= begin_step = {begin_step} (inclusive)",
                                     end_step))
    pattern_kwargs = dict(pattern_kwargs or {})
    pattern_kwargs.update({k: v for k, v in dict(n=n, m=m, axis=axis, block_shape=block_shape)
                           .items() if v is not None})
    if not is_function(schedule):  # a float, or a traced value under optax.inject_hyperparams
        check_sparsity(schedule, "schedule")
        value = schedule
        schedule = in_unit_interval(lambda step: jnp.asarray(value, jnp.float32))
    else:  # a callable evaluable eagerly must give a sparsity, as a float would
        for t in sorted({0, begin_step, 2 ** 30} | ({end_step} if end_step is not None else set())):
            _check_schedule_value(schedule(t), t)
    score = _score_fn(scores, grad_scores)
    if scores == "random":
        key = key_data(key)
    elif key is not None:
        key = key_data(key)
    if not (callable(allocation) or allocation in ALLOCATIONS):
        raise ValueError(f"`allocation` must be one of {ALLOCATIONS} or a callable "
                         f"(params, sparsity, *, where) -> sparsity tree; got {allocation!r}.")
    if pattern in _registry.NM_PATTERNS and allocation != "uniform":
        raise ValueError(f"`allocation` must be 'uniform' with pattern={pattern!r} (every leaf "
                         f"keeps N of "
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
        s = jnp.asarray(schedule(step), jnp.float32)
        if not getattr(schedule, "in_unit_interval", False):
            # a traced value outside [0, 1] / NaN: an error under checkify (errors=user_checks)
            s = check_sparsity(s, "schedule(step)")
        with sparsity_checked():  # checked once above: no checkify effect per mask function
            return _masks_at(params, grads, old, s, k)

    def _masks_at(params, grads, old, s, k):
        n_leaves = len(jax.tree.leaves(params))
        keys = list(jax.random.split(k, n_leaves)) if k is not None else [None] * n_leaves
        flat, treedef = jax.tree.flatten(params)
        key_tree = jax.tree.unflatten(treedef, list(range(len(flat))))

        def leaf_score(path, m, w, g, i):
            if m is None:
                return None
            sc = score(path, w, g, keys[i]).astype(jnp.float32)
            return jnp.where(m, sc, -jnp.inf)

        score_tree = jax.tree_util.tree_map_with_path(leaf_score, old, params, grads, key_tree,
                                                      is_leaf=_is_none)
        if pattern in _registry.NM_PATTERNS:  # n of every m: no sparsity, no allocation
            sparsity, alloc = None, None
        elif final is not None:  # per-leaf sparsities: the allocation is already in them
            ratio = s / final if final > 0 else jnp.float32(0.0)
            sparsity = jax.tree.map(lambda b: None if b is None else b * ratio, budgets(params),
                                    is_leaf=_is_none)
            alloc = None
        else:
            sparsity, alloc = s, allocation
        # the scores go in as a function of the leaf path, not as a tree: a tree of scores for an
        # Equinox model is itself a callable module
        by_path = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(
            score_tree)[0]}
        return compute_masks(params, pattern, sparsity=sparsity, where=where, allocation=alloc,
                             scores=lambda path, leaf: by_path[jax.tree_util.keystr(path)],
                             **pattern_kwargs)

    def should_update(step):
        due = (step >= begin_step) & ((step - begin_step) % update_every == 0)
        return due if end_step is None else due & (step <= end_step)

    return masked_transform(inner, init_masks, update_masks, should_update, key=key,
                            update_at_mask_step=update_at_mask_step)

"""SSVI's subspace update: drop low-score active entries, grow inactive ones, nnz constant per leaf.

Every ``update_every`` steps while ``step < end_step`` (SSVI: 0.75 of training), each selected leaf
drops ``n = floor(nnz * f_t)`` active entries with the lowest removal score and grows ``n`` entries
with the highest ``|dL/dmu|`` (or at random), where
``f_t = drop_fraction / 2 * (1 + cos(pi * step / end_step))`` (RigL's cosine decay; SSVI's
``0.15 * (1 + cos(...))`` is ``drop_fraction = 0.3``). By default growth is among the entries
inactive before the update (``n`` is capped at ``size - nnz``); ``regrow_dropped=True`` lets a
just-dropped entry grow back, as the reference (``rigl_torch/RigL.py::_rigl_step``) does. Newly
grown entries start at ``mu = 0`` and ``rho`` = the mean ``rho`` of the entries active before and
after the update. The masks come from `sparsejax.training.drop_and_grow` and the schedule is a
`sparsejax.training.DropGrowSchedule` (``begin_step = update_every``, ``end_step`` inclusive,
cosine fraction); under ``jit`` one ``lax.cond`` on the step.

``step`` is the reference's scheduler counter: the 1-based index of the training step (the
reference increments it before testing ``step % update_every == 0 and step < end_step``). At
``step = end_step`` the cosine fraction is ``0``: nothing changes there, so that step is not an
update step (`is_update_step`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int

from sparsejax._checks import (
    _is_none,
    check_bool,
    check_choice,
    check_int,
    check_same_structure,
    check_sparsity,
)
from sparsejax.bayes.lrt import expected_abs, snr_mean_abs
from sparsejax.bayes.posterior import Posterior, _check_posterior, sigma_of
from sparsejax.training import DropGrowSchedule, drop_and_grow

__all__ = ["CRITERIA", "removal_scores", "subspace_update"]

Criterion = str | Callable[[jax.Array, jax.Array], jax.Array]

# the reference's names (train_cifar.py --drop_criteria), its default first
CRITERIA: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "SNR_mean_abs": snr_mean_abs,
    "E_mean_abs": expected_abs,
    "snr": lambda mu, sigma: jnp.abs(mu) / sigma,
    "mean": lambda mu, sigma: jnp.abs(mu),
}
DEFAULT_CRITERION = "SNR_mean_abs"
GROW = ("gradient", "random")


def _criterion_fn(criterion: Criterion) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if callable(criterion):
        return criterion
    if criterion not in CRITERIA:
        raise ValueError(f"`criterion` must be one of {sorted(CRITERIA)} or a callable "
                         f"(mu, sigma) -> score; got {criterion!r}.")
    return CRITERIA[criterion]


def schedule(update_every: int, end_step: int, drop_fraction: float) -> DropGrowSchedule:
    """SSVI's `sparsejax.training.DropGrowSchedule`, on the reference's 1-based step counter."""
    return DropGrowSchedule.create(update_every=update_every, end_step=end_step,
                                   drop_fraction=drop_fraction, begin_step=update_every)


def is_update_step(sched: DropGrowSchedule, step: Int[Array, ""] | int) -> jax.Array:
    """Whether the subspace changes at ``step`` (1-based): ``sched.active(step)`` with a positive
    drop fraction, i.e. ``step % update_every == 0`` and ``0 < step < end_step`` (bool scalar)."""
    return sched.active(step) & (sched.fraction(step) > 0)


def removal_scores(posterior: Posterior, criterion: Criterion = DEFAULT_CRITERION) -> Any:
    """The removal score of every entry of the selected leaves (``None`` elsewhere).

    Args:
        posterior: a `Posterior`.
        criterion: a name of the reference (``--drop_criteria``): ``"SNR_mean_abs"``
            (`snr_mean_abs`, ``E|theta| / std|theta|``, the reference's default),
            ``"E_mean_abs"`` (`expected_abs`, ``E|theta|``), ``"snr"`` (``|mu| / sigma``),
            ``"mean"`` (``|mu|``); or a callable ``(mu, sigma) -> score``; higher = kept.

    Returns:
        a tree of float scores mirroring ``posterior.mu`` (``None`` on unselected leaves).
    """
    _check_posterior(posterior)
    fn = _criterion_fn(criterion)
    return jax.tree.map(lambda mu, rho, m: None if m is None else fn(mu, sigma_of(rho, m)),
                        posterior.mu, posterior.rho, posterior.mask, is_leaf=_is_none)


def grow_scores(posterior: Posterior, grads: Any, grow: str, key: jax.Array | None) -> list:
    """One grow score per selected leaf (``None`` elsewhere), flattened in ``posterior.mu``'s
    order: ``|dL/dmu|`` (``grow="gradient"``) or uniform noise (``grow="random"``)."""
    mu_leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    mask_leaves = treedef.flatten_up_to(posterior.mask)
    if grow == "gradient":
        if isinstance(grads, Posterior):
            grads = grads.mu
        if grads is None:
            raise ValueError("`grads` must be a tree of dL/dmu mirroring `posterior.mu` for "
                             "grow='gradient'; got None.")
        check_same_structure(posterior.mu, grads, "grads", "posterior.mu")
        out = []
        for g, m in zip(treedef.flatten_up_to(grads), mask_leaves):
            if m is not None and jnp.shape(g) != m.shape:
                raise ValueError(f"`grads` leaves must have their posterior leaf's shape; got "
                                 f"{jnp.shape(g)} for a leaf of shape {m.shape}.")
            out.append(None if m is None else jnp.abs(g))
        return out
    if key is None:
        raise ValueError("`key` must be a jax.random key for grow='random'; got None.")
    keys = jax.random.split(key, max(len(mu_leaves), 1))
    return [None if m is None else jax.random.uniform(k, m.shape)
            for k, m in zip(keys, mask_leaves)]


def new_masks(posterior: Posterior, scores: list, fraction: jax.Array, criterion: Criterion,
              regrow_dropped: bool) -> list:
    """``(new mask, mean rho of the entries kept through the update)`` per selected leaf
    (``None`` elsewhere): `sparsejax.training.drop_and_grow` on the removal scores."""
    fn = _criterion_fn(criterion)
    mu_leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    out = []
    for mu, rho, m, g in zip(mu_leaves, treedef.flatten_up_to(posterior.rho),
                             treedef.flatten_up_to(posterior.mask), scores):
        if m is None:
            out.append(None)
            continue
        new = drop_and_grow(m, fn(mu, sigma_of(rho, m)), g, fraction,
                            regrow_dropped=regrow_dropped)
        stay = m & new
        n_stay = jnp.maximum(jnp.sum(stay, dtype=jnp.int32), 1)
        out.append((new, jnp.sum(jnp.where(stay, rho, 0), dtype=jnp.float32) / n_stay))
    return out


def subspace_update(
    posterior: Posterior,
    grads: Any,
    step: Int[Array, ""] | int,
    *,
    end_step: int,
    update_every: int = 100,
    drop_fraction: float = 0.3,
    criterion: Criterion = DEFAULT_CRITERION,
    grow: str = "gradient",
    regrow_dropped: bool = False,
    key: jax.Array | None = None,
) -> Posterior:
    """SSVI's drop-and-grow step (a no-op unless ``step`` is an update step).

    An update happens when ``step % update_every == 0`` and ``0 < step < end_step``
    (`is_update_step`; ``step`` is the reference's 1-based step counter); otherwise the posterior
    is returned unchanged. Works with a traced ``step`` (``lax.cond``; one compiled function for all
    steps).

    Args:
        posterior: a `Posterior`.
        grads: ``dL/dmu``, a tree mirroring ``posterior.mu`` (or a `Posterior` of gradients, whose
            ``mu`` is used); the *dense* gradient (as `linear_lrt`/`conv_lrt` give). Unused (may be
            ``None``) with ``grow="random"``.
        step: the training step (int or traced int scalar).
        end_step: the step at which the cosine drop fraction reaches ``0`` (the reference's
            ``T_end``, SSVI: 0.75 of training): the subspace changes at steps ``< end_step``.
        update_every: period ``Delta T`` of the updates.
        drop_fraction: initial drop fraction (cosine-decayed,
            `sparsejax.training.DropGrowSchedule.fraction`).
        criterion: removal score, see `removal_scores`.
        grow: ``"gradient"`` (highest ``|dL/dmu|``) or ``"random"``.
        regrow_dropped: ``False`` (default): grow only among the entries inactive before the
            update, so every dropped entry leaves; ``True``: a just-dropped entry may grow back
            (and keeps its ``mu``/``rho``), as in the reference.
        key: PRNG key, required for ``grow="random"``.

    Returns:
        the updated `Posterior` (same structure, shapes and per-leaf nnz).

    Raises:
        ValueError: bad ``criterion``/``grow``/``drop_fraction``, ``grads`` that do not mirror the
            posterior, ``grow="random"`` without ``key``.
    """
    _check_posterior(posterior)
    update_every = check_int(update_every, "update_every", minimum=1)
    end_step = check_int(end_step, "end_step", minimum=1)
    check_sparsity(drop_fraction, "drop_fraction")
    fn = _criterion_fn(criterion)
    check_choice(grow, "grow", GROW)
    regrow_dropped = check_bool(regrow_dropped, "regrow_dropped")
    sched = schedule(update_every, end_step, drop_fraction)
    scores = grow_scores(posterior, grads, grow, key)
    mu_leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    leaves = (tuple(mu_leaves), tuple(treedef.flatten_up_to(posterior.rho)),
              tuple(treedef.flatten_up_to(posterior.mask)))
    try:  # a traced drop_fraction (inside a user's jit) or an unhashable criterion cannot be static
        hash((sched, fn))
        update = _update_leaves
    except TypeError:
        update = _update_leaves.__wrapped__  # traced into the caller's program, as before
    new_mu, new_rho, new_mask = update(*leaves, tuple(scores), jnp.asarray(step, jnp.int32),
                                       sched=sched, criterion=fn, regrow_dropped=regrow_dropped)
    return Posterior(jax.tree.unflatten(treedef, new_mu), jax.tree.unflatten(treedef, new_rho),
                     jax.tree.unflatten(treedef, new_mask))


@functools.partial(jax.jit, static_argnames=("sched", "criterion", "regrow_dropped"))
def _update_leaves(mu_leaves, rho_leaves, mask_leaves, scores, step, *, sched, criterion,
                   regrow_dropped):
    """`subspace_update` on checked, flattened leaves: the ``lax.cond`` on the step, compiled once
    per structure, shapes and options (an eager ``lax.cond`` over fresh closures recompiled on
    every call); returns the ``(mu, rho, mask)`` leaves."""
    posterior = Posterior(list(mu_leaves), list(rho_leaves), list(mask_leaves))

    def do_update(_):
        out = []
        for mu, rho, m, upd in zip(mu_leaves, rho_leaves, mask_leaves,
                                   new_masks(posterior, list(scores), sched.fraction(step),
                                             criterion, regrow_dropped)):
            if m is None:
                out.append((mu, rho, m))
                continue
            new, mean_rho = upd
            stay, zero = m & new, jnp.zeros((), mu.dtype)
            out.append((jnp.where(stay, mu, zero),
                        jnp.where(stay, rho, jnp.where(new, mean_rho.astype(rho.dtype), zero)),
                        new))
        return tuple(out)

    def keep(_):
        return tuple(zip(mu_leaves, rho_leaves, mask_leaves))

    return tuple(zip(*lax.cond(is_update_step(sched, step), do_update, keep, None)))

"""SSVI's subspace update: drop low-score active entries, grow inactive ones, nnz constant per leaf.

Every ``update_every`` steps while ``step < end_step`` (SSVI: 0.75 of training), each selected leaf
drops ``n = floor(nnz * f_t)`` active entries with the lowest removal score and grows ``n`` entries
with the highest ``|dL/dmu|`` (or at random), where
``f_t = drop_fraction / 2 * (1 + cos(pi * step / end_step))`` (RigL's cosine decay; SSVI's
``0.15 * (1 + cos(...))`` is ``drop_fraction = 0.3``). By default growth is among the entries
inactive before the update (``n`` is capped at ``size - nnz``); ``regrow_dropped=True`` lets a
just-dropped entry grow back, as the reference (``rigl_torch/RigL.py::_rigl_step``) does. Newly
grown entries start at ``mu = 0`` and ``rho`` = the mean ``rho`` of the entries active before and
after the update. Ranking uses `sparsejax.masks.topk` (ties by lower flattened index), under
``jit`` with ``lax.cond`` on the step.

``step`` is the reference's scheduler counter: the 1-based index of the training step (the
reference increments it before testing ``step % update_every == 0 and step < end_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int

from sparsejax import masks as _masks
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
from sparsejax.training import drop_fraction_at

__all__ = ["CRITERIA", "is_update_step", "removal_scores", "subspace_update"]

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


def is_update_step(step: Int[Array, ""] | int, update_every: int, end_step: int) -> jax.Array:
    """``step > 0 and step % update_every == 0 and step < end_step`` (bool scalar, traceable)."""
    step = jnp.asarray(step, jnp.int32)
    return (step > 0) & (step % update_every == 0) & (step < end_step)


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


def _leaf_update(mu, rho, mask, score, grow_score, frac, regrow_dropped):
    """One leaf: returns (mu, rho, mask) after dropping/growing ``n`` entries."""
    nnz = jnp.sum(mask, dtype=jnp.int32)
    n = jnp.maximum(jnp.floor(nnz.astype(jnp.float32) * frac).astype(jnp.int32), 0)
    if not regrow_dropped:
        n = jnp.minimum(n, mask.size - nnz)
    neg_inf = jnp.asarray(-jnp.inf, jnp.float32)
    # finite scores on the candidates, -inf elsewhere: candidates always rank first
    big = jnp.finfo(jnp.float32).max
    score = jnp.nan_to_num(score.astype(jnp.float32), nan=-big, posinf=big, neginf=-big)
    grow_score = jnp.nan_to_num(grow_score.astype(jnp.float32), nan=-big, posinf=big, neginf=-big)
    kept = _masks.topk(jnp.where(mask, score, neg_inf), nnz - n)
    # candidates for growth: everything not kept (regrow_dropped) or only the inactive entries
    grown = _masks.topk(jnp.where(kept if regrow_dropped else mask, neg_inf, grow_score), n)
    new_mask = kept | grown
    stay = mask & new_mask          # active before and after: keep their mu and rho
    fresh = new_mask & ~mask        # newly grown: mu = 0, rho = mean rho of `stay`
    n_stay = jnp.maximum(jnp.sum(stay, dtype=jnp.int32), 1)
    mean_rho = jnp.sum(jnp.where(stay, rho, 0), dtype=jnp.float32) / n_stay
    zero = jnp.zeros((), mu.dtype)
    new_mu = jnp.where(stay, mu, zero)
    new_rho = jnp.where(stay, rho, jnp.where(fresh, mean_rho.astype(rho.dtype), zero))
    return new_mu, new_rho, new_mask


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

    An update happens when ``step > 0``, ``step % update_every == 0`` and ``step < end_step``
    (`is_update_step`; ``step`` is the reference's 1-based step counter); otherwise the posterior
    is returned unchanged. Works with a traced ``step`` (``lax.cond``; one compiled function for all
    steps).

    Args:
        posterior: a `Posterior`.
        grads: ``dL/dmu``, a tree mirroring ``posterior.mu`` (or a `Posterior` of gradients, whose
            ``mu`` is used); the *dense* gradient (as `linear_lrt`/`conv_lrt` give). Unused (may be
            ``None``) with ``grow="random"``.
        step: the training step (int or traced int scalar).
        end_step: last step (exclusive) at which the subspace changes (SSVI: 0.75 of training).
        update_every: period ``Delta T`` of the updates.
        drop_fraction: initial drop fraction (cosine-decayed, `sparsejax.training.drop_fraction_at`).
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
    mu_leaves, treedef = jax.tree.flatten(posterior.mu, is_leaf=_is_none)
    rho_leaves = treedef.flatten_up_to(posterior.rho)
    mask_leaves = treedef.flatten_up_to(posterior.mask)
    if grow == "gradient":
        if isinstance(grads, Posterior):
            grads = grads.mu
        if grads is None:
            raise ValueError("`grads` must be a tree of dL/dmu mirroring `posterior.mu` for "
                             "grow='gradient'; got None.")
        check_same_structure(posterior.mu, grads, "grads", "posterior.mu")
        grad_leaves = treedef.flatten_up_to(grads)
        grow_scores = []
        for g, m in zip(grad_leaves, mask_leaves):
            if m is not None and jnp.shape(g) != m.shape:
                raise ValueError(f"`grads` leaves must have their posterior leaf's shape; got "
                                 f"{jnp.shape(g)} for a leaf of shape {m.shape}.")
            grow_scores.append(None if m is None else jnp.abs(g))
    else:
        if key is None:
            raise ValueError("`key` must be a jax.random key for grow='random'; got None.")
        keys = jax.random.split(key, max(len(mu_leaves), 1))
        grow_scores = [None if m is None else jax.random.uniform(k, m.shape)
                       for k, m in zip(keys, mask_leaves)]

    active = is_update_step(step, update_every, end_step)
    frac = drop_fraction_at(jnp.asarray(step, jnp.int32), drop_fraction, end_step)
    chosen = [i for i, m in enumerate(mask_leaves) if m is not None]
    operand = tuple((mu_leaves[i], rho_leaves[i], mask_leaves[i], grow_scores[i]) for i in chosen)

    def do_update(leaves):
        return tuple(_leaf_update(mu, rho, m, fn(mu, sigma_of(rho, m)), g, frac, regrow_dropped)
                     for mu, rho, m, g in leaves)

    def keep(leaves):
        return tuple((mu, rho, m) for mu, rho, m, _ in leaves)

    updated = lax.cond(active, do_update, keep, operand)
    new_mu, new_rho, new_mask = list(mu_leaves), list(rho_leaves), list(mask_leaves)
    for i, (mu, rho, m) in zip(chosen, updated):
        new_mu[i], new_rho[i], new_mask[i] = mu, rho, m
    return Posterior(jax.tree.unflatten(treedef, new_mu), jax.tree.unflatten(treedef, new_rho),
                     jax.tree.unflatten(treedef, new_mask))

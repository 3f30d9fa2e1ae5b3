"""`ssvi`: SSVI training as an optax transform over the variational parameters.

The optimized parameters are ``post._replace(mask=None)`` (a `Posterior` whose ``mask`` is ``None``:
float leaves only, so ``jax.grad`` and ``optax.apply_updates`` work unchanged). `ssvi` is
`sparsejax.training.masked_transform` with SSVI's mask rule over the pair ``(mu, rho leaves of
the selected leaves)`` (no ``None`` leaves, which the core's moment reset does not take): its
state is a `sparsejax.training.SparseState` whose ``masks`` are ``(mask, (mask of each rho
leaf, ...))``, read back with `sparsejax.training.masks_of`; the posterior's mask tree is
``masks_of(opt_state)[0]``.

The ``k``-th ``update`` (``k = count + 1``, the reference's 1-based scheduler step) does what one
iteration of the reference's training loop (``ljb121002/SSVI``, ``train_cifar.py``:
``if pruner(): optimizer.step()``) does:

* at a subspace-update step (``k % update_every == 0`` and ``k < end_step``) it changes the masks
  as `subspace_update` does (with the *dense* ``dL/dmu`` as grow signal), resets the inner
  optimizer's moments of every entry whose mask changed, and takes **no** optimizer step: kept
  ``mu``, ``rho`` and every unselected leaf (biases) stay where they are, the inner state is not
  advanced;
* at every other step it masks the gradients of ``mu`` and ``rho`` to the active entries and runs
  the inner optimizer.

``update_at_mask_step=True`` also runs the inner optimizer at a subspace-update step (on the entries
kept by both masks). In both cases the returned updates make the posterior exactly the new one:
dropped entries are exactly ``0``, grown entries hold ``mu = 0`` and the mean ``rho``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparsejax._checks import _is_none, check_bool, check_choice, check_int, check_sparsity, must_be
from sparsejax.bayes.posterior import Posterior, _check_posterior
from sparsejax.bayes.subspace import (
    DEFAULT_CRITERION,
    GROW,
    Criterion,
    _criterion_fn,
    grow_scores,
    is_update_step,
    new_masks,
    schedule,
)
from sparsejax.training import MaskUpdate, masked_transform
from sparsejax.training._transform import key_data
from sparsejax.training.drop_grow import hyper_int

__all__ = ["ssvi"]

PyTree = Any


def _check_variational(params: Any, name: str) -> Posterior:
    if not isinstance(params, Posterior):
        raise TypeError(f"`{name}` must be a sparsejax.bayes.Posterior with mask=None (the "
                        f"variational parameters); got {type(params).__name__}.")
    if params.mask is not None:
        raise ValueError(f"`{name}.mask` must be None in update (the mask lives in the optimizer "
                         f"state); pass post._replace(mask=None).")
    return params


_EMPTY = (0,)


def _pack(mu: PyTree, rho: PyTree, masks: PyTree) -> tuple:
    """``(mu, (rho leaves of selected leaves...))``: the core's params, without ``None`` leaves
    (`sparsejax.training.reset_moments` pairs leaves without them): a ``None`` in ``mu`` (an
    Equinox model's non-float leaf, from `sparsejax.nn.eqx.posterior_of`) becomes an empty
    array, put back by `_unpack_mu`."""
    rho_leaves = jax.tree.leaves(rho, is_leaf=_is_none)
    mask_leaves = jax.tree.leaves(masks, is_leaf=_is_none)
    mu = jax.tree.map(lambda x: jnp.zeros(_EMPTY) if x is None else x, mu, is_leaf=_is_none)
    return mu, tuple(r for r, m in zip(rho_leaves, mask_leaves) if m is not None)


def _pack_masks(mask: PyTree) -> tuple:
    """The core's masks for `_pack`'s params: the posterior's mask tree and the rho masks."""
    return mask, tuple(m for m in jax.tree.leaves(mask, is_leaf=_is_none) if m is not None)


def _unpack_mu(packed: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda p, x: None if x is None else p, packed, like, is_leaf=_is_none)


def _unpack_rho(packed: tuple, masks: PyTree) -> PyTree:
    it = iter(packed)
    return jax.tree.map(lambda m: None if m is None else next(it), masks, is_leaf=_is_none)


def ssvi(
    inner: optax.GradientTransformation,
    *,
    end_step: int,
    update_every: int = 100,
    drop_fraction: float = 0.3,
    criterion: Criterion = DEFAULT_CRITERION,
    grow: str = "gradient",
    regrow_dropped: bool = False,
    update_at_mask_step: bool = False,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SSVI (sparse subspace variational inference) around the user's optimizer.

    ``init(posterior)`` takes the full `Posterior` (with its mask, e.g. from `init_posterior`);
    ``update(grads, state, params)`` takes the variational parameters ``params =
    post._replace(mask=None)`` and their gradients in the same form (``dL/dmu`` dense, as
    `linear_lrt` / `conv_lrt` give). See the module docstring for what one update does.

    Args:
        inner: the user's optimizer (adam, sgd with momentum, chains, ``inject_hyperparams``; its
            per-parameter state must mirror the params, checked at ``init``).
        end_step: the reference's ``T_end`` (SSVI: 0.75 of training): the step at which the
            cosine drop fraction reaches ``0``; the subspace changes at steps ``k < end_step``.
            May be a traced integer scalar (the transform built inside a jitted function): one
            compiled step then serves every ``end_step``, e.g. ``end_step = update_every`` for a run
            whose subspace never changes (dense mean-field VI with an all-``True`` mask).
        update_every: subspace update period ``>= 1`` (the reference's ``delta``).
        drop_fraction: initial drop fraction in ``[0, 1]`` (cosine-decayed; the reference's
            ``alpha``).
        criterion: removal score (see `removal_scores`; default ``"SNR_mean_abs"``, the
            reference's default).
        grow: ``"gradient"`` or ``"random"`` (needs ``key``).
        regrow_dropped: let a just-dropped entry grow back at the same update (the reference
            does; default ``False``, see `subspace_update`).
        update_at_mask_step: also take the inner optimizer step at a subspace-update step
            (default ``False``: only the subspace changes, as in the reference).
        key: PRNG key for ``grow="random"``.

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a
        `sparsejax.training.SparseState`.

    Raises:
        ValueError / TypeError: bad arguments; at ``init`` a posterior without a mask or an inner
            state the moment reset cannot match.
    """
    update_every = check_int(update_every, "update_every", minimum=1)
    end_step = hyper_int(end_step, "end_step", minimum=1)  # or traced (one compiled step)
    check_sparsity(drop_fraction, "drop_fraction")
    _criterion_fn(criterion)
    check_choice(grow, "grow", GROW)
    regrow_dropped = check_bool(regrow_dropped, "regrow_dropped")
    update_at_mask_step = check_bool(update_at_mask_step, "update_at_mask_step")
    if grow == "random" and key is None:
        raise ValueError(must_be("key", "a jax.random key for grow='random'", key))
    sched = schedule(update_every, end_step, drop_fraction)

    def update_masks(params, grads, masks, count, k):
        step = count + 1  # the reference's scheduler counter
        mask = masks[0]
        post = Posterior(params[0], _unpack_rho(params[1], mask), mask)
        scores = grow_scores(post, grads[0], grow, k)
        updated = new_masks(post, scores, sched.fraction(step), criterion, regrow_dropped)
        chosen = [u for u in updated if u is not None]
        treedef = jax.tree.structure(mask, is_leaf=_is_none)
        new = jax.tree.unflatten(treedef, [None if u is None else u[0] for u in updated])
        values = (jax.tree.map(lambda _: None, mask, is_leaf=_is_none),
                  tuple(u[1] for u in chosen))
        return MaskUpdate((new, tuple(u[0] for u in chosen)), values)

    def core(init_masks):
        return masked_transform(inner, lambda params, k: init_masks, update_masks,
                                lambda count: is_update_step(sched, count + 1),
                                key=None if key is None else key_data(key), reset=True,
                                update_at_mask_step=update_at_mask_step)

    def init(params):
        post = _check_posterior(params, "params")
        return core(_pack_masks(post.mask)).init(_pack(post.mu, post.rho, post.mask))

    step_fn = core(None).update

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("`params` must be passed to update(grads, state, params) by ssvi; "
                             "got None.")
        params = _check_variational(params, "params")
        grads = _check_variational(updates, "updates")
        mask = state.masks[0]
        packed, state = step_fn(_pack(grads.mu, grads.rho, mask), state,
                                _pack(params.mu, params.rho, mask), **extra_args)
        return (Posterior(_unpack_mu(packed[0], params.mu), _unpack_rho(packed[1], mask), None),
                state)

    return optax.GradientTransformationExtraArgs(init, update)

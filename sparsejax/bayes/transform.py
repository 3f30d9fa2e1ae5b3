"""`ssvi`: SSVI training as an optax transform over the variational parameters.

The optimized parameters are ``post._replace(mask=None)`` (a `Posterior` whose ``mask`` is ``None``:
float leaves only, so ``jax.grad`` and ``optax.apply_updates`` work unchanged); the mask lives in the
optimizer state (`SSVIState`, read back with `masks_of`). The ``k``-th ``update`` (``k = count + 1``,
the reference's 1-based scheduler step) does what one iteration of the reference's training loop
(``ljb121002/SSVI``, ``train_cifar.py``: ``if pruner(): optimizer.step()``) does:

* at a subspace-update step (`is_update_step`: ``k % update_every == 0`` and ``k < end_step``) it
  runs `subspace_update` with the *dense* ``dL/dmu`` (grow signal) and resets the inner optimizer's
  moments of every entry whose mask changed (`sparsejax.training.reset_moments`), and takes **no**
  optimizer step: kept ``mu``, ``rho`` and every unselected leaf (biases) stay where they are, the
  inner state is not advanced;
* at every other step it masks the gradients of ``mu`` and ``rho`` to the active entries and runs
  the inner optimizer.

``update_at_mask_step=True`` also runs the inner optimizer at a subspace-update step (kept entries
move by the inner update; sparsejax's behaviour before it followed the reference). In both cases the
returned updates make the posterior exactly the new one: dropped entries are exactly ``0``, grown
entries hold ``mu = 0`` and the mean ``rho``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Int

from sparsejax._checks import (
    _is_none,
    check_bool,
    check_choice,
    check_int,
    check_sparsity,
    must_be,
)
from sparsejax.bayes.posterior import Posterior, _check_posterior
from sparsejax.bayes.subspace import (
    DEFAULT_CRITERION,
    GROW,
    Criterion,
    _criterion_fn,
    is_update_step,
    subspace_update,
)
from sparsejax.training import reset_moments
from sparsejax.training.state import find_state

__all__ = ["SSVIState", "masks_of", "ssvi"]

PyTree = Any


class SSVIState(NamedTuple):
    """State of `ssvi`.

    Attributes:
        count: ``update`` calls already made (int32 scalar; the next call is step ``count + 1``).
        masks: the current mask tree, mirroring ``posterior.mu`` (``None`` on unselected leaves).
        inner_state: the inner optimizer's state, built on ``(mu, [rho of selected leaves])``.
        key: PRNG key data for ``grow="random"``, or ``None``.
    """

    count: Int[Array, ""]
    masks: PyTree
    inner_state: optax.OptState
    key: Any = None


def masks_of(opt_state: PyTree) -> PyTree:
    """The mask tree of the one `SSVIState` inside ``opt_state`` (bare or inside a chain)."""
    return find_state(opt_state, SSVIState, "SSVIState").masks


def _pack(mu: PyTree, rho: PyTree, masks: PyTree) -> tuple:
    """``(mu, (rho leaves of selected leaves...))``: a tree without ``None`` for the inner optimizer."""
    rho_leaves = jax.tree.leaves(rho, is_leaf=_is_none)
    mask_leaves = jax.tree.leaves(masks, is_leaf=_is_none)
    return mu, tuple(r for r, m in zip(rho_leaves, mask_leaves) if m is not None)


def _unpack_rho(packed: tuple, masks: PyTree) -> PyTree:
    it = iter(packed)
    return jax.tree.map(lambda m: None if m is None else next(it), masks, is_leaf=_is_none)


def _check_variational(params: Any, name: str) -> Posterior:
    if not isinstance(params, Posterior):
        raise TypeError(f"`{name}` must be a sparsejax.bayes.Posterior with mask=None (the "
                        f"variational parameters); got {type(params).__name__}.")
    if params.mask is not None:
        raise ValueError(f"`{name}.mask` must be None in update (the mask lives in the SSVIState); "
                         f"pass post._replace(mask=None).")
    return params


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
        end_step: subspace updates happen at steps ``k < end_step`` (exclusive, as the
            reference's ``T_end``; SSVI: 0.75 of training).
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
        an ``optax.GradientTransformationExtraArgs`` whose state is an `SSVIState`.

    Raises:
        ValueError / TypeError: bad arguments; at ``init`` a posterior without a mask or an inner
            state the moment reset cannot match.
    """
    update_every = check_int(update_every, "update_every", minimum=1)
    end_step = check_int(end_step, "end_step", minimum=1)
    check_sparsity(drop_fraction, "drop_fraction")
    _criterion_fn(criterion)
    check_choice(grow, "grow", GROW)
    regrow_dropped = check_bool(regrow_dropped, "regrow_dropped")
    update_at_mask_step = check_bool(update_at_mask_step, "update_at_mask_step")
    if grow == "random" and key is None:
        raise ValueError(must_be("key", "a jax.random key for grow='random'", key))
    inner = optax.with_extra_args_support(inner)

    def init(params):
        post = _check_posterior(params, "params")
        packed = _pack(post.mu, post.rho, post.mask)
        inner_state = inner.init(packed)
        no_reset = jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), post.mask,
                                is_leaf=_is_none)
        reset_moments(inner_state, packed, _pack(no_reset, no_reset, post.mask))
        return SSVIState(jnp.zeros([], jnp.int32), post.mask, inner_state, key)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("`params` must be passed to update(grads, state, params) by ssvi; "
                             "got None.")
        params = _check_variational(params, "params")
        grads = _check_variational(updates, "updates")
        masks = state.masks

        def masked(tree):
            return jax.tree.map(lambda g, m: g if m is None else jnp.where(m, g, 0), tree, masks,
                                is_leaf=_is_none)

        g_packed = _pack(masked(grads.mu), masked(grads.rho), masks)
        p_packed = _pack(params.mu, params.rho, masks)
        step = optax.safe_increment(state.count)  # the reference's 1-based scheduler step

        def inner_step(_):
            return inner.update(g_packed, state.inner_state, p_packed, **extra_args)

        if update_at_mask_step:
            u_packed, inner_state = inner_step(None)
        else:
            def skip(_):
                u, _ = jax.eval_shape(inner_step, None)
                return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), u), state.inner_state

            u_packed, inner_state = lax.cond(is_update_step(step, update_every, end_step), skip,
                                             inner_step, None)
        u_mu, u_rho = u_packed[0], _unpack_rho(u_packed[1], masks)

        k_state, k_update = state.key, None
        if k_state is not None:
            k_state, k_update = jax.random.split(k_state)
        old = Posterior(params.mu, params.rho, masks)
        new = subspace_update(old, grads.mu, step, end_step=end_step,
                              update_every=update_every, drop_fraction=drop_fraction,
                              criterion=criterion, grow=grow, regrow_dropped=regrow_dropped,
                              key=k_update)
        changed = jax.tree.map(lambda a, b: None if a is None else a != b, masks, new.mask,
                               is_leaf=_is_none)
        inner_state = reset_moments(inner_state, p_packed, _pack(changed, changed, masks))

        def out(u, p, n, m_old, m_new):
            if m_old is None:
                return u
            return jnp.where(m_old & m_new, u, (n - p).astype(u.dtype))

        upd_mu = jax.tree.map(out, u_mu, params.mu, new.mu, masks, new.mask, is_leaf=_is_none)
        upd_rho = jax.tree.map(lambda u, p, n, a, b: None if a is None else out(u, p, n, a, b),
                               u_rho, params.rho, new.rho, masks, new.mask, is_leaf=_is_none)
        return (Posterior(upd_mu, upd_rho, None),
                SSVIState(step, new.mask, inner_state, k_state))

    return optax.GradientTransformationExtraArgs(init, update)


"""CAST-style semi-structured training: AdamS, its decay ramp and the final hard N:M projection.

`adams` transcribes the masked branch of the reference optimizer (thu-ml/Adaptive-Sparse-Trainer
``adamw.py``, the predecessor code of CAST) as an optax transform: Adam whose first moment
averages the *loss* gradient only, plus a decay term ``decay * W`` on the weights *outside* the
current N:M mask, added after the averaging (so it acts at once, not through the momentum):

.. code-block:: text

    W     <- W * (1 - lr * weight_decay)                   # decoupled weight decay first
    m     <- b1 m + (1 - b1) g                             # loss gradient only
    u     =  m + decay_t * (1 - M) * W                     # pull of the pruned weights
    v     <- b2 v + (1 - b2) u^2                           # u, not g: as the reference does
    W     <- W - lr / (1 - b1^t) * u / (sqrt(v) / sqrt(1 - b2^t) + eps)

``M`` is the N:M magnitude mask of the current weights, recomputed every ``mask_every`` steps;
``decay_t`` ramps linearly from 0 to ``decay`` over ``increase_steps`` (the reference's
``get_decay``) or follows a schedule. The second moment averages ``u^2``, the square of the
*averaged* update, exactly as the reference code does (not ``g^2``), so early steps are larger than
Adam's (``lr / (1 - b1)`` at step 1); use a smaller learning rate than for Adam. Leaves outside
``where`` take the reference's plain AdamW step with no weight decay (its "no decay" group: biases
and norms). The forward pass uses the masked weights with a straight-through gradient
(`sparsejax.training.ste`), and training ends with the hard projection `project` (its loss change
is reported by ``benchmarks/nm_training.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from sparsejax._checks import _is_none, check_choice, check_float, check_int
from sparsejax._registry import NM_PATTERNS
from sparsejax.select import Where
from sparsejax.tree import compute_masks

__all__ = ["AdamSState", "adams", "cast_decay", "project"]

PyTree = Any
Schedule = Callable[[Int[Array, ""]], Float[Array, ""]]


class AdamSState(NamedTuple):
    """`adams` state: step count, first moment of the loss gradient, second moment of the
    update, and the current N:M masks (``None`` on leaves outside ``where``)."""

    count: Int[Array, ""]
    mu: PyTree
    nu: PyTree
    masks: PyTree


def cast_decay(decay: float = 6e-5, increase_steps: int = 10000) -> Schedule:
    """The reference's decay ramp: ``decay * t / increase_steps`` for ``t < increase_steps``,
    then ``decay`` (``get_decay`` of the reference's ``main.py``; default 6e-5 over 10000)."""
    decay = check_float(decay, "decay", minimum=0.0)
    increase_steps = check_int(increase_steps, "increase_steps", minimum=1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        return jnp.where(t < increase_steps, decay / increase_steps * t, decay)

    return schedule


def _masks(params, pattern, n, m, axis, where):
    kw = {} if axis is None else {"axis": axis}
    return compute_masks(params, pattern, n=n, m=m, where=where, **kw)


def adams(
    learning_rate: float | Schedule,
    *,
    n: int = 2,
    m: int = 4,
    axis: int | None = 0,
    where: Where = None,
    pattern: str = "nm",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: float | Schedule | None = None,
    mask_every: int = 1,
) -> optax.GradientTransformation:
    """AdamS: Adam with a decay of the weights outside the current N:M mask (CAST).

    Args:
        learning_rate: a float or an optax schedule.
        n: kept per group.
        m: group size.
        axis: the N:M grouping (reduction) axis, ``0`` for a Flax ``[in, out]`` kernel
            (``pattern="nm_transposable"`` needs none: ``None``).
        where: which leaves are N:M-trained (a `sparsejax.select` selector); the others take
            plain AdamW steps without weight decay.
        pattern: ``"nm"`` or ``"nm_transposable"``.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the denominator.
        weight_decay: decoupled weight decay of the selected leaves (``W *= 1 - lr * wd``).
        decay: strength of the pull of pruned weights, a float (constant) or a ``step -> value``
            schedule; ``None``: `cast_decay` (0 to 6e-5 over 10000 steps, the reference's).
        mask_every: recompute the masks from ``|W|`` every this many steps (the first update
            always does).

    Returns:
        an ``optax.GradientTransformation`` (``update`` needs ``params``); `project` the params
        at the end of training.

    Raises:
        ValueError / TypeError: bad hyper-parameters (named), an unknown ``pattern``.
    """
    check_choice(pattern, "pattern", NM_PATTERNS)
    b1 = check_float(b1, "b1", minimum=0.0, maximum=1.0, exclusive_maximum=True)
    b2 = check_float(b2, "b2", minimum=0.0, maximum=1.0, exclusive_maximum=True)
    eps = check_float(eps, "eps", minimum=0.0)
    weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0)
    mask_every = check_int(mask_every, "mask_every", minimum=1)
    if decay is None:
        decay = cast_decay()
    elif not callable(decay):
        value = check_float(decay, "decay", minimum=0.0)
        decay = lambda step: jnp.float32(value)  # noqa: E731
    if callable(learning_rate):
        lr = learning_rate
    else:
        lr_value = check_float(learning_rate, "learning_rate", minimum=0.0)
        lr = lambda step: jnp.float32(lr_value)  # noqa: E731

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamSState(jnp.zeros((), jnp.int32), zeros, zeros,
                          _masks(params, pattern, n, m, axis, where))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("`params` must be given to adams' update (the mask and the decay "
                             "are computed from the weights); got None.")
        masks = jax.lax.cond(state.count % mask_every == 0,
                             lambda p: _masks(p, pattern, n, m, axis, where),
                             lambda p: state.masks, params)
        t = state.count + 1
        step_lr = lr(state.count)
        dec = decay(state.count)
        bc1 = 1 - b1 ** t.astype(jnp.float32)
        bc2 = 1 - b2 ** t.astype(jnp.float32)

        def leaf(mk, g, w, mu, nu):
            w1 = w if mk is None else w * (1 - step_lr * weight_decay).astype(w.dtype)
            mu = b1 * mu + (1 - b1) * g  # the loss gradient only
            u = mu if mk is None else mu + jnp.where(mk, jnp.zeros((), w.dtype), w1 * dec)
            v_in = g if mk is None else u  # the reference squares u, the *averaged* update
            nu = b2 * nu + (1 - b2) * v_in * v_in
            w2 = w1 - (step_lr / bc1) * u / (jnp.sqrt(nu) / jnp.sqrt(bc2) + eps)
            return (w2 - w).astype(w.dtype), mu.astype(w.dtype), nu.astype(w.dtype)

        treedef = jax.tree.structure(params)
        flat_masks = treedef.flatten_up_to(masks)
        outs = [leaf(*a) for a in zip(flat_masks, treedef.flatten_up_to(grads),
                                      treedef.flatten_up_to(params),
                                      treedef.flatten_up_to(state.mu),
                                      treedef.flatten_up_to(state.nu))]
        updates, mu, nu = (treedef.unflatten([o[i] for o in outs]) for i in range(3))
        return updates, AdamSState(t, mu, nu, masks)

    return optax.GradientTransformation(init, update)


def project(params: PyTree, *, n: int = 2, m: int = 4, axis: int | None = 0,
            where: Where = None, pattern: str = "nm") -> tuple[PyTree, PyTree]:
    """CAST's final hard projection: every selected leaf keeps its ``n`` largest ``|W|`` of each
    group of ``m`` (zeros elsewhere).

    Args:
        params: the trained dense params.
        n: kept per group.
        m: group size.
        axis: the grouping axis (``None`` for ``"nm_transposable"``).
        where: which leaves to project.
        pattern: ``"nm"`` or ``"nm_transposable"``.

    Returns:
        ``(projected_params, masks)``.
    """
    check_choice(pattern, "pattern", NM_PATTERNS)
    masks = _masks(params, pattern, n, m, axis, where)
    projected = jax.tree.map(lambda mk, w: w if mk is None else jnp.where(mk, w, 0).astype(
        w.dtype), masks, params, is_leaf=_is_none)
    return projected, masks

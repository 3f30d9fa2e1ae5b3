"""Straight-through sparse forwards, used inside the loss function (``jax.custom_vjp``).

* `ste`: forward on the masked weights ``W * M``; the gradient reaches the dense weights unchanged.
* `sr_ste`: SR-STE (Zhou et al. 2021, ``NM-sparsity/devkit/sparse_ops/sparse_ops.py``): the same
  forward, gradient ``g + decay * (1 - M) * W`` (a pull of the pruned weights towards zero).
* `mask_decay`: progressive gradient flow's mask decay (Bambhaniya et al. 2024,
  ``timm/sparse_pruning/sparse_functions.py``): pruned weights scaled by a factor that a schedule
  (`decay_factor`) drives from 1 to 0; and the structure-decay ladder to N:M
  (`structure_decay_ladder`, `structure_decay_masks`).

``masks`` is a mask tree mirroring the params, or a function ``params -> masks`` evaluated on the
current (dense) weights at every call, e.g. ``lambda p: sj.compute_masks(p, "nm", n=2, m=4,
axis=0)`` re-selects the 2:4 mask at every step as SR-STE does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    _is_none,
    check_bool,
    check_float,
    check_int,
    check_mask_tree,
    check_same_structure,
    check_sparsity,
    is_concrete,
    is_function,
)
from sparsejax.select import Where
from sparsejax.tree import compute_masks

__all__ = [
    "decay_factor",
    "mask_decay",
    "sr_ste",
    "ste",
    "structure_decay_ladder",
    "structure_decay_masks",
]

PyTree = Any
Masks = PyTree | Callable[[PyTree], PyTree]


def _resolve(params: PyTree, masks: Masks) -> PyTree:
    if is_function(masks, params):
        masks = masks(lax.stop_gradient(params))
    check_same_structure(params, masks, "masks")
    return masks


@jax.custom_vjp
def _sr_leaf(w, m, decay):
    return jnp.where(m, w, jnp.zeros((), w.dtype))


def _sr_fwd(w, m, decay):
    return _sr_leaf(w, m, decay), (w, m, decay)


def _sr_bwd(res, g):
    w, m, decay = res
    pull = jnp.where(m, jnp.zeros((), w.dtype), (decay * w).astype(w.dtype))
    return (g + pull, None, None)


_sr_leaf.defvjp(_sr_fwd, _sr_bwd)


def sr_ste(params: PyTree, masks: Masks, decay: float | Float[Array, ""] = 2e-4) -> PyTree:
    """SR-STE forward: ``W * M`` forward, ``g + decay * (1 - M) * W`` backward (dense, straight
    through).

    Args:
        params: the dense params (any pytree).
        masks: a mask tree mirroring ``params`` (``None`` leaves pass through), or a function
            ``params -> masks`` evaluated on the dense weights (no gradient flows through it).
        decay: SR-STE's lambda (2e-4 in the paper); may be traced.

    Returns:
        the masked params, with the SR-STE gradient rule.

    Raises:
        TypeError / ValueError: a mask leaf that is not a bool array (a float mask is ambiguous:
            is 0.5 kept?), a negative concrete ``decay``.
    """
    masks = _resolve(params, masks)
    check_mask_tree(masks)
    if is_concrete(decay):  # a Python or a concrete array scalar
        check_float(np.asarray(decay).item() if hasattr(decay, "dtype") else decay, "decay",
                    minimum=0.0)
    decay = jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda m, w: w if m is None else _sr_leaf(w, m, decay), masks, params,
                        is_leaf=_is_none)


def ste(params: PyTree, masks: Masks) -> PyTree:
    """Straight-through forward: ``W * M`` forward, the gradient passes to the dense ``W``
    unchanged (`sr_ste` with ``decay=0``).

    Args:
        params: the dense params.
        masks: a mask tree mirroring ``params``, or a function ``params -> masks``.

    Returns:
        the masked params; ``d loss / d params`` equals the gradient of the loss at the masked
        params.
    """
    return sr_ste(params, masks, 0.0)


@jax.custom_vjp
def _decay_leaf(w, m, factor):
    return jnp.where(m, w, (factor * w).astype(w.dtype))


def _decay_fwd(w, m, factor):
    return _decay_leaf(w, m, factor), None


def _decay_bwd(res, g):
    del res
    return (g, None, None)  # LinearDecay.backward: the incoming gradient, unchanged


_decay_leaf.defvjp(_decay_fwd, _decay_bwd)


def mask_decay(params: PyTree, masks: Masks, factor: float | Float[Array, ""], *,
               scale_gradient: bool = False) -> PyTree:
    """Progressive gradient flow's mask decay: kept weights as is, pruned ones times ``factor``.

    Forward ``W * (M + factor * (1 - M))``. Backward, as the reference's
    ``LinearDecay.backward`` / ``ExponentialDecay.backward``: the incoming gradient passes to
    every dense weight unchanged (the decayed weights receive the full gradient: the gradient
    flow the method is named for). ``scale_gradient=True`` differentiates the forward as written
    instead (pruned weights get ``factor`` times their gradient, zero once ``factor`` is 0). Drive
    ``factor`` from 1 to 0 with `decay_factor`.

    Args:
        params: the dense params.
        masks: a bool mask tree mirroring ``params``, or a function ``params -> masks``.
        factor: scale of the pruned weights in ``[0, 1]`` (may be traced).
        scale_gradient: differentiate the forward as written instead of passing the gradient
            straight through.

    Returns:
        the decayed params.

    Raises:
        TypeError / ValueError: a mask leaf that is not a bool array, a concrete ``factor``
            outside ``[0, 1]``.
    """
    masks = _resolve(params, masks)
    check_mask_tree(masks)
    check_sparsity(factor, "factor")
    check_bool(scale_gradient, "scale_gradient")
    factor = jnp.asarray(factor, jnp.float32)
    if scale_gradient:
        leaf = lambda m, w: jnp.where(m, w, (factor * w).astype(w.dtype))  # noqa: E731
    else:
        leaf = lambda m, w: _decay_leaf(w, m, factor)  # noqa: E731
    return jax.tree.map(lambda m, w: w if m is None else leaf(m, w), masks, params,
                        is_leaf=_is_none)


def decay_factor(step: Int[Array, ""] | int, rate: float = 2e-4, kind: str = "linear"
                 ) -> Float[Array, ""]:
    """Mask-decay factor at ``step``: ``max(0, 1 - rate * t)`` (``"linear"``) or
    ``exp(-rate * t)`` (``"exponential"``), rate 2e-4 as in the reference.

    Raises:
        ValueError: ``kind`` not ``"linear"``/``"exponential"`` or a negative ``rate``.
    """
    if kind not in ("linear", "exponential"):
        raise ValueError(f"`kind` must be 'linear' or 'exponential'; got {kind!r}.")
    if float(rate) < 0:
        raise ValueError(f"`rate` must be >= 0; got {rate}.")
    t = jnp.asarray(step, jnp.float32)
    if kind == "linear":
        return jnp.maximum(0.0, 1.0 - jnp.float32(rate) * t)
    return jnp.exp(-jnp.float32(rate) * t)


def structure_decay_ladder(n: int, m: int) -> tuple[int, ...]:
    """The kept-per-group ladder ``(M-1):M -> M/2:M -> M/4:M -> ... -> N:M`` (progressive gradient
    flow's structure decay), as the tuple of kept counts: ``(2, 4) -> (3, 2)``,
    ``(1, 8) -> (7, 4, 2, 1)``.

    Raises:
        ValueError: not ``1 <= n < m``.
    """
    n, m = check_int(n, "n", minimum=1), check_int(m, "m", minimum=2)
    if n >= m:
        raise ValueError(f"`n` must be < m = {m}; got {n}.")
    rungs = [m - 1]
    k = m // 2
    while k > n:
        if k < rungs[-1]:
            rungs.append(k)
        k //= 2
    if rungs[-1] != n:
        rungs.append(n)
    return tuple(rungs)


def structure_decay_masks(params: PyTree, step: Int[Array, ""] | int, *, n: int, m: int,
                          axis: int, interval: int, where: Where = None) -> PyTree:
    """N:M magnitude masks on the structure-decay ladder: rung ``min(step // interval, last)`` of
    `structure_decay_ladder` (``lax.switch``: one compiled function for every step).

    Args:
        params: the dense params.
        step: the training step (may be traced).
        n: the final N:M's kept entries per group.
        m: the final N:M's group size.
        axis: the grouping axis (0 for a Flax ``[in, out]`` kernel's reduction axis).
        interval: steps per rung, ``>= 1``.
        where: leaf selector.

    Returns:
        a mask tree; pass it (or ``lambda p: structure_decay_masks(p, step, ...)``) to `sr_ste`
        / `ste`.
    """
    interval = check_int(interval, "interval", minimum=1)
    ladder = structure_decay_ladder(n, m)
    rung = jnp.clip(jnp.asarray(step, jnp.int32) // interval, 0, len(ladder) - 1)
    branches = [lambda p, k=k: compute_masks(p, "nm", n=k, m=m, axis=axis, where=where)
                for k in ladder]
    return lax.switch(rung, branches, params)

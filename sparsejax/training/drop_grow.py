"""The one drop-and-grow step and its schedule, shared by RigL, SET and SSVI.

`drop_and_grow` is one leaf's mask update: keep the ``nnz - n`` highest drop scores among the
kept entries, then grow ``n`` entries with the highest grow scores, ``n = floor(nnz * fraction)``
(rigl ``sparse_optimizers_base.py::_get_update_op``, jaxpruner ``SET._update_masks``).
`DropGrowSchedule` says when such an update happens and with which fraction.

Step convention (the whole package): ``step`` is the number of optimizer steps already taken
(optax's ``count``) and ``end_step`` is *inclusive*: the last step at which the masks may change,
as in TF-MOT (``step <= end_step``), rigl and jaxpruner (``update_end_step``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sparsejax import masks as _masks
from sparsejax._checks import (
    check_bool,
    check_bool_array,
    check_choice,
    check_int,
    check_shape,
    check_sparsity,
    is_concrete,
    must_be,
)

__all__ = ["ANNEALS", "DropGrowSchedule", "drop_and_grow"]

ANNEALS = ("cosine", "constant")


def hyper_int(value: Any, name: str, *, minimum: int) -> Any:
    """An int argument that may arrive as a hyperparameter of ``optax.inject_hyperparams``: a
    Python int, a concrete integer scalar array (made a Python int) or a tracer (kept; used only
    in arithmetic on the step)."""
    if isinstance(value, jax.core.Tracer):
        return value
    if (hasattr(value, "dtype") and np.ndim(value) == 0
            and np.issubdtype(np.asarray(value).dtype, np.integer)):
        value = int(value)
    return check_int(value, name, minimum=minimum)


def _finite(score: jax.Array) -> jax.Array:
    """float32 scores with NaN -> lowest, +-inf -> +-max, so a candidate always outranks the
    ``-inf`` given to non-candidates."""
    big = jnp.finfo(jnp.float32).max
    return jnp.nan_to_num(jnp.asarray(score, jnp.float32), nan=-big, posinf=big, neginf=-big)


def drop_and_grow(
    mask: Bool[Array, "*shape"],
    drop_score: Float[Array, "*shape"],
    grow_score: Float[Array, "*shape"],
    fraction: float | Float[Array, ""],
    *,
    regrow_dropped: bool,
) -> Bool[Array, "*shape"]:
    """One leaf's drop-and-grow: the same number of entries leave and join the mask.

    With ``nnz = sum(mask)`` and ``n = floor(nnz * fraction)``: keep the ``nnz - n`` kept entries
    of highest ``drop_score``, then add the ``n`` candidates of highest ``grow_score``. The
    candidates are the entries not kept after the drop (``regrow_dropped=True``: a just-dropped
    entry may come straight back, as in rigl and jaxpruner) or the entries outside ``mask``
    (``regrow_dropped=False``: SSVI; then ``n`` is also capped at ``size - nnz``). Ties go to the
    lower flattened index (`sparsejax.masks.topk`); NaN scores rank last, infinities as the
    largest finite values. Works under ``jit`` with a traced ``fraction``.

    Args:
        mask: bool mask, ``True`` = kept.
        drop_score: float scores of ``mask``'s shape; higher = kept (RigL / SET: ``|w|``).
        grow_score: float scores of ``mask``'s shape; higher = grown (RigL: ``|dense grad|``,
            SET: uniform noise).
        fraction: drop fraction in ``[0, 1]`` (a float or a traced float scalar).
        regrow_dropped: whether an entry dropped by this update may be grown by it.

    Returns:
        the new bool mask, with exactly ``sum(mask)`` ``True`` entries.

    Raises:
        TypeError / ValueError: a non-bool ``mask``, scores of another shape, a concrete
            ``fraction`` outside ``[0, 1]``, a non-bool ``regrow_dropped``.
    """
    mask = check_bool_array(mask, "mask")
    check_shape(drop_score, mask.shape, "drop_score")
    check_shape(grow_score, mask.shape, "grow_score")
    check_bool(regrow_dropped, "regrow_dropped")
    if is_concrete(fraction):
        check_sparsity(fraction, "fraction")
    nnz = jnp.sum(mask, dtype=jnp.int32)
    n = jnp.floor(nnz.astype(jnp.float32) * jnp.asarray(fraction, jnp.float32)).astype(jnp.int32)
    if not regrow_dropped:
        n = jnp.minimum(n, mask.size - nnz)
    n = jnp.maximum(n, 0)
    kept = _masks.topk(jnp.where(mask, _finite(drop_score), -jnp.inf), nnz - n)
    candidates = ~kept if regrow_dropped else ~mask
    grown = _masks.topk(jnp.where(candidates, _finite(grow_score), -jnp.inf), n)
    return kept | grown


class DropGrowSchedule(NamedTuple):
    """When masks are updated by drop-and-grow, and which fraction is dropped.

    An update happens at steps ``t`` (optimizer steps already taken) with
    ``begin_step <= t <= end_step`` (``end_step`` inclusive) and ``(t - begin_step) %
    update_every == 0``. The drop fraction at ``t`` is, with ``anneal="cosine"`` (RigL, jaxpruner,
    SSVI), ``drop_fraction / 2 * (1 + cos(pi * min(t, end_step) / end_step))`` (rigl's
    ``cosine_decay(f0, t, end_step - begin_step)`` with ``begin_step = 0``; jaxpruner's
    ``optax.cosine_decay_schedule(f0, update_end_step)``), so it is ``0`` at ``end_step``; with
    ``anneal="constant"`` (SET as in Mocanu et al.) it is ``drop_fraction`` at every update.

    Build it with `DropGrowSchedule.create` (validated); ``begin_step`` defaults to
    ``update_every`` (the first update after one full period, as rigl's and jaxpruner's
    examples start it).

    Attributes:
        update_every: period ``>= 1`` of the updates (counts optimizer steps). The int fields
            may be traced (under ``optax.inject_hyperparams``); they are then not validated.
        end_step: last step (inclusive) at which masks may change.
        drop_fraction: initial drop fraction in ``[0, 1]``.
        begin_step: first update step.
        anneal: ``"cosine"`` or ``"constant"``.
    """

    update_every: int
    end_step: int
    drop_fraction: float
    begin_step: int
    anneal: str = "cosine"

    @classmethod
    def create(cls, *, update_every: int = 100, end_step: int, drop_fraction: float = 0.3,
               begin_step: int | None = None, anneal: str = "cosine") -> DropGrowSchedule:
        """A validated schedule (see the class docstring for the arguments).

        Raises:
            ValueError / TypeError: ``update_every < 1``, a negative ``begin_step``,
                ``end_step < begin_step`` (no update would ever happen), a drop fraction outside
                ``[0, 1]``, an unknown ``anneal``.
        """
        update_every = hyper_int(update_every, "update_every", minimum=1)
        begin_step = update_every if begin_step is None else hyper_int(begin_step, "begin_step",
                                                                       minimum=0)
        end_step = hyper_int(end_step, "end_step", minimum=1)
        if is_concrete(end_step) and is_concrete(begin_step) and end_step < begin_step:
            raise ValueError(must_be("end_step", f">= begin_step = {begin_step} (the first mask "
                                     f"update; end_step is inclusive)", end_step))
        check_sparsity(drop_fraction, "drop_fraction")
        check_choice(anneal, "anneal", ANNEALS)
        return cls(update_every, end_step, drop_fraction, begin_step, anneal)

    def active(self, step: Int[Array, ""] | int) -> Bool[Array, ""]:
        """Whether the masks are updated at ``step`` (traced bool scalar)."""
        t = jnp.asarray(step, jnp.int32)
        return ((t >= self.begin_step) & ((t - self.begin_step) % self.update_every == 0)
                & (t <= self.end_step))

    def fraction(self, step: Int[Array, ""] | int) -> Float[Array, ""]:
        """The drop fraction used by an update at ``step`` (float32 scalar)."""
        f0 = jnp.asarray(self.drop_fraction, jnp.float32)
        if self.anneal == "constant":
            return f0
        t = jnp.minimum(jnp.asarray(step, jnp.float32), self.end_step)
        return f0 / 2 * (1 + jnp.cos(jnp.float32(math.pi) * t / self.end_step))

"""Sparsity schedules: ``step -> sparsity`` functions that work with a traced ``step``.

A schedule is any callable ``schedule(step) -> float32 scalar``; these are the standard ones.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    check_int,
    check_positive_float,
    check_sparsity,
    in_unit_interval,
    must_be,
)

Schedule = Callable[[Int[Array, ""] | int], Float[Array, ""]]

__all__ = ["Schedule", "constant", "one_shot", "polynomial"]


def constant(sparsity: float) -> Schedule:
    """The same ``sparsity`` at every step."""
    check_sparsity(sparsity)

    def schedule(step):
        del step
        return jnp.asarray(sparsity, jnp.float32)

    return in_unit_interval(schedule)


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """``0`` before ``step``, ``sparsity`` from ``step`` on (prune once, then hold)."""
    check_sparsity(sparsity)
    at = check_int(step, "step", minimum=0)

    def schedule(t):
        return jnp.where(jnp.asarray(t) >= at, jnp.float32(sparsity), jnp.float32(0.0))

    return in_unit_interval(schedule)


def polynomial(
    final: float,
    begin_step: int,
    end_step: int,
    initial: float = 0.0,
    power: float = 3,
    frequency: int = 1,
) -> Schedule:
    """Gradual pruning schedule of Zhu & Gupta (2017), TF-MOT's ``PolynomialDecay``.

    ``s(t) = final + (initial - final) * (1 - p)**power`` with
    ``p = clip((t' - begin_step) / (end_step - begin_step), 0, 1)`` and
    ``t' = begin_step + floor((t - begin_step) / frequency) * frequency``, so the sparsity changes
    only every ``frequency`` steps (when the mask is recomputed).

    Step convention: ``t`` is the number of optimizer steps already taken (optax's ``count``), as in
    TF-MOT: ``s(begin_step) = initial`` and ``s(t) = final`` for ``t >= end_step``.

    Reproducing jaxpruner's ``PolynomialSchedule`` (``initial=0``): jaxpruner evaluates the
    *continuous* ramp at ``t + 1`` and quantises nothing; its ``update_freq`` only decides when the
    mask is recomputed (steps with ``t % update_freq == 0`` and ``begin_step <= t <= end_step``,
    counted from 0, not from ``begin_step``).

    * ``frequency=1``: pass ``step + 1``: ``polynomial(final, b, e)(step + 1)``.
    * ``frequency=f > 1``: build the schedule with ``frequency=1``, evaluate it at ``step + 1``, and
      recompute the mask only on jaxpruner's update steps (hold it in between). Passing
      ``step + 1`` to a ``frequency=f`` schedule does *not* reproduce it: the floor to a multiple
      of ``f`` then lands on the previous update (``s(t)`` instead of ``s(t + 1)``).

    Args:
        final: target sparsity reached at ``end_step``.
        begin_step: first step of the ramp (sparsity ``initial`` before and at it).
        end_step: step where ``final`` is reached, ``> begin_step``.
        initial: starting sparsity.
        power: exponent (3 = cubic, the paper's choice).
        frequency: mask update period in steps.

    Returns:
        ``schedule(step) -> float32`` sparsity.
    """
    check_sparsity(final, "final")
    check_sparsity(initial, "initial")
    begin_step = check_int(begin_step, "begin_step", minimum=0)
    end_step = check_int(end_step, "end_step", minimum=0)
    frequency = check_int(frequency, "frequency", minimum=1)
    if end_step <= begin_step:
        raise ValueError(must_be("end_step", f"> begin_step={begin_step}", end_step))
    power = check_positive_float(power, "power")

    def schedule(step):
        t = jnp.asarray(step, jnp.int32)
        t = begin_step + jnp.floor_divide(jnp.maximum(t - begin_step, 0), frequency) * frequency
        p = jnp.clip((t - begin_step) / (end_step - begin_step), 0.0, 1.0).astype(jnp.float32)
        return (final + (initial - final) * (1.0 - p) ** power).astype(jnp.float32)

    # read by `sparsejax.training.prune` as its default update range (TF-MOT's PolynomialDecay
    # carries its begin / end step the same way)
    schedule.begin_step, schedule.end_step = begin_step, end_step
    return in_unit_interval(schedule)

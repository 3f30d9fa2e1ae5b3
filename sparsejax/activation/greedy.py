"""TEAL's greedy allocation of activation sparsity across the projections of a block.

FasterDecoding/TEAL ``teal/greedyopt.py::process_layer``: start every projection at sparsity 0;
each step tries raising one projection's sparsity by ``step / weight`` (``weight``: its relative
parameter count, so a step removes about the same number of weight reads whichever projection
takes it), measures the block-output error of each trial and keeps the best; stop when the
weighted mean sparsity ``sum_p w_p s_p / sum_p w_p`` reaches the target. `greedy_sparsities` is
that loop over any ``error_fn``; `block_output_error` is TEAL's error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_callable, check_float, check_positive_float, check_sparsity

__all__ = ["GreedyResult", "block_output_error", "greedy_sparsities"]


class GreedyResult(NamedTuple):
    """Outcome of `greedy_sparsities`.

    Attributes:
        sparsities: ``{name: sparsity}`` at the target (each clipped to 1).
        history: one ``(effective_sparsity, error, sparsities)`` per accepted step (TEAL's CSV
            rows, without the uniform baseline column).
    """

    sparsities: dict[str, float]
    history: list[tuple[float, float, dict[str, float]]]


def block_output_error(
    target: Float[Array, "batch seq hidden"],
    out: Float[Array, "batch seq hidden"],
    last_fraction: float = 0.25,
) -> Float[Array, ""]:
    """TEAL's ``calculate_activation_error``: over the last ``last_fraction`` of the sequence,
    the norm of ``target - out`` along the *sequence* axis (``torch.norm(..., dim=1)``), averaged
    over batch and hidden.

    Args:
        target: dense block output ``[batch, seq, hidden]``.
        out: block output with sparsified inputs, same shape.
        last_fraction: fraction of (last) positions compared, in ``(0, 1]``.

    Returns:
        float scalar.
    """
    last_fraction = check_float(last_fraction, "last_fraction", minimum=0.0, maximum=1.0)
    start = int(target.shape[1] * (1 - last_fraction))
    diff = jnp.asarray(target)[:, start:] - jnp.asarray(out)[:, start:]
    return jnp.mean(jnp.linalg.norm(diff, axis=1))


def _effective(sparsities: Mapping[str, float], weights: Mapping[str, float]) -> float:
    total = sum(weights.values())
    return sum(sparsities[p] * weights[p] for p in weights) / total


def greedy_sparsities(
    error_fn: Callable[[dict[str, float]], Any],
    weights: Mapping[str, float],
    target: float,
    *,
    step: float = 0.05,
) -> GreedyResult:
    """TEAL's greedy per-projection sparsities reaching a weighted mean ``target``.

    Args:
        error_fn: ``{name: sparsity} -> error`` (e.g. `block_output_error` of the block run
            with those sparsities); called ``len(weights)`` times per step with every sparsity
            in ``[0, 1]``.
        weights: ``{name: relative size}`` of the projections (TEAL: q 1, k/v 1/8 or 1/4 for
            GQA, o 1, gate/up/down ``intermediate / hidden``); positive floats.
        target: weighted mean sparsity to reach, in ``[0, 1]``.
        step: base step (TEAL's ``base_step_size`` 0.05); projection ``p`` moves by
            ``step / weights[p]``.

    Returns:
        `GreedyResult` (sparsities clipped to 1; TEAL's loop lets the last step overshoot 1, and
        so does the accounting of the weighted mean here).

    Raises:
        TypeError: ``error_fn`` not callable.
        ValueError: empty or non-positive ``weights``, ``target`` outside ``[0, 1]``,
            non-positive ``step``.
    """
    check_callable(error_fn, "error_fn")
    target = check_sparsity(float(target), "target")
    step = check_positive_float(step, "step")
    weights = {str(k): check_positive_float(float(v), f"weights[{k!r}]")
               for k, v in dict(weights).items()}
    if not weights:
        raise ValueError("`weights` must name at least one projection; got an empty mapping.")
    steps = {p: step / w for p, w in weights.items()}
    current = {p: 0.0 for p in weights}
    history: list = []

    def clipped(s):
        return {p: min(v, 1.0) for p, v in s.items()}

    while _effective(current, weights) < target:
        best_err, best = float("inf"), None
        for p in weights:
            if current[p] >= 1:
                continue
            trial = dict(current)
            trial[p] += steps[p]
            err = float(error_fn(clipped(trial)))
            if err < best_err:
                best_err, best = err, p
        if best is None:
            break
        current[best] += steps[best]
        history.append((_effective(current, weights), best_err, clipped(current)))
    return GreedyResult(clipped(current), history)

"""SpIEL: sparse fine-tuning whose support drops and regrows under a fixed budget.

`spiel` trains the values of a delta tree (`sparsejax.peft.delta`) like `train_delta` and, every
``reselect_every`` steps, moves part of each delta's support with `training.drop_and_grow`
(AlanAnsell/peft ``tuners/sft/trainer.py``, ``SftSelector``):

* drop the fraction ``p = initial_rate * (1 - t / total_steps)`` of entries with the smallest
  ``|delta|`` (``p = 1`` at the first reselection, which replaces the random initial support);
* regrow as many entries, ranked by ``regrow="grad"``: the magnitude of the gradient accumulated
  over the ``accumulate_steps`` steps before the reselection, on candidates fixed at the phase's
  first step (the top-``k`` ``|grad|``; ``select_rigl``), or ``regrow="sm3"``: the outer product
  of the SM3 row / column accumulators of the values' squared gradients (``select_sm3``), among
  the entries outside the current support.

Moved slots restart at value 0 with their optimizer moments reset to 0 (the reference instead
seeds Adam's moments with the accumulated gradient statistics; not done here).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax._checks import check_choice, check_float, check_int, must_be
from sparsejax.peft.delta import _is_node, delta_updates, is_delta, slot_grads, values_of
from sparsejax.training.drop_grow import drop_and_grow
from sparsejax.training.moments import reset_moments

PyTree = Any
__all__ = ["REGROW", "SpielState", "spiel", "spiel_fraction"]

REGROW = ("grad", "sm3")


class SpielState(NamedTuple):
    """State of `spiel`: per `SparseDelta` (lists in tree order) the growth statistics.

    Attributes:
        count: optimizer steps taken (int32 scalar).
        inner_state: the inner optimizer's state over the deltas' values.
        candidates: ``regrow="grad"``: int32 ``(k,)`` flat candidate indices of the phase.
        grad_sum: sum of the gradients at the candidates over the phase (``(k,)``).
        grad_sq: sum of their squares (``(k,)``; kept for momentum seeding and diagnostics).
        samples: number of gradients accumulated (int32 scalar per delta).
        row_acc: ``regrow="sm3"``: SM3 row accumulators ``(rows,)`` (else empty).
        col_acc: ``regrow="sm3"``: SM3 column accumulators ``(cols,)`` (else empty).
    """

    count: jax.Array
    inner_state: Any
    candidates: list
    grad_sum: list
    grad_sq: list
    samples: list
    row_acc: list
    col_acc: list


def spiel_fraction(step: Any, *, total_steps: int, accumulate_steps: int,
                   initial_rate: float) -> jax.Array:
    """The fraction reselected by the reselection that ends with ``step`` completed steps:
    ``1`` at ``step == accumulate_steps`` (the first), else ``initial_rate * (1 - step /
    total_steps)`` (``SftSelector.end_selection_phase``, ``linear`` policy)."""
    c = jnp.asarray(step, jnp.float32)
    return jnp.where(c == accumulate_steps, jnp.float32(1.0),
                     jnp.float32(initial_rate) * (1.0 - c / jnp.float32(total_steps)))


def _dense_leaves(grads: PyTree, params: PyTree) -> list:
    flat, treedef = jax.tree.flatten(params, is_leaf=_is_node)
    g_flat = treedef.flatten_up_to(grads)
    out = []
    for d, g in zip(flat, g_flat):
        if is_delta(d):
            if is_delta(g) or tuple(jnp.shape(g)) != d.shape:
                raise ValueError(must_be("updates", "the dense gradients of the fine-tuned "
                                         f"leaves (shape {d.shape}) for regrow='grad'",
                                         type(g).__name__ if is_delta(g) else
                                         f"shape {tuple(jnp.shape(g))}", raw=True))
            out.append(jnp.ravel(g))
    return out


def _reslot(d: Any, values: jax.Array, new_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Move the slots whose index left the support to the newly grown indices (in flat order);
    returns ``(new_indices, moved)``."""
    k = d.indices.shape[0]
    leaving = ~new_mask[d.indices]
    old_mask = jnp.zeros(new_mask.shape, bool).at[d.indices].set(True)
    grown = jnp.nonzero(new_mask & ~old_mask, size=k, fill_value=0)[0].astype(d.indices.dtype)
    slots = jnp.nonzero(leaving, size=k, fill_value=k)[0]
    n_grown = jnp.sum(new_mask & ~old_mask)
    slots = jnp.where(jnp.arange(k) < n_grown, slots, k)  # k = out of range: dropped
    new_indices = d.indices.at[slots].set(grown, mode="drop")
    return new_indices, leaving


def spiel(
    inner: optax.GradientTransformation,
    *,
    total_steps: int,
    reselect_every: int = 20,
    accumulate_steps: int = 5,
    initial_rate: float = 0.2,
    regrow: str = "grad",
) -> optax.GradientTransformationExtraArgs:
    """SpIEL as an optax transform over a tree holding sparse deltas.

    One ``update(grads, state, params)`` at ``t = state.count`` steps taken: accumulate growth
    statistics (``regrow="grad"``: during the steps ``t < accumulate_steps`` and ``t mod R`` in
    ``{R - 1, 0, ..., accumulate_steps - 1}``, with ``R = reselect_every``, as ``SftSelector``'s
    hooks), step ``inner`` on the values' gradients, then if ``(t + 1) % R == accumulate_steps``
    and ``t + 1 <= total_steps`` reselect with fraction `spiel_fraction` ``(t + 1)``: per delta
    `training.drop_and_grow` on the dense support mask (drop score ``|delta|``), every delta keeps
    its ``k`` entries.

    Args:
        inner: the optimizer of the values (its params-shaped moments are reset on moved slots).
        total_steps: ``T`` of the rate schedule (the run's length); no reselection after it.
        reselect_every: ``R``, steps between reselections (``>= 2``).
        accumulate_steps: gradients accumulated before a reselection, in ``[1, R - 1]``.
        initial_rate: ``p0`` in ``[0, 1]``.
        regrow: ``"grad"`` (accumulated gradient magnitude on top-``k`` candidates; needs the
            dense gradients of the fine-tuned leaves) or ``"sm3"`` (SM3 row / column statistics
            of the values' gradients; 2-D leaves only).

    Returns:
        an ``optax.GradientTransformationExtraArgs`` whose state is a `SpielState`. ``grads``
        mirror the delta tree with the dense gradient of each fine-tuned leaf (the gradient of the
        loss at `sparsejax.peft.apply` ``(base, delta)``); with ``regrow="sm3"`` a `SparseDelta`
        of the values' gradients also works.

    Raises:
        ValueError / TypeError: bad arguments (eagerly); at ``init``, ``regrow="sm3"`` on a
            delta of a leaf that is not 2-D.
    """
    total_steps = check_int(total_steps, "total_steps", minimum=1)
    reselect_every = check_int(reselect_every, "reselect_every", minimum=2)
    accumulate_steps = check_int(accumulate_steps, "accumulate_steps", minimum=1)
    if accumulate_steps >= reselect_every:
        raise ValueError(must_be("accumulate_steps", f"< reselect_every = {reselect_every}",
                                 accumulate_steps))
    initial_rate = check_float(initial_rate, "initial_rate", minimum=0.0, maximum=1.0)
    check_choice(regrow, "regrow", REGROW)
    inner = optax.with_extra_args_support(inner)
    R, A, T = reselect_every, accumulate_steps, total_steps

    def init(params):
        deltas = [d for d in jax.tree.leaves(params, is_leaf=is_delta) if is_delta(d)]
        vals = values_of(params)
        grad_mode = regrow == "grad"
        if not grad_mode:
            for d in deltas:
                if len(d.shape) != 2:
                    raise ValueError(must_be("regrow", "'grad' for a delta of a leaf that is "
                                             "not 2-D (sm3 keeps row and column statistics)",
                                             f"'sm3' with a leaf of shape {d.shape}", raw=True))
        z = [jnp.zeros((d.indices.shape[0] if grad_mode else 0,), jnp.float32) for d in deltas]
        state = SpielState(
            jnp.zeros([], jnp.int32), inner.init(vals),
            [jnp.zeros(x.shape, jnp.int32) for x in z], z, list(z),
            [jnp.zeros([], jnp.int32) for _ in deltas],
            [jnp.zeros((d.shape[0] if not grad_mode else 0,), jnp.float32) for d in deltas],
            [jnp.zeros((d.shape[1] if not grad_mode else 0,), jnp.float32) for d in deltas])
        reset_moments(state.inner_state, vals, [jnp.zeros(v.shape, bool) for v in vals])
        return state

    def update(updates, state, params=None, **extra):
        if params is None:
            raise ValueError("`params` must be passed to update(grads, state, params) by spiel "
                             "(it reads the deltas); got None.")
        t = state.count
        deltas = [d for d in jax.tree.leaves(params, is_leaf=is_delta) if is_delta(d)]
        vals = values_of(params)
        g_slots = [g.astype(jnp.float32) for g in slot_grads(updates, params)]
        cands, gsum, gsq, samples = state.candidates, state.grad_sum, state.grad_sq, state.samples
        rows, cols = state.row_acc, state.col_acc
        if regrow == "grad":
            dense = _dense_leaves(updates, params)
            first = (t == 0) | ((t + 1) % R == 0)
            in_phase = first | ((t % R < A) & (t >= R)) | (t < A)
            new = []
            for d, g, c, s, q, n in zip(deltas, dense, cands, gsum, gsq, samples):
                g = g.astype(jnp.float32)
                k = d.indices.shape[0]
                top = lax.top_k(jnp.abs(g), k)[1].astype(jnp.int32)
                c2 = jnp.where(first, top, c)
                gc = g[c2]
                s2 = jnp.where(first, gc, s + gc)
                q2 = jnp.where(first, gc * gc, q + gc * gc)
                n2 = jnp.where(first, 1, n + 1)
                new.append(tuple(jnp.where(in_phase, a, b) for a, b in
                                 ((c2, c), (s2, s), (q2, q), (n2, n))))
            cands, gsum, gsq, samples = (list(x) for x in zip(*new)) if new else ([],) * 4
        else:
            rows, cols = [], []
            for d, g, r_acc, c_acc in zip(deltas, g_slots, state.row_acc, state.col_acc):
                r = d.indices // d.shape[1]
                c = d.indices % d.shape[1]
                u = jnp.minimum(r_acc[r], c_acc[c]) + g * g
                rows.append(r_acc.at[r].max(u))
                cols.append(c_acc.at[c].max(u))
        upd, inner_state = inner.update([g.astype(v.dtype) for g, v in zip(g_slots, vals)],
                                        state.inner_state, vals, **extra)
        stepped = [v + u for v, u in zip(vals, upd)]
        c_next = t + 1
        fraction = spiel_fraction(c_next, total_steps=T, accumulate_steps=A,
                                  initial_rate=initial_rate)

        def reselect():
            idx, moved = [], []
            for j, (d, v) in enumerate(zip(deltas, stepped)):
                size = math.prod(d.shape)
                old = jnp.zeros((size,), bool).at[d.indices].set(True)
                drop = jnp.zeros((size,), jnp.float32).at[d.indices].set(
                    jnp.abs(v.astype(jnp.float32)))
                if regrow == "grad":
                    grow = jnp.full((size,), -jnp.inf, jnp.float32).at[cands[j]].set(
                        jnp.abs(gsum[j]))
                else:
                    grow = jnp.outer(rows[j], cols[j]).ravel()
                new_mask = drop_and_grow(old, drop, grow, fraction,
                                         regrow_dropped=regrow == "grad")
                ni, mv = _reslot(d, v, new_mask)
                idx.append(ni)
                moved.append(mv)
            return idx, moved

        def keep():
            return ([d.indices for d in deltas],
                    [jnp.zeros(d.indices.shape, bool) for d in deltas])

        active = (c_next % R == A) & (c_next <= T)
        new_idx, moved = lax.cond(active, reselect, keep)
        inner_state = reset_moments(inner_state, vals, moved)
        value_updates = [jnp.where(m, -v, u) for m, v, u in zip(moved, vals, upd)]
        state = SpielState(c_next, inner_state, cands, gsum, gsq, samples, rows, cols)
        return delta_updates(params, value_updates, new_idx), state

    return optax.GradientTransformationExtraArgs(init, update)

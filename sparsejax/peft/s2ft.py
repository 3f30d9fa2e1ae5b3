"""S2FT: structured sparse fine-tuning of selected attention heads and FFN channels.

Selected value / output heads and up / down channels are co-permuted so each choice is a
contiguous slice (Infini-AI-Lab/S2FT ``experiments/utils/s2_utils.py``: order ``only_first + both +
only_second + rest``; q, k, v and the output projection's input permuted by the same head order,
which leaves the function unchanged), the slice is trained dense as an `S2Kernel` whose forward
adds ``x @ values`` into the slice (``s2ft/s2.py`` ``S2ColumnLinear`` / ``S2RowLinear``), so the
backward computes only the slice's gradient, and `merge` folds it back.

Kernels are Flax-style ``[in, out]``: a *column* slice (``axis=1``, the torch ``S2ColumnLinear``
on v / up) is a range of outputs, a *row* slice (``axis=0``, ``S2RowLinear`` on o / down) a range of
inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_choice, check_float, check_int, must_be

PyTree = Any
__all__ = ["CRITERIA", "S2Kernel", "coupled_order", "merge", "permute_units", "select_units",
           "s2ft_bert", "select_bert", "trainable_count", "values", "with_values"]

CRITERIA = ("random", "weight", "activation")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class S2Kernel:
    """A frozen ``[in, out]`` kernel with a dense trainable slice.

    ``x @ kernel`` is ``x @ base`` with ``x @ values`` added to outputs ``start:start+n``
    (``axis=1``) or plus ``x[..., start:start+n] @ values`` (``axis=0``); only the slice's
    gradient is ever formed. Use it where a model does ``x @ params[...]["kernel"]``.

    Attributes:
        base: the frozen kernel ``[in, out]``.
        values: the trainable delta, ``[in, n]`` (``axis=1``) or ``[n, out]`` (``axis=0``).
        start: first index of the slice along ``axis`` (static).
        axis: ``1`` (output columns) or ``0`` (input rows) (static).
    """

    base: Float[Array, "din dout"]
    values: Float[Array, "a b"]
    start: int = dataclasses.field(default=0, metadata=dict(static=True))
    axis: int = dataclasses.field(default=1, metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        y = x @ self.base
        n = self.values.shape[self.axis]
        if self.axis == 1:
            return y.at[..., self.start:self.start + n].add(x @ self.values)
        return y + x[..., self.start:self.start + n] @ self.values

    def merged(self) -> jax.Array:
        """The dense kernel ``base`` with ``values`` added into the slice."""
        n = self.values.shape[self.axis]
        if self.axis == 1:
            return self.base.at[:, self.start:self.start + n].add(self.values)
        return self.base.at[self.start:self.start + n].add(self.values)


def _is_s2(x: Any) -> bool:
    return isinstance(x, S2Kernel)


def values(params: PyTree) -> list[jax.Array]:
    """The trainable slices of every `S2Kernel` in ``params`` (tree order): what to differentiate
    and give the optimizer (its state is then proportional to the trainable count only)."""
    return [k.values for k in jax.tree.leaves(params, is_leaf=_is_s2) if _is_s2(k)]


def with_values(params: PyTree, new_values: list) -> PyTree:
    """``params`` with the `S2Kernel` slices replaced by ``new_values`` (from `values`)."""
    flat, treedef = jax.tree.flatten(params, is_leaf=_is_s2)
    it = iter(new_values)
    out = [dataclasses.replace(k, values=next(it)) if _is_s2(k) else k for k in flat]
    return jax.tree.unflatten(treedef, out)


def trainable_count(params: PyTree) -> int:
    """Number of trainable entries (sum of the slices' sizes)."""
    return sum(int(v.size) for v in values(params))


def merge(params: PyTree) -> PyTree:
    """Every `S2Kernel` folded into a plain kernel (``S2ColumnLinear.fuse_s2_weight``)."""
    return jax.tree.map(lambda k: k.merged() if _is_s2(k) else k, params, is_leaf=_is_s2)


def select_units(n_units: int, count: int, *, criterion: str = "random", key: Any = None,
                 scores: Float[Array, " n"] | None = None) -> np.ndarray:
    """Choose ``count`` of ``n_units`` units (heads or channels).

    Args:
        n_units: number of units.
        count: number chosen, in ``[0, n_units]``.
        criterion: ``"random"`` (uniform without replacement, with ``key``; the reference's
            ``random.sample``), ``"weight"`` or ``"activation"`` (the ``count`` highest
            ``scores``: a unit's weight norm, or its mean activation norm on calibration data).
        key: PRNG key for ``"random"``.
        scores: ``(n_units,)`` scores for ``"weight"`` / ``"activation"``.

    Returns:
        sorted int ``(count,)`` numpy array of unit indices.
    """
    n_units = check_int(n_units, "n_units", minimum=1)
    count = check_int(count, "count", minimum=0)
    if count > n_units:
        raise ValueError(must_be("count", f"in [0, n_units = {n_units}]", count))
    check_choice(criterion, "criterion", CRITERIA)
    if criterion == "random":
        if key is None:
            raise ValueError("`key` must be a jax.random key for criterion='random'; got None.")
        chosen = np.asarray(jax.random.permutation(key, n_units))[:count]
    else:
        if scores is None or np.shape(scores) != (n_units,):
            raise ValueError(must_be("scores", f"a ({n_units},) array for criterion="
                                     f"{criterion!r}", None if scores is None else
                                     f"shape {np.shape(scores)}", raw=scores is not None))
        chosen = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:count]
    return np.sort(chosen.astype(np.int64))


def coupled_order(first: Any, second: Any, n_units: int) -> tuple[np.ndarray, tuple, tuple]:
    """The co-permutation that makes two coupled selections contiguous (``s2_utils.py``).

    Args:
        first: units chosen for the first matrix (v / up: a column slice).
        second: units chosen for the second (o / down: a row slice).
        n_units: number of units.

    Returns:
        ``(order, first_range, second_range)``: ``order`` lists ``only_first``, ``both``,
        ``only_second`` (each in the given order) then the rest; ``first_range = (0,
        |only_first| + |both|)`` and ``second_range = (|only_first|, |only_first| + |both| +
        |only_second|)`` in permuted units.
    """
    first, second = [int(u) for u in first], [int(u) for u in second]
    for name, sel in (("first", first), ("second", second)):
        if any(not 0 <= u < n_units for u in sel) or len(set(sel)) != len(sel):
            raise ValueError(must_be(name, f"distinct unit indices in [0, {n_units})", sel))
    s2 = set(second)
    only_f = [u for u in first if u not in s2]
    both = [u for u in first if u in s2]
    only_s = [u for u in second if u not in set(first)]
    order = only_f + both + only_s
    order += [u for u in range(n_units) if u not in set(order)]
    return (np.asarray(order, np.int64), (0, len(only_f) + len(both)),
            (len(only_f), len(only_f) + len(both) + len(only_s)))


def permute_units(x: Float[Array, "..."], order: Int[Array, " n"], axis: int, unit: int = 1
                  ) -> jax.Array:
    """``x`` with its ``axis`` permuted in blocks of ``unit`` (a head's ``head_dim`` columns) by
    ``order``: block ``j`` of the result is block ``order[j]`` of ``x``."""
    order = np.asarray(order)
    idx = (order[:, None] * unit + np.arange(unit)[None]).reshape(-1)
    if idx.size != x.shape[axis]:
        raise ValueError(must_be("order", f"a permutation of {x.shape[axis] // unit} units of "
                                 f"{unit} along axis {axis}", f"{order.size} units", raw=True))
    return jnp.take(x, jnp.asarray(idx), axis=axis)


def _unit_norms(w: jax.Array, axis: int, unit: int) -> np.ndarray:
    w = np.asarray(w, np.float64)
    w = np.moveaxis(w, axis, 0).reshape(w.shape[axis] // unit, -1)
    return np.linalg.norm(w, axis=1)


def select_bert(params: dict, config: Any, *, v_ratio: float = 0.0, o_ratio: float = 0.0,
                u_ratio: float = 0.0, d_ratio: float = 0.0, criterion: str = "random",
                key: Any = None, scores: dict | None = None) -> dict:
    """Choose heads (value / output) and FFN channels (up / down) across all layers of a BERT
    params dict (`sparsejax.models`), ``int(total * ratio)`` each, as the reference does (one
    draw over ``layers * heads`` heads, then split by layer).

    Args:
        params: the encoder's params (``layers/{i}/{value,attn_out,ffn_in,ffn_out}/kernel``).
        config: its `sparsejax.models.BertConfig`.
        v_ratio: fraction of all heads chosen for the value projections.
        o_ratio: fraction of all heads chosen for the output projections.
        u_ratio: fraction of all FFN channels chosen for the up projections.
        d_ratio: fraction of all FFN channels chosen for the down projections.
        criterion: ``"random"`` (``key``), ``"weight"`` (norm of the unit's weights in that
            matrix) or ``"activation"`` (``scores``).
        key: PRNG key for ``"random"``.
        scores: for ``"activation"``: ``{"v": [layers, heads], "o": ..., "u": [layers,
            intermediate], "d": ...}`` arrays (e.g. mean input norms from ``encode``'s ``tap``).

    Returns:
        ``{"v": [[heads of layer 0], ...], "o": ..., "u": ..., "d": ...}`` sorted unit lists.
    """
    layers, heads = config.layers, config.heads
    hd = config.hidden // heads
    check_choice(criterion, "criterion", CRITERIA)
    spec = {"v": ("value", 1, hd, heads, v_ratio), "o": ("attn_out", 0, hd, heads, o_ratio),
            "u": ("ffn_in", 1, 1, config.intermediate, u_ratio),
            "d": ("ffn_out", 0, 1, config.intermediate, d_ratio)}
    keys = dict(zip(spec, jax.random.split(key, 4))) if key is not None else {}
    out = {}
    for name, (leaf, axis, unit, n, ratio) in spec.items():
        ratio = check_float(ratio, f"{name}_ratio", minimum=0.0, maximum=1.0)
        total = layers * n
        count = int(total * ratio)
        s = None
        if criterion == "weight":
            s = np.concatenate([_unit_norms(params["layers"][i][leaf]["kernel"], axis, unit)
                                for i in range(layers)])
        elif criterion == "activation":
            if scores is None or name not in scores:
                raise ValueError(must_be("scores", f"a dict with key {name!r} ([layers, units] "
                                         "activation scores) for criterion='activation'",
                                         scores if scores is None else sorted(scores)))
            s = np.asarray(scores[name], np.float64).reshape(-1)
        chosen = select_units(total, count, criterion=criterion, key=keys.get(name), scores=s)
        out[name] = [[int(u % n) for u in chosen if u // n == i] for i in range(layers)]
    return out


def s2ft_bert(params: dict, config: Any, selection: dict) -> dict:
    """Co-permute a BERT params dict by a `select_bert` selection and wrap the trained slices.

    Per layer: heads are reordered ``coupled_order(v, o)`` in q, k, v (outputs, with biases) and
    the output projection (inputs); FFN channels ``coupled_order(u, d)`` in ``ffn_in`` (outputs,
    bias) and ``ffn_out`` (inputs); the model's function is unchanged. ``value`` / ``ffn_in``
    become column-slice `S2Kernel` s, ``attn_out`` / ``ffn_out`` row-slice ones (where their
    selection is not empty), all with zero ``values``.

    Returns:
        a params dict usable by `sparsejax.models.encode` unchanged.
    """
    heads = config.heads
    hd = config.hidden // heads
    layers = []
    for i, lp in enumerate(params["layers"]):
        lp = {k: dict(v) if isinstance(v, dict) else v for k, v in lp.items()}
        order, (v0, v1), (o0, o1) = coupled_order(selection["v"][i], selection["o"][i], heads)
        for name in ("query", "key", "value"):
            lp[name]["kernel"] = permute_units(lp[name]["kernel"], order, 1, hd)
            lp[name]["bias"] = permute_units(lp[name]["bias"], order, 0, hd)
        lp["attn_out"]["kernel"] = permute_units(lp["attn_out"]["kernel"], order, 0, hd)
        order, (u0, u1), (d0, d1) = coupled_order(selection["u"][i], selection["d"][i],
                                                  config.intermediate)
        lp["ffn_in"]["kernel"] = permute_units(lp["ffn_in"]["kernel"], order, 1)
        lp["ffn_in"]["bias"] = permute_units(lp["ffn_in"]["bias"], order, 0)
        lp["ffn_out"]["kernel"] = permute_units(lp["ffn_out"]["kernel"], order, 0)
        for name, (a, b), unit, axis in (("value", (v0, v1), hd, 1), ("attn_out", (o0, o1), hd, 0),
                                         ("ffn_in", (u0, u1), 1, 1), ("ffn_out", (d0, d1), 1, 0)):
            if b > a:
                w = lp[name]["kernel"]
                shape = list(w.shape)
                shape[axis] = (b - a) * unit
                lp[name]["kernel"] = S2Kernel(w, jnp.zeros(shape, w.dtype), a * unit, axis)
        layers.append(lp)
    return {**params, "layers": layers}


def s2ft_fraction(config: Any, ratio: float) -> float:
    """Fraction of a BERT encoder's linear weights trained when all four ratios are ``ratio``
    (a helper to size S2FT against a parameter budget)."""
    per_layer = 4 * config.hidden ** 2 + 2 * config.hidden * config.intermediate
    trained = (2 * math.floor(config.heads * config.layers * ratio) * config.hidden ** 2
               / config.heads
               + 2 * math.floor(config.intermediate * config.layers * ratio) * config.hidden)
    return trained / (per_layer * config.layers)

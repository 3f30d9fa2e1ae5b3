"""The sequential one-shot driver: calibrate and prune a model's linear layers group by group."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import must_be
from sparsejax._jitcache import cached_step
from sparsejax.oneshot._layer import AXIS_HELP, check_axis
from sparsejax.oneshot.dsnot import dsnot_prune
from sparsejax.oneshot.methods import magnitude_prune, sparsegpt_prune, wanda_prune
from sparsejax.oneshot.stats import LayerStats
from sparsejax.select import path_str

__all__ = ["METHODS", "layer_order", "prune_model"]

PyTree = Any
Tap = Callable[..., jax.Array]  # tap(name, x, where=None) -> x
METHODS = ("magnitude", "wanda", "sparsegpt", "dsnot")


def _identity_tap(name: str, x: jax.Array, where: jax.Array | None = None) -> jax.Array:
    return x


def _leaves_by_name(params: PyTree) -> dict[str, jax.Array]:
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _split(params: PyTree) -> tuple[list, tuple]:
    """``(arrays, static)``: the array leaves (``None`` elsewhere) and a hashable rest (the
    treedef and every non-array leaf: an Equinox module's activation, Python floats...), so
    ``jit``/``eval_shape`` see only arrays, as ``eqx.filter`` / ``eqx.partition`` would."""
    leaves, treedef = jax.tree.flatten(params)
    arrays = [x if _is_array(x) else None for x in leaves]
    rest = tuple(None if _is_array(x) else x for x in leaves)
    return arrays, (treedef, rest)


def _merge(arrays: list, static: tuple) -> PyTree:
    treedef, rest = static
    return jax.tree.unflatten(treedef, [a if a is not None else r for a, r in zip(arrays, rest)])


def _tapped_inputs(forward_fn: Callable, params: PyTree, batch: Any) -> dict[str, tuple]:
    """``{name: shape of x}`` of every ``tap(name, x)`` call of one forward pass, in call order
    (traced abstractly, no compute)."""
    shapes: dict[str, tuple] = {}

    def tap(name, x, where=None):
        shapes.setdefault(name, tuple(jnp.shape(x)))
        return x

    arrays, static = _split(params)
    jax.eval_shape(lambda a, b: forward_fn(_merge(a, static), b, tap), arrays, batch)
    return shapes


def layer_order(forward_fn: Callable, params: PyTree, batch: Any) -> list[str]:
    """Names passed to ``tap`` by one forward pass, in call order (traced abstractly, no compute).

    Works on any params pytree, an Equinox model with non-array fields (activations) included.
    """
    return list(_tapped_inputs(forward_fn, params, batch))


def _method_fn(method, sparsity, n, m, kwargs) -> tuple[Callable, bool]:
    """``(fn(w, stats, axis) -> (w', mask), needs_gram)`` for a method name or callable."""
    if callable(method):
        if sparsity is not None or n is not None or m is not None:
            raise ValueError("`sparsity`, `n` and `m` are for the named methods; a callable "
                             f"`method` sets its own pattern. Got sparsity={sparsity!r}, n={n!r}, "
                             f"m={m!r}.")
        return (lambda w, stats, axis: method(w, stats, axis=axis, **kwargs)), True
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS} or a callable; got {method!r}.")
    pattern = dict(sparsity=sparsity, n=n, m=m)
    if method == "magnitude":
        return (lambda w, stats, axis: magnitude_prune(w, **pattern, axis=axis)), False
    if method == "wanda":
        return (lambda w, stats, axis: wanda_prune(w, stats, **pattern, axis=axis)), False
    if method == "sparsegpt":
        return (lambda w, stats, axis: sparsegpt_prune(w, stats, **pattern, axis=axis,
                                                    **kwargs)), True

    def wanda_dsnot(w, stats, axis):
        _, start = wanda_prune(w, stats, **pattern, axis=axis)
        return dsnot_prune(w, stats, start, m=m, axis=axis, **kwargs)

    return wanda_dsnot, kwargs.get("guard", True)


def prune_model(
    params: PyTree,
    forward_fn: Callable[[PyTree, Any, Tap], Any],
    calibration_batches: Sequence[Any],
    method: str | Callable = "wanda",
    *,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    groups: Sequence[Sequence[str]] | None = None,
    axis: int | Mapping[str, int] | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
) -> tuple[PyTree, PyTree]:
    """Prune a model's linear layers one group at a time, each calibrated on the pruned prefix.

    As the reference scripts (locuslab/wanda ``prune_wanda``, IST-DASLab/sparsegpt ``llama_sequential``):
    the `LayerStats` of group ``k`` are accumulated over all ``calibration_batches`` with groups
    ``0..k-1`` already pruned, then every layer of group ``k`` is pruned. Only statistics leave the
    jitted forward pass (never the activations), and XLA drops the part of the forward after the
    group's last layer.

    The hook: ``forward_fn(params, batch, tap)`` runs the model and passes the *input* of every
    prunable layer through ``tap(name, x, where=None) -> x`` (which returns ``x`` unchanged), where
    ``name`` is the slash path of that layer's weight in ``params`` (`sparsejax.path_str`, e.g.
    ``"layers/0/query/kernel"``) and ``where`` optionally marks the tokens to count (padding out).
    A Flax NNX or Equinox model needs one ``x = tap(name, x)`` line per linear layer (docs: both).

    Args:
        params: a pytree holding the weights (a dict, an ``nnx.State``, an Equinox module, ...).
        forward_fn: ``(params, batch, tap) -> anything``, traceable by ``jax.jit``.
        calibration_batches: a re-iterable sequence of batches (read once per group).
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"``, ``"dsnot"`` (DSnoT started from
            Wanda's mask) or a callable ``(w, stats, *, axis) -> (pruned_w, mask)``.
        sparsity: unstructured sparsity of the named methods; or give ``n`` and ``m`` (N:M).
        n: kept entries per group of ``m`` inputs (N:M).
        m: N:M group size.
        groups: lists of layer names pruned together, in forward order; default: every tapped
            layer alone, in call order (the most sequential, one compiled pass per layer). Group a
            transformer block's layers together to match the references and compile fewer passes.
        axis: the input-feature (reduction) axis of the weights, required: 0 for Flax
            ``[in, out]`` kernels, 1 for Equinox/torch ``[out, in]`` weights (nothing tells the
            layouts apart on a square weight), or a mapping from layer name to it. Checked
            against the feature count of each layer's tapped input.
        method_kwargs: extra keyword arguments of the method (``block_size``, ``damp``,
            ``max_cycles``, ...).

    Returns:
        ``(pruned_params, masks)``: params with the layers pruned, and a mask tree of the structure
        of ``params`` (bool at pruned layers, ``None`` elsewhere).

    Raises:
        TypeError: ``calibration_batches`` is not a sequence.
        ValueError: an unknown method or layer name, a layer never passed to ``tap``, ``axis``
            missing, out of range or not the axis of the tapped input's features, calibration
            batches with no token counted, or the pattern errors of the methods.
    """
    check_calibration(calibration_batches, "calibration_batches")
    prune_fn, needs_gram = _method_fn(method, sparsity, n, m, dict(method_kwargs or {}))
    if axis is None:
        raise ValueError(must_be("axis", AXIS_HELP + ", or a mapping {layer name: axis}", None))
    tapped = _tapped_inputs(forward_fn, params, calibration_batches[0])
    if groups is None:
        groups = [[name] for name in tapped]
    groups = [list(g) for g in groups]
    weights = _leaves_by_name(params)
    for name in (name for g in groups for name in g):
        if name not in weights:
            raise ValueError(f"`groups` names a layer {name!r} that is not a leaf of `params`; "
                             f"leaves are {sorted(weights)[:8]}{' ...' if len(weights) > 8 else ''}.")
    axes = {name: _layer_axis(axis, name, weights[name], tapped.get(name))
            for g in groups for name in g}

    masks: dict[str, jax.Array] = {}
    for group in groups:
        stats = None
        if method != "magnitude":
            stats = _calibrate(params, forward_fn, calibration_batches, group,
                               {name: weights[name].shape[axes[name]] for name in group},
                               needs_gram)
            check_counted(stats, group, "calibration_batches")
        pruned = {}
        for name in group:
            pruned[name], masks[name] = prune_fn(weights[name], None if stats is None
                                                 else stats[name], axes[name])
        params = _replace(params, pruned)
        weights = _leaves_by_name(params)
    mask_tree = jax.tree_util.tree_map_with_path(lambda p, leaf: masks.get(path_str(p)), params)
    return params, mask_tree


def check_calibration(batches: Any, name: str) -> None:
    """``batches`` is a non-empty re-iterable sequence (read once per group or block)."""
    if not isinstance(batches, Sequence) or isinstance(batches, str):
        raise TypeError(f"`{name}` must be a re-iterable sequence (list or tuple) of batches; "
                        f"got {type(batches).__name__}.")
    if len(batches) == 0:
        raise ValueError(f"`{name}` must hold at least one batch; got an empty sequence.")


def check_counted(stats: Mapping[str, LayerStats], names: Sequence[str], name: str) -> None:
    """Every layer's statistics counted at least one token of the batches ``name``."""
    empty = [layer for layer in names if int(stats[layer].count) == 0]
    if empty:
        raise ValueError(must_be(name, "batches with at least one counted token for every "
                                 "pruned layer", f"0 tokens for {empty} (empty batches, or "
                                 "`where` masking out every token)", raw=True))


def _layer_axis(axis: int | Mapping[str, int], name: str, w: Any,
                tapped: tuple | None) -> int:
    """The input axis of layer ``name``, checked against its weight and its tapped input."""
    label = f"axis[{name!r}]" if isinstance(axis, Mapping) else "axis"
    if isinstance(axis, Mapping):
        if name not in axis:
            raise ValueError(must_be("axis", "an int or a mapping with an entry for every pruned "
                                     "layer", f"no entry for {name!r}", raw=True))
        axis = axis[name]
    ndim = len(jnp.shape(w))
    if ndim != 2:
        raise ValueError(must_be(f"params[{name!r}]", "a 2-D weight (a linear layer)",
                                 f"shape {tuple(jnp.shape(w))}", raw=True))
    ax = check_axis(axis, ndim, label)
    if tapped is not None and tapped and tapped[-1] != w.shape[ax]:
        fits = [a for a in range(ndim) if w.shape[a] == tapped[-1]]
        hint = f" (axis={fits[0]} fits)" if fits else ""
        raise ValueError(must_be(label, f"the input-feature axis of {name!r}: the axis of its "
                                 f"weight {tuple(w.shape)} whose length is the {tapped[-1]} "
                                 f"features of the input passed to tap{hint}", axis))
    return ax


def _calibrate(params, forward_fn, batches, group, features, gram) -> dict[str, LayerStats]:
    arrays, static = _split(params)
    step = cached_step(_stats_step, forward_fn, tuple(group), static)
    stats = {name: LayerStats.zeros(f, gram=gram) for name, f in features.items()}
    for batch in batches:
        stats = step(arrays, batch, stats)
    return stats


@functools.lru_cache(maxsize=64)  # reuse the compiled pass across calls with the same forward_fn
def _stats_step(forward_fn, group, static):
    @jax.jit
    def step(arrays, batch, stats):
        params = _merge(arrays, static)
        stats = dict(stats)
        seen = set()

        def tap(name, x, where=None):
            if name in stats:
                stats[name] = stats[name].update(x, where)
                seen.add(name)
            return x

        forward_fn(params, batch, tap)
        missing = [name for name in group if name not in seen]
        if missing:
            raise ValueError(f"layers {missing} were never passed to `tap` by `forward_fn`; every "
                             "layer in `groups` must be tapped (tap(name, x) with x its input).")
        return stats

    return step


def _replace(params: PyTree, new: Mapping[str, jax.Array]) -> PyTree:
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: new.get(path_str(p), leaf), params)



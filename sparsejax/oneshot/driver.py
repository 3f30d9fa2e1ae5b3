"""The sequential one-shot driver: calibrate and prune a model's linear layers group by group."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from sparsejax.oneshot.dsnot import dsnot
from sparsejax.oneshot.methods import magnitude, sparsegpt, wanda
from sparsejax.oneshot.stats import LayerStats
from sparsejax.select import path_str

__all__ = ["METHODS", "layer_order", "prune_model"]

PyTree = Any
Tap = Callable[..., jax.Array]  # tap(name, x, where=None) -> x
METHODS = ("magnitude", "wanda", "sparsegpt", "dsnot")


def _identity_tap(name: str, x: jax.Array) -> jax.Array:
    return x


def _leaves_by_name(params: PyTree) -> dict[str, jax.Array]:
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def layer_order(forward_fn: Callable, params: PyTree, batch: Any) -> list[str]:
    """Names passed to ``tap`` by one forward pass, in call order (traced abstractly, no compute)."""
    order: list[str] = []

    def tap(name, x, where=None):
        if name not in order:
            order.append(name)
        return x

    jax.eval_shape(lambda p, b: forward_fn(p, b, tap), params, batch)
    return order


def _method_fn(method, sparsity, n, m, kwargs) -> tuple[Callable, bool]:
    """``(fn(w, stats, in_axis) -> (w', mask), needs_gram)`` for a method name or callable."""
    if callable(method):
        if sparsity is not None or n is not None or m is not None:
            raise ValueError("`sparsity`, `n` and `m` are for the named methods; a callable "
                             f"`method` sets its own pattern. Got sparsity={sparsity!r}, n={n!r}, "
                             f"m={m!r}.")
        return (lambda w, stats, in_axis: method(w, stats, in_axis=in_axis, **kwargs)), True
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS} or a callable; got {method!r}.")
    pattern = dict(sparsity=sparsity, n=n, m=m)
    if method == "magnitude":
        return (lambda w, stats, in_axis: magnitude(w, **pattern, in_axis=in_axis)), False
    if method == "wanda":
        return (lambda w, stats, in_axis: wanda(w, stats, **pattern, in_axis=in_axis)), False
    if method == "sparsegpt":
        return (lambda w, stats, in_axis: sparsegpt(w, stats, **pattern, in_axis=in_axis,
                                                    **kwargs)), True

    def wanda_dsnot(w, stats, in_axis):
        _, start = wanda(w, stats, **pattern, in_axis=in_axis)
        return dsnot(w, stats, start, m=m, in_axis=in_axis, **kwargs)

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
    in_axis: int | Mapping[str, int] = 0,
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
            Wanda's mask) or a callable ``(w, stats, *, in_axis) -> (pruned_w, mask)``.
        sparsity: unstructured sparsity of the named methods; or give ``n`` and ``m`` (N:M).
        n: kept entries per group of ``m`` inputs (N:M).
        m: N:M group size.
        groups: lists of layer names pruned together, in forward order; default: every tapped
            layer alone, in call order (the most sequential, one compiled pass per layer). Group a
            transformer block's layers together to match the references and compile fewer passes.
        in_axis: input axis of the weights (0 for Flax ``[in, out]`` kernels, 1 for Equinox/torch
            ``[out, in]``), or a mapping from layer name to it.
        method_kwargs: extra keyword arguments of the method (``block_size``, ``damp``,
            ``max_cycles``, ...).

    Returns:
        ``(pruned_params, masks)``: params with the layers pruned, and a mask tree of the structure
        of ``params`` (bool at pruned layers, ``None`` elsewhere).

    Raises:
        TypeError: ``calibration_batches`` is not a sequence.
        ValueError: an unknown method or layer name, a layer never passed to ``tap``, or the
            pattern errors of the methods.
    """
    if not isinstance(calibration_batches, Sequence) or isinstance(calibration_batches, str):
        raise TypeError("`calibration_batches` must be a re-iterable sequence (list or tuple) of "
                        f"batches; got {type(calibration_batches).__name__}.")
    if len(calibration_batches) == 0:
        raise ValueError("`calibration_batches` must hold at least one batch; got an empty "
                         "sequence.")
    prune_fn, needs_gram = _method_fn(method, sparsity, n, m, dict(method_kwargs or {}))
    if groups is None:
        groups = [[name] for name in layer_order(forward_fn, params, calibration_batches[0])]
    groups = [list(g) for g in groups]
    weights = _leaves_by_name(params)
    for name in (name for g in groups for name in g):
        if name not in weights:
            raise ValueError(f"`groups` names a layer {name!r} that is not a leaf of `params`; "
                             f"leaves are {sorted(weights)[:8]}{' ...' if len(weights) > 8 else ''}.")
    axes = {name: (in_axis[name] if isinstance(in_axis, Mapping) else in_axis)
            for g in groups for name in g}

    masks: dict[str, jax.Array] = {}
    for group in groups:
        stats = None
        if method != "magnitude":
            stats = _calibrate(params, forward_fn, calibration_batches, group,
                               {name: weights[name].shape[axes[name]] for name in group},
                               needs_gram)
        pruned = {}
        for name in group:
            pruned[name], masks[name] = prune_fn(weights[name], None if stats is None
                                                 else stats[name], axes[name])
        params = _replace(params, pruned)
        weights = _leaves_by_name(params)
    mask_tree = jax.tree_util.tree_map_with_path(lambda p, leaf: masks.get(path_str(p)), params)
    return params, mask_tree


def _calibrate(params, forward_fn, batches, group, features, gram) -> dict[str, LayerStats]:
    step = _stats_step(forward_fn, tuple(group))
    stats = {name: LayerStats.zeros(f, gram=gram) for name, f in features.items()}
    for batch in batches:
        stats = step(params, batch, stats)
    return stats


@functools.lru_cache(maxsize=64)  # reuse the compiled pass across calls with the same forward_fn
def _stats_step(forward_fn, group):
    @jax.jit
    def step(params, batch, stats):
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



"""The per-block one-shot driver: prune a stack of identically shaped blocks on cached inputs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from sparsejax._checks import must_be
from sparsejax._jitcache import cached_step
from sparsejax.oneshot._layer import AXIS_HELP
from sparsejax.oneshot.driver import (
    PyTree,
    Tap,
    _calibrate,
    _identity_tap,
    _layer_axis,
    _leaves_by_name,
    _merge,
    _method_fn,
    _replace,
    _split,
    _tapped_inputs,
    check_calibration,
    check_counted,
)
from sparsejax.select import path_str

__all__ = ["prune_blocks"]


def prune_blocks(
    blocks: Sequence[PyTree],
    block_fn: Callable[[PyTree, Any, Tap], Any],
    inputs: Sequence[Any],
    method: str | Callable = "wanda",
    *,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    layers: Sequence[str] | None = None,
    axis: int | Mapping[str, int] | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[PyTree], list[PyTree]]:
    """Prune a stack of blocks of one shape, block by block, each calibrated on the pruned prefix.

    For a model ``embed -> block_0 -> ... -> block_{L-1} -> head`` whose blocks share one structure
    and shape (a transformer's layers), as the reference scripts run it (IST-DASLab/sparsegpt
    ``llama_sequential``, locuslab/wanda ``prune_wanda``): the inputs of block ``k`` are cached, its
    layers' `LayerStats` accumulated over every calibration batch, its layers pruned together, and
    the *pruned* block's outputs become block ``k + 1``'s inputs. The same masks and weights as
    `prune_model` with one group per block (up to float rounding in the compiled passes), but the
    calibration pass and the output pass are each one compiled program of one block, reused by
    every block, instead of a truncated whole-model forward per block; the per-layer solvers
    compile once per weight shape.

    Args:
        blocks: the blocks' parameters, one pytree per block, all of one structure, shapes and
            dtypes (e.g. ``params["layers"]``).
        block_fn: ``(block_params, carry, tap) -> carry``, traceable by ``jax.jit``: one block
            mapping its input carry (a pytree of arrays, e.g. ``(hidden, attention_mask)``) to the
            next block's, of the same structure and shapes. It passes the input of every
            prunable layer through ``tap(name, x, where=None) -> x`` (returns ``x``), ``name`` the
            slash path of the layer's weight in ``block_params`` (``"query/kernel"``) and
            ``where`` optionally the tokens to count.
        inputs: the carries entering the first block, one per calibration batch (e.g. the
            embedding outputs; `sparsejax.models.encoder_input` for MiniLM).
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"``, ``"dsnot"`` (from Wanda's mask) or
            a callable ``(w, stats, *, axis) -> (pruned_w, mask)``.
        sparsity: unstructured sparsity of the named methods; or give ``n`` and ``m`` (N:M).
        n: kept entries per group of ``m`` inputs (N:M).
        m: N:M group size.
        layers: names of the layers pruned in every block; default every tapped layer.
        axis: the input-feature axis of the weights, required (0 for ``[in, out]`` kernels, 1 for
            ``[out, in]`` weights), or a mapping from layer name to it.
        method_kwargs: extra keyword arguments of the method.

    Returns:
        ``(pruned_blocks, masks)``: a list of the blocks with their layers pruned, and a list of
        mask trees, one per block, of the block's structure (bool at pruned layers, ``None``
        elsewhere).

    Raises:
        TypeError: ``blocks`` or ``inputs`` is not a sequence.
        ValueError: no block, blocks of different structure or shapes, an unknown method or layer
            name, a layer never passed to ``tap``, ``axis`` missing or not the input axis, inputs
            with no token counted, or the pattern errors of the methods.
    """
    check_calibration(inputs, "inputs")
    if not isinstance(blocks, Sequence):
        raise TypeError(must_be("blocks", "a sequence (list or tuple) of block parameter pytrees",
                                type(blocks).__name__, raw=True))
    if len(blocks) == 0:
        raise ValueError(must_be("blocks", "a non-empty sequence of block parameter pytrees",
                                 "an empty sequence", raw=True))
    _check_alike(blocks)
    prune_fn, needs_gram = _method_fn(method, sparsity, n, m, dict(method_kwargs or {}))
    if axis is None:
        raise ValueError(must_be("axis", AXIS_HELP + ", or a mapping {layer name: axis}", None))
    tapped = _tapped_inputs(block_fn, blocks[0], inputs[0])
    names = list(tapped) if layers is None else list(layers)
    weights = _leaves_by_name(blocks[0])
    for name in names:
        if name not in weights:
            raise ValueError(f"`layers` names a layer {name!r} that is not a leaf of a block; "
                             f"leaves are {sorted(weights)[:8]}{' ...' if len(weights) > 8 else ''}.")
    axes = {name: _layer_axis(axis, name, weights[name], tapped.get(name)) for name in names}
    features = {name: weights[name].shape[axes[name]] for name in names}

    carries = list(inputs)
    pruned_blocks, masks = [], []
    for k, block in enumerate(blocks):
        stats = None
        if method != "magnitude":
            stats = _calibrate(block, block_fn, carries, names, features, needs_gram)
            check_counted(stats, names, "inputs")
        weights = _leaves_by_name(block)
        new, block_masks = {}, {}
        for name in names:
            new[name], block_masks[name] = prune_fn(weights[name], None if stats is None
                                                    else stats[name], axes[name])
        block = _replace(block, new)
        pruned_blocks.append(block)
        masks.append(jax.tree_util.tree_map_with_path(
            lambda p, leaf, found=block_masks: found.get(path_str(p)), block))
        if stats is not None and k + 1 < len(blocks):
            arrays, static = _split(block)
            step = cached_step(_output_step, block_fn, static)
            carries = [step(arrays, carry) for carry in carries]
    return pruned_blocks, masks


def _check_alike(blocks: Sequence[PyTree]) -> None:
    """Every block has the first one's structure, shapes and dtypes (one compiled program)."""
    def signature(block):
        return [(path_str(p), getattr(x, "shape", None), getattr(x, "dtype", None))
                for p, x in jax.tree_util.tree_flatten_with_path(block)[0]]

    first = signature(blocks[0])
    for k, block in enumerate(blocks[1:], start=1):
        got = signature(block)
        if jax.tree.structure(block) != jax.tree.structure(blocks[0]) or got != first:
            diff = next(((a, b) for a, b in zip(first, got) if a != b), (len(first), len(got)))
            raise ValueError(must_be(f"blocks[{k}]", "of the structure, shapes and dtypes of "
                                     "blocks[0] (one compiled block program serves them all)",
                                     f"{diff[1]} where blocks[0] has {diff[0]}", raw=True))


@functools.lru_cache(maxsize=64)  # reuse the compiled block across blocks and calls
def _output_step(block_fn, static):
    @jax.jit
    def step(arrays, carry):
        return block_fn(_merge(arrays, static), carry, _identity_tap)

    return step

"""The one registry of names: pattern, score and allocation names -> their functions.

`sparsejax.tree.compute_masks`, the sparse-training transforms (`sparsejax.training`) and the
one-shot driver (`sparsejax.oneshot`) resolve a name given as ``pattern=``, ``scores=`` or
``allocation=`` here, so a name means the same function everywhere. Each table is read-only.
"""

from __future__ import annotations

from types import MappingProxyType

from sparsejax import allocation as _allocation
from sparsejax import masks as _masks
from sparsejax import scores as _scores

__all__ = ["ALLOCATIONS", "NM_PATTERNS", "PATTERNS", "SCORES", "SHAPE_ALLOCATIONS"]

PATTERNS = MappingProxyType({
    "unstructured": _masks.unstructured,
    "nm": _masks.nm,
    "nm_transposable": _masks.nm_transposable,
    "block": _masks.block,
    "channel": _masks.channel,
})
"""Pattern name -> `sparsejax.masks` function ``(scores, ...) -> bool mask``."""

NM_PATTERNS = ("nm", "nm_transposable")
"""The N:M patterns: ``n`` kept of every ``m`` (no sparsity, no allocation); accepted alike."""

SCORES = MappingProxyType({
    "magnitude": _scores.magnitude,
    "saliency": _scores.saliency,
    "random": _scores.random,
    "wanda": _scores.wanda,
})
"""Score name -> `sparsejax.scores` function (a float array shaped like the weight)."""

ALLOCATIONS = MappingProxyType({
    "uniform": _allocation.uniform,
    "erk": _allocation.erk,
    "er": _allocation.er,
    "global": _allocation.global_topk,
})
"""Allocation name -> ``(params, sparsity, *, where) -> tree of per-leaf sparsities``."""

SHAPE_ALLOCATIONS = ("uniform", "erk", "er")
"""The allocations computed from the leaves' shapes alone (no scores): sparse training's budgets."""

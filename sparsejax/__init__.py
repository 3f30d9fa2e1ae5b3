"""sparsejax: sparsity as a first-class, composable JAX transform.

A mask is *pattern x score x allocation x schedule*: `sparsejax.masks` (patterns),
`sparsejax.scores`, `sparsejax.allocation`, `sparsejax.schedules`, combined over any
pytree by `compute_masks` / `apply_masks` (`sparsejax.tree`).

``import sparsejax`` loads only that core; every other subpackage (`nn`, `models`, `training`,
`attention`, ...) and the names re-exported from them load on first use (module ``__getattr__``),
so importing sparsejax costs little more than importing JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsejax import allocation, masks, schedules, scores
from sparsejax._lazy import lazy_getattr
from sparsejax.select import path_str, select
from sparsejax.tree import Sparsity, apply_masks, compute_masks, nbytes, sparsity, summary

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs
    from sparsejax import (
        activation,
        attention,
        bayes,
        dictionary,
        formats,
        models,
        moe,
        nn,
        oneshot,
        ops,
        peft,
        retrieval,
        testing,
        training,
    )
    from sparsejax.attention import BlockMask
    from sparsejax.formats import CSR, BlockSparse, NMSparse

__version__ = "0.1.0"

__all__ = [
    "BlockMask",
    "BlockSparse",
    "CSR",
    "NMSparse",
    "Sparsity",
    "activation",
    "allocation",
    "attention",
    "bayes",
    "dictionary",
    "formats",
    "nn",
    "ops",
    "apply_masks",
    "compute_masks",
    "masks",
    "models",
    "moe",
    "nbytes",
    "oneshot",
    "path_str",
    "peft",
    "retrieval",
    "schedules",
    "scores",
    "select",
    "sparsity",
    "summary",
    "testing",
    "training",
]

_HOMES = {name: name for name in ("activation", "attention", "bayes", "dictionary", "formats",
                                   "models", "moe", "nn", "oneshot", "ops", "retrieval",
                                   "peft", "testing", "training")}
_HOMES.update(BlockMask="attention", BlockSparse="formats", CSR="formats", NMSparse="formats")

__getattr__ = lazy_getattr("sparsejax", globals(), _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

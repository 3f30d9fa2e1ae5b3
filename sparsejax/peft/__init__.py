"""Sparse fine-tuning of pretrained models: sparse deltas, SpIEL, S2FT, DSEE, PST.

A *delta tree* mirrors a frozen params tree with a `SparseDelta` ``(indices, values)`` where a leaf
is fine-tuned; `apply` adds it, `merge` / `unmerge` fold it in and out exactly, `train_delta`
trains only its values and `spiel` also moves its support (drop-and-grow). `s2ft` trains a dense
slice of co-permuted attention heads and FFN channels. `dsee` trains ``W + A B + S`` with
``S``'s support from a low-rank + sparse split of ``W``; `pst` trains a data-free mask's low-rank
scores with a straight-through estimator.
"""

from sparsejax.peft import dsee, pst, s2ft
from sparsejax.peft.delta import (
    SparseDelta,
    apply,
    delta_from_masks,
    delta_size,
    dense,
    is_delta,
    merge,
    sparse_delta,
    train_delta,
    unmerge,
)
from sparsejax.peft.dsee import DseeDelta
from sparsejax.peft.pst import PstFactors
from sparsejax.peft.s2ft import S2Kernel
from sparsejax.peft.spiel import REGROW, SpielState, spiel, spiel_fraction

__all__ = [
    "DseeDelta",
    "dsee",
    "PstFactors",
    "pst",
    "S2Kernel",
    "s2ft",
    "REGROW",
    "SpielState",
    "spiel",
    "spiel_fraction",
    "SparseDelta",
    "apply",
    "delta_from_masks",
    "delta_size",
    "dense",
    "is_delta",
    "merge",
    "sparse_delta",
    "train_delta",
    "unmerge",
]

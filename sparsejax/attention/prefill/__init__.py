"""Prefill-time sparse attention: patterns that choose, from ``q`` and ``k`` (or statically), which
blocks of the ``L x L`` attention a kernel computes.

Naming (the same in `sparsejax.attention.decode`):

* ``<method>_mask -> BlockMask``: what `sparsejax.attention.attention` consumes;
* ``<method>_blocks -> bool [B, H, nq, nk]``: the method's block selection, before it becomes a
  mask (SparseD caches it across denoising steps);
* ``<method>_lines -> (vertical, slash)``: vertical-slash selections, bool ``[B, H, L]`` over key
  columns and diagonals;
* ``<method>_tokens -> bool [..., L, L]``: a dense token mask, for inspection and tests only.

Methods: vertical-slash and FlexPrefill (MInference, as run by The Sparse Frontier), block top-k,
SparseD (diffusion LMs; `SparseDSchedule`, `sparsed_update`) and MoA's `moa_mask`
(`sparsejax.attention.moa` holds the rest of MoA). No mask here materialises a ``[B, H, L, L]``
token mask: selections become block maps and lazy predicates.
"""

from sparsejax.attention.moa import moa_mask
from sparsejax.attention.prefill._block_topk import block_topk_blocks, block_topk_mask
from sparsejax.attention.prefill._sparsed import (
    SparseDSchedule,
    sparsed_blocks,
    sparsed_generation_start,
    sparsed_mask,
    sparsed_update,
)
from sparsejax.attention.prefill._vertical_slash import (
    VerticalSlashTokens,
    flexprefill_lines,
    flexprefill_mask,
    vertical_slash_lines,
    vertical_slash_mask,
    vertical_slash_tokens,
)

__all__ = [
    "SparseDSchedule",
    "VerticalSlashTokens",
    "block_topk_blocks",
    "block_topk_mask",
    "flexprefill_lines",
    "flexprefill_mask",
    "moa_mask",
    "sparsed_blocks",
    "sparsed_generation_start",
    "sparsed_mask",
    "sparsed_update",
    "vertical_slash_lines",
    "vertical_slash_mask",
    "vertical_slash_tokens",
]

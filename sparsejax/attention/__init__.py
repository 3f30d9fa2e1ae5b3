"""Sparse attention: one mask type (`BlockMask`), one kernel entry point (`attention`), static
patterns here, and the data-dependent methods in submodules by phase.

* top level: `attention` (block-sparse attention, several backends), `BlockMask`, the static
  patterns (`causal_mask`, `sliding_window_mask` with ``(left, right)`` extents, ...) and the
  variable-length masks (`padding_mask` from ``kv_lengths``, `segment_mask` from
  ``segment_ids``), all combinable with ``|`` and ``&``;
* `sparsejax.attention.prefill`: vertical-slash, FlexPrefill, block top-k, SparseD, MoA prefill;
* `sparsejax.attention.decode`: Quest, SnapKV / Ada-SnapKV, MoA decode, and `attend_kept`, the
  decode attention over only the kept KV entries;
* `sparsejax.attention.moa`: MoA's rule, patterns, profiling and search;
* `sparsejax.attention.mask`: predicate plumbing for custom masks (`TokenPredicate`,
  `FunctionPredicate`, block kinds ``EMPTY``/``PARTIAL``/``FULL``, `BlockMaskInfo`).

**Naming rule.** A function's suffix says what it returns:

* ``<method>_mask -> BlockMask`` (what `attention` consumes);
* ``<method>_keep -> bool [B, H | Hkv, kv_len]`` keep mask over the KV axis (what
  `decode.attend_kept` consumes);
* ``<method>_blocks -> bool [B, H, nq, nk]`` block selection (before it becomes a mask);
* ``<method>_lines -> (vertical, slash)`` and ``<method>_tokens -> bool [..., L, L]`` (a dense
  token mask for inspection and tests) where a method has them.
"""

from sparsejax.attention import decode, mask, moa, prefill
from sparsejax.attention.kernel import BACKENDS, attention, dense_attention
from sparsejax.attention.mask import BlockMask
from sparsejax.attention.static import (
    causal_mask,
    chunked_causal_mask,
    full_mask,
    global_band_mask,
    sink_window_mask,
    sliding_window_mask,
    stack_heads,
)
from sparsejax.attention.varlen import padding_mask, segment_mask

__all__ = [
    "BACKENDS",
    "BlockMask",
    "attention",
    "causal_mask",
    "chunked_causal_mask",
    "decode",
    "dense_attention",
    "full_mask",
    "global_band_mask",
    "mask",
    "moa",
    "padding_mask",
    "prefill",
    "segment_mask",
    "sink_window_mask",
    "sliding_window_mask",
    "stack_heads",
]

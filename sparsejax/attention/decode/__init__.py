"""Decode-time sparse attention: which KV-cache entries a decoding query keeps, and attention over
only those entries.

Naming (as in `sparsejax.attention.prefill`): ``<method>_keep -> bool [B, H | Hkv, kv_len]``, a
keep mask over the KV axis. `attend_kept` consumes any of them: it gathers the kept entries
(`keep_to_indices`) and attends over ``token_budget`` of them instead of ``kv_len``:

* `quest_keep`: Quest query-aware page selection (per query head, recomputed every step);
* `snapkv_keep`, `ada_snapkv_keep`: SnapKV / Ada-SnapKV cache compression after prefill (per KV
  head, fixed afterwards);
* `moa_keep`: MoA's sink + circular window (static per head).

Example::

    keep = quest_keep(q, k_cache, page_size=16, token_budget=1024)
    out = attend_kept(q, k_cache, v_cache, keep, token_budget=1024 + 16)
"""

from sparsejax.attention.decode._attend import attend_kept, keep_to_indices
from sparsejax.attention.decode._quest import quest_keep
from sparsejax.attention.decode._snapkv import ada_snapkv_keep, snapkv_keep
from sparsejax.attention.moa import moa_keep

__all__ = [
    "ada_snapkv_keep",
    "attend_kept",
    "keep_to_indices",
    "moa_keep",
    "quest_keep",
    "snapkv_keep",
]

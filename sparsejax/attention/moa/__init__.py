"""MoA (Mixture of Sparse Attention): elastic per-head sink + local windows (thu-nics/MoA).

Each head ``h`` has an elastic rule ``(alpha_h, beta_h)``; at sequence length ``N`` its attention
span is ``S = alpha + beta * N``, turned into a sink and a local window by a `MoARule`. The rules
follow the reference implementation:

* span (``attention/cache_utils.py::moa_config_to_cache_config``): `moa_spans`;
* prefill (``kernels/block_sparse_attention_prefill.py``): block granular, query block ``m``
  visits KV blocks ``[0, min(sink_blocks - 1, m)] U [max(0, m + 1 - local_blocks), m]`` plus the
  causal mask inside blocks: `moa_blocks`, `moa_mask` (and the dense `moa_tokens`);
* decode (``StaticCircularCache``): token exact, the first ``sink`` tokens plus a circular window
  of the last ``local`` tokens: `moa_keep`, consumed by `sparsejax.attention.decode.attend_kept`;
* profiling (``models/llama/modify_llama_profile.py``): `moa_influence`, `moa_profile`;
* search (``scripts/pipeline/elastic_generate.py``): `moa_candidates`, `moa_search`.

`moa_mask` is also exported by `sparsejax.attention.prefill` and `moa_keep` by
`sparsejax.attention.decode`.
"""

from sparsejax.attention.moa._pattern import moa_blocks, moa_keep, moa_mask, moa_tokens
from sparsejax.attention.moa._profiling import moa_influence, moa_profile
from sparsejax.attention.moa._rule import MoARule, moa_spans
from sparsejax.attention.moa._search import moa_candidates, moa_search

__all__ = [
    "MoARule",
    "moa_blocks",
    "moa_candidates",
    "moa_influence",
    "moa_keep",
    "moa_mask",
    "moa_profile",
    "moa_search",
    "moa_spans",
    "moa_tokens",
]

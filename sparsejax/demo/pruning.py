"""Demo stage: one-shot magnitude pruning at several sparsities and 2:4 N:M, each fine-tuned."""

from __future__ import annotations

import sparsejax as sj
from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext


def run(ctx: DemoContext) -> dict:
    """Prune the dense MLP's kernels one-shot by magnitude (and 2:4 along the reduction axis),
    fine-tune each with its mask held, and tabulate accuracy, density, the N:M check and bytes."""
    dense_bytes, _ = sj.nbytes(ctx.params)
    rows = [{"pattern": "dense", "sparsity": 0.0, "accuracy_pruned": ctx.dense_accuracy,
             "accuracy": ctx.dense_accuracy, "density": 1.0, "nm_ok": None, "bytes": dense_bytes,
             "compression": 1.0}]
    sparsities = ctx.options.get("sparsities", [0.5, 0.7, 0.8, 0.9, 0.95])
    if ctx.quick:
        sparsities = sparsities[:2]
    configs = [("unstructured", s, {"sparsity": s}) for s in sparsities]
    configs.append(("2:4 (axis 0)", 0.5, {"pattern": "nm", "n": 2, "m": 4, "axis": 0}))
    for name, s, kwargs in configs:
        masks = sj.compute_masks(ctx.params, **kwargs)
        pruned = sj.apply_masks(ctx.params, masks)
        acc_pruned = ctx.accuracy(pruned)
        tuned = ctx.finetune(pruned, masks, desc=f"{name} {s:.2f}")
        kernels = [tuned[k]["kernel"] for k in sorted(tuned)]
        nm_ok = None
        if name.startswith("2:4"):
            nm_ok = all(bool(sj.masks.satisfies_nm(w, 2, 4, axis=0)) for w in kernels)
        stats = sj.sparsity(masks)
        _, sparse_bytes = sj.nbytes(tuned, masks)
        rows.append({"pattern": name.split(" ")[0], "sparsity": s, "accuracy_pruned": acc_pruned,
                     "accuracy": ctx.accuracy(tuned), "density": 1.0 - float(stats.overall),
                     "nm_ok": nm_ok, "bytes": sparse_bytes,
                     "compression": dense_bytes / sparse_bytes})
    print_table(
        "== one-shot magnitude pruning of the kernels, fine-tuned with the mask held ==",
        ("pattern", "sparsity", "acc one-shot", "acc tuned", "density", "N:M ok", "bytes",
         "x smaller"),
        [(r["pattern"], f"{r['sparsity']:.2f}", r["accuracy_pruned"], r["accuracy"],
          f"{r['density']:.3f}", r["nm_ok"], r["bytes"], f"{r['compression']:.2f}")
         for r in rows],
        caption="density = kept fraction of the kernels; bytes = all params, kernels compressed "
                "(N:M: values + uint8 indices; unstructured: values + bitmap)")
    return {"rows": rows, "dense_bytes": dense_bytes}


def plot(ax, result: dict, results: dict) -> None:
    """Accuracy against sparsity: one-shot (before fine-tuning) next to fine-tuned."""
    rows = result.get("rows", [])
    unstructured = [r for r in rows if r["pattern"] == "unstructured"]
    if unstructured:
        xs = [r["sparsity"] for r in unstructured]
        ax.plot(xs, [r["accuracy_pruned"] for r in unstructured], "o--", label="one-shot")
        ax.plot(xs, [r["accuracy"] for r in unstructured], "o-", label="one-shot + fine-tune")
    for r in rows:
        if r["pattern"] not in ("unstructured", "dense"):
            ax.plot([r["sparsity"]], [r["accuracy_pruned"]], "s", mfc="none",
                    label=f"{r['pattern']} one-shot")
            ax.plot([r["sparsity"]], [r["accuracy"]], "s", label=f"{r['pattern']} + fine-tune")
    ax.axhline(results["dense_accuracy"], color="gray", ls=":", label="dense")
    ax.set_xlabel("sparsity of the weight matrices")
    ax.set_ylabel("test accuracy")
    ax.set_title("magnitude pruning")

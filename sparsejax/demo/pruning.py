"""Demo stage: one-shot magnitude pruning at several sparsities and 2:4 N:M, each fine-tuned."""

from __future__ import annotations

import sparsejax as sj
from sparsejax.demo.context import DemoContext


def _table(rows: list[dict]) -> str:
    header = ("pattern", "sparsity", "acc pruned", "acc tuned", "density", "N:M ok",
              "bytes", "x smaller")
    lines = [header]
    for r in rows:
        lines.append((r["pattern"], f"{r['sparsity']:.2f}", f"{r['accuracy_pruned']:.4f}",
                      f"{r['accuracy']:.4f}", f"{r['density']:.3f}",
                      {True: "yes", False: "NO", None: "-"}[r["nm_ok"]],
                      str(r["bytes"]), f"{r['compression']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(ctx: DemoContext) -> dict:
    """Prune the dense MLP's kernels one-shot by magnitude (and 2:4 along the reduction axis),
    fine-tune each with its mask held, and tabulate accuracy, density, the N:M check and bytes."""
    print("== one-shot magnitude pruning of the kernels, fine-tuned with the mask held ==")
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
    print(_table(rows))
    print("density = kept fraction of the kernels; bytes = all params, kernels compressed "
          "(N:M: values + uint8 indices; unstructured: values + bitmap)")
    return {"rows": rows, "dense_bytes": dense_bytes}

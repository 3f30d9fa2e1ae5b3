"""Demo stage: the MLP's 256x256 hidden layer as a block-sparse (BSR) layer.

The trained dense kernel is cut into 32x32 blocks; in each block row the blocks of largest
Frobenius norm are kept (at several block densities), the model is fine-tuned briefly through
`sparsejax.ops.dense_bsr_matmul` (its gradient covers the kept blocks only), and the
stage prints accuracy, stored bytes and the hidden layer's matmul time against the dense layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext, median_time, random_draw
from sparsejax.formats import BlockSparse
from sparsejax.ops import dense_bsr_matmul

LAYER = "dense_1"
BLOCK = (32, 32)


def block_magnitude_mask(kernel: jax.Array, block_shape: tuple[int, int],
                         density: float) -> np.ndarray:
    """Keep, in every block row, the ``max(1, round(density * C))`` blocks of largest Frobenius
    norm (ties by index). Balanced rows mean no padded BSR slots."""
    w = np.asarray(kernel, np.float32)
    bm, bn = block_shape
    r, c = w.shape[0] // bm, w.shape[1] // bn
    norms = np.sqrt((w.reshape(r, bm, c, bn) ** 2).sum(axis=(1, 3)))
    keep = max(1, int(round(density * c)))
    order = np.argsort(-norms, axis=1, kind="stable")[:, :keep]
    mask = np.zeros((r, c), bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def make_apply(structure: BlockSparse):
    """An MLP apply function whose ``LAYER`` params are ``{"data", "bias"}`` of a BSR kernel with
    ``structure``'s indices (closed over: only the float block data and biases are params)."""

    def apply(params, x):
        n = len(params)
        h = x
        for i in range(n):
            layer = params[f"dense_{i}"]
            if "data" in layer:
                z = dense_bsr_matmul(h, structure.replace(data=layer["data"])) + layer["bias"]
            else:
                z = h @ layer["kernel"] + layer["bias"]
            h = jax.nn.relu(z) if i < n - 1 else z
        return h

    return apply


def run(ctx: DemoContext) -> dict:
    """Replace the hidden 256x256 layer by block-sparse ones, fine-tune, compare with dense."""
    densities = [0.5, 0.25]
    batch = 256 if ctx.quick else 2048
    repeats = 3 if ctx.quick else 7
    kernel = ctx.params[LAYER]["kernel"]
    n_in = kernel.shape[0]
    hidden = random_draw("uniform", ctx.next_key(), (batch, n_in), dtype=kernel.dtype)

    dense_mm = jax.jit(lambda h, w: h @ w)
    sparse_mm = jax.jit(dense_bsr_matmul)
    t_dense = median_time(dense_mm, hidden, kernel, repeats=repeats)
    dense_bytes = int(kernel.nbytes)

    rows = []
    for density in densities:
        mask = block_magnitude_mask(kernel, BLOCK, density)
        bsr = BlockSparse.from_dense(kernel, BLOCK, jnp.asarray(mask))
        apply = make_apply(bsr)
        evaluate = jax.jit(apply)  # one program for both evaluations, not op by op twice
        params = {k: dict(v) for k, v in ctx.params.items()}
        params[LAYER] = {"data": bsr.data, "bias": ctx.params[LAYER]["bias"]}
        acc0 = ctx.accuracy(params, evaluate)
        tuned = ctx.finetune(params, None, apply_fn=apply, desc=f"bsr {density:.2f}")
        acc1 = ctx.accuracy(tuned, evaluate)
        tuned_bsr = bsr.replace(data=tuned[LAYER]["data"])
        t_sparse = median_time(sparse_mm, hidden, tuned_bsr, repeats=repeats)
        row = {"block_density": float(mask.mean()), "accuracy_one_shot": acc0,
               "accuracy_finetuned": acc1, "weight_bytes": tuned_bsr.nbytes,
               "matmul_seconds": t_sparse, "matmul_vs_dense": t_sparse / t_dense}
        rows.append(row)
    print_table(
        f"== block-sparse hidden layer ({n_in}x{kernel.shape[1]}, {BLOCK[0]}x{BLOCK[1]} blocks kept "
        f"by norm in each block row, fine-tuned {ctx.finetune_steps} steps) ==",
        ("model", "block density", "acc one-shot", "acc tuned", "weight bytes", "matmul ms",
         "vs dense"),
        [("dense", "1.00", ctx.dense_accuracy, ctx.dense_accuracy, dense_bytes,
          f"{t_dense * 1e3:.3f}", "1.00")]
        + [("block-sparse", f"{r['block_density']:.2f}", r["accuracy_one_shot"],
            r["accuracy_finetuned"], r["weight_bytes"], f"{r['matmul_seconds'] * 1e3:.3f}",
            f"{r['matmul_vs_dense']:.2f}") for r in rows],
        caption=f"matmul: median of {repeats} on a {batch}-row batch, jit, this machine's CPU")
    return {"layer": LAYER, "block_shape": list(BLOCK), "batch": batch,
            "dense": {"accuracy": ctx.dense_accuracy, "weight_bytes": dense_bytes,
                      "matmul_seconds": t_dense},
            "block_sparse": rows}


def plot(ax, result: dict, results: dict) -> None:
    """Accuracy of the block-sparse layer against its block density, one-shot and fine-tuned."""
    rows = sorted(result.get("block_sparse", []), key=lambda r: r["block_density"])
    xs = [r["block_density"] for r in rows]
    ax.plot(xs, [r["accuracy_one_shot"] for r in rows], "o--", label="one-shot")
    ax.plot(xs, [r["accuracy_finetuned"] for r in rows], "o-", label="+ fine-tune")
    ax.axhline(results["dense_accuracy"], color="gray", ls=":", label="dense")
    ax.set_xlabel("kept block fraction of the hidden layer")
    ax.set_ylabel("test accuracy")
    ax.set_title("block-sparse layer")

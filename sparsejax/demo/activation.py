"""Demo stage: activation sparsity (TEAL thresholds) on the digits MLP, no retraining.

The dense 64-256-256-10 MLP is left unchanged; the inputs of its three linear layers are
thresholded (`sparsejax.activation.sparsify`) at per-layer thresholds calibrated on the training
split (`calibrate_thresholds`, the exact ``|x|`` quantile) for several target sparsities, and each
layer runs through `sparsejax.ops.sparse_input_matmul`, which reads only the kernel rows of kept
inputs. Reports test accuracy next to the dense model's, the fraction of kernel rows skipped per
test example (the ReLU zeros count too) and a batch-1 timing of one layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.activation import calibrate_thresholds, collect_inputs, sparsify, threshold_tap
from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext, median_time
from sparsejax.ops import sparse_input_matmul


def forward(params: dict, x: jax.Array, tap) -> jax.Array:
    """The demo MLP with every linear input passed through ``tap`` (kernel reads skipped)."""
    n = len(params)
    h = x
    for i in range(n):
        layer = params[f"dense_{i}"]
        h = sparse_input_matmul(tap(f"dense_{i}", h, None), layer["kernel"]) + layer["bias"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


def run(ctx: DemoContext) -> dict:
    """Calibrate thresholds, evaluate accuracy and skipped rows, time one batch-1 layer."""
    acts = collect_inputs(forward, ctx.params, [ctx.x_train])
    rows = []
    for s in (0.0, 0.5, 0.7, 0.85, 0.95):
        taus = {n: calibrate_thresholds(a, s) for n, a in acts.items()}
        tap = threshold_tap(taus)
        acc = ctx.accuracy(ctx.params, lambda p, x, tap=tap: forward(p, x, tap))
        skipped = [float(jnp.mean(sparsify(jnp.asarray(a), taus[n]) == 0))
                   for n, a in collect_inputs(forward, ctx.params, [ctx.x_test]).items()]
        rows.append({"sparsity": s, "accuracy": acc, "skipped_rows": float(np.mean(skipped))})
    w = ctx.params["dense_1"]["kernel"]
    x = sparsify(jnp.asarray(acts["dense_1"][:1]), calibrate_thresholds(acts["dense_1"], 0.9))
    t_dense = median_time(jax.jit(lambda x, w: x @ w), x, w)
    t_sparse = median_time(jax.jit(lambda x, w: sparse_input_matmul(x, w)), x, w)
    print_table(
        "== activation sparsity (TEAL thresholds) on the dense digits MLP, no retraining ==",
        ("target sparsity", "test accuracy", "kernel rows skipped"),
        [(r["sparsity"], r["accuracy"], r["skipped_rows"]) for r in rows],
        caption=f"dense accuracy {ctx.dense_accuracy:.4f}; skipped rows include the ReLU zeros "
                f"(at target 0). One 256x256 layer at batch 1, 90% target: "
                f"sparse_input_matmul {t_sparse * 1e6:.0f} us vs dense {t_dense * 1e6:.0f} us "
                f"(too small a layer for the skip to pay; see benchmarks/activation.py)")
    return {"rows": rows, "dense_accuracy": ctx.dense_accuracy,
            "layer_time_us": {"dense": t_dense * 1e6, "sparse": t_sparse * 1e6}}

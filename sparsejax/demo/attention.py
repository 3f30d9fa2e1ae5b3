"""Demo stage: block-sparse attention on a synthetic sequence (density, time, error vs dense)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsejax.attention import (
    attention,
    causal_mask,
    sink_window_mask,
    sliding_window_mask,
)
from sparsejax.demo._table import print_table
from sparsejax.demo.context import DemoContext, median_time, random_draw


def run(ctx: DemoContext) -> dict:
    """Time the xla block-sparse path against dense attention for a few static patterns.

    Returns:
        ``{"seq": L, "dense_ms": t, "patterns": {name: {"density", "ms", "time_ratio",
        "max_abs_err"}}}``; the error is against dense softmax attention with the same token mask.
    """
    seq, heads, dim = (256, 2, 32) if ctx.quick else (1024, 4, 64)
    block = 64 if ctx.quick else 128
    kq, kk, kv = jax.random.split(ctx.next_key(), 3)
    q = random_draw("normal", kq, (1, heads, seq, dim))
    k = random_draw("normal", kk, (1, heads, seq, dim))
    v = random_draw("normal", kv, (1, heads, seq, dim))
    geo = dict(block_q=block, block_kv=block)
    patterns = {
        "causal": causal_mask(seq, **geo),
        "sliding_window": sliding_window_mask(seq, window=(seq // 8 - 1, 0), **geo),
        "sink_window": sink_window_mask(seq, sink=16, window=seq // 16, **geo),
    }
    dense = jax.jit(lambda q, k, v: attention(q, k, v, backend="xla"))
    dense_ms = 1e3 * median_time(dense, q, k, v, repeats=3)
    results = {}
    for name, mask in patterns.items():
        sparse = jax.jit(lambda q, k, v, m=mask: attention(q, k, v, m, backend="xla"))
        ref = jax.jit(lambda q, k, v, m=mask: attention(q, k, v, m, backend="reference"))
        err = float(jnp.max(jnp.abs(sparse(q, k, v) - ref(q, k, v))))
        ms = 1e3 * median_time(sparse, q, k, v, repeats=3)
        density = float(mask.density)
        results[name] = {
            "density": density,
            "ms": ms,
            "time_ratio": ms / dense_ms,
            "max_abs_err": err,
        }
    print_table(
        f"== block-sparse attention (xla path): seq {seq}, {heads} heads, dim {dim}, "
        f"{block}x{block} blocks ==",
        ("pattern", "block density", "ms", "x dense", "max err"),
        [("dense", "1.000", f"{dense_ms:.2f}", "1.00", "-")]
        + [(name, f"{r['density']:.3f}", f"{r['ms']:.2f}", f"{r['time_ratio']:.2f}",
            f"{r['max_abs_err']:.2e}") for name, r in results.items()],
        caption="time: median of 3 jitted calls on this machine's CPU; max err against the "
                "reference (dense softmax with the same token mask)")
    return {"seq": seq, "heads": heads, "dim": dim, "dense_ms": dense_ms, "patterns": results}


def plot(ax, result: dict, results: dict) -> None:
    """Time of each static pattern relative to dense attention against its block density."""
    pats = result.get("patterns", {})
    for name, r in pats.items():
        ax.plot([r["density"]], [r["time_ratio"]], "o", label=name)
    ax.plot([0, 1], [0, 1], color="gray", ls=":", label="time = density")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1.2, *(r["time_ratio"] for r in pats.values())) if pats else 1.2)
    ax.set_xlabel("kept block fraction")
    ax.set_ylabel("time vs dense attention")
    ax.set_title(f"sparse attention, seq {result.get('seq')}")

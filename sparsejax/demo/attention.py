"""Demo stage: block-sparse attention on a synthetic sequence (density, time, error vs dense)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.attention import (
    attention,
    causal_mask,
    sink_window_mask,
    sliding_window_mask,
)
from sparsejax.demo.context import DemoContext


def _time(fn, *args, repeats: int = 2) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(ctx: DemoContext) -> dict:
    """Time the xla block-sparse path against dense attention for a few static patterns.

    Returns:
        ``{"seq": L, "dense_ms": t, "patterns": {name: {"density", "ms", "time_ratio",
        "max_abs_err"}}}``; the error is against dense softmax attention with the same token mask.
    """
    seq, heads, dim = (256, 2, 32) if ctx.quick else (1024, 4, 64)
    block = 64 if ctx.quick else 128
    kq, kk, kv = jax.random.split(ctx.next_key(), 3)
    q = jax.random.normal(kq, (1, heads, seq, dim))
    k = jax.random.normal(kk, (1, heads, seq, dim))
    v = jax.random.normal(kv, (1, heads, seq, dim))
    geo = dict(block_q=block, block_kv=block)
    patterns = {
        "causal": causal_mask(seq, **geo),
        "sliding_window": sliding_window_mask(seq, window=(seq // 8 - 1, 0), **geo),
        "sink_window": sink_window_mask(seq, sink=16, window=seq // 16, **geo),
    }
    dense_ms = 1e3 * _time(jax.jit(lambda q, k, v: attention(q, k, v, backend="xla")), q, k, v)
    print(f"sparse attention: seq {seq}, {heads} heads, dim {dim}, blocks {block}; "
          f"dense xla {dense_ms:.1f} ms")
    print(f"{'pattern':<16}{'density':>9}{'ms':>9}{'x dense':>9}{'max err':>11}")
    results = {}
    for name, mask in patterns.items():
        sparse = jax.jit(lambda q, k, v, m=mask: attention(q, k, v, m, backend="xla"))
        ref = jax.jit(lambda q, k, v, m=mask: attention(q, k, v, m, backend="reference"))
        err = float(jnp.max(jnp.abs(sparse(q, k, v) - ref(q, k, v))))
        ms = 1e3 * _time(sparse, q, k, v)
        density = float(mask.density)
        results[name] = {
            "density": density,
            "ms": ms,
            "time_ratio": ms / dense_ms,
            "max_abs_err": err,
        }
        print(f"{name:<16}{density:>9.3f}{ms:>9.1f}{ms / dense_ms:>9.2f}{err:>11.2e}")
    return {"seq": seq, "heads": heads, "dim": dim, "dense_ms": dense_ms, "patterns": results}

"""Benchmark: block-sparse attention (xla path) against the fastest dense attention.

CPU section (always): for each sequence length, times
  * dense candidates: ``jax.nn.dot_product_attention``, a plain einsum-softmax, and the xla
    block-sparse path with a full mask (density 1); "dense" is the fastest of the three;
  * the xla path with random block masks at the requested block densities (every query block
    keeps exactly ``round(density * n_kv_blocks)`` random KV blocks),
and reports ``time(sparse) / time(dense)`` against the goal ``1.2 * density + 0.02``.
Inputs: batch 1, ``--heads`` heads, ``--dim`` head dim, float32. Times are medians of
``--repeats`` rounds after one warm-up (compile) run; each round times every candidate once,
so load drift on a shared machine affects them alike.

GPU section (only when a GPU is present): bfloat16, ``--gpu-seqs`` up to 65536, the
``pallas_gpu`` and ``xla`` backends at 10% density against ``jax.nn.dot_product_attention``.

Usage::

    python benchmarks/attention.py --seqs 4096 8192 16384 --out results/attention.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.attention import BlockMask, attention, full_mask


def timed(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_block_mask(seq: int, block: int, density: float, seed: int) -> BlockMask:
    nb = -(-seq // block)
    keep = max(1, round(density * nb))
    rng = np.random.default_rng(seed)
    blocks = np.zeros((1, 1, nb, nb), bool)
    for i in range(nb):
        blocks[0, 0, i, rng.choice(nb, keep, replace=False)] = True
    return BlockMask.from_blocks(blocks, block, block, seq, seq)


def _per_head(fn, split: bool):
    """Run ``fn(q, k, v)`` on all heads at once or one head at a time (bounds dense memory)."""
    if not split:
        return fn

    def mapped(q, k, v):
        xs = tuple(jnp.moveaxis(x, 1, 0)[:, :, None] for x in (q, k, v))
        out = jax.lax.map(lambda a: fn(*a), xs)  # [H, B, 1, L, D]
        return jnp.moveaxis(out[:, :, 0], 0, 1)

    return mapped


def einsum_softmax(q, k, v):
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (q.shape[-1] ** -0.5)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)


def jax_nn_dpa(q, k, v):
    t = lambda x: x.transpose(0, 2, 1, 3)
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v)))


def interleaved(fns: dict, args_: tuple, repeats: int) -> dict:
    """Median wall time of each function, timing them in alternating rounds so that load drift on
    a shared machine hits every candidate alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args_))  # compile + warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args_))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cpu_section(args, on_row=lambda rows: None) -> list[dict]:
    rows = []
    for seq in args.seqs:
        kq, kk, kv = jax.random.split(jax.random.key(seq), 3)
        shape = (1, args.heads, seq, args.dim)
        q, k, v = (jax.random.normal(x, shape, jnp.float32) for x in (kq, kk, kv))
        split = seq > args.split_heads_above
        full = full_mask(seq, block_q=args.block, block_kv=args.block)
        fns = {
            "jax.nn.dot_product_attention": jax.jit(_per_head(jax_nn_dpa, split)),
            "einsum_softmax": jax.jit(_per_head(einsum_softmax, split)),
            "xla_density_1": jax.jit(lambda q, k, v, m=full: attention(q, k, v, m, backend="xla")),
        }
        dense_names = list(fns)
        masks = {}
        for density in args.densities:
            mask = random_block_mask(seq, args.block, density, seed=seq)
            masks[density] = mask
            fns[f"xla_{density}"] = jax.jit(
                lambda q, k, v, m=mask: attention(q, k, v, m, backend="xla")
            )
        times = interleaved(fns, (q, k, v), args.repeats)
        dense_times = {n: times[n] for n in dense_names}
        for name, t in dense_times.items():
            print(f"seq {seq:>6} dense {name:<30} {t * 1e3:10.1f} ms", flush=True)
        best_name = min(dense_times, key=dense_times.get)
        best = dense_times[best_name]
        for density, mask in masks.items():
            t = times[f"xla_{density}"]
            ratio = t / best
            goal = 1.2 * float(mask.density) + 0.02
            rows.append(
                {
                    "seq": seq,
                    "density": float(mask.density),
                    "target_density": density,
                    "sparse_s": t,
                    "dense_s": best,
                    "dense_impl": best_name,
                    "dense_candidates_s": dense_times,
                    "ratio": ratio,
                    "goal": goal,
                    "meets_goal": ratio <= goal,
                    "split_heads": split,
                }
            )
            print(
                f"seq {seq:>6} density {float(mask.density):.3f}  sparse {t * 1e3:10.1f} ms  "
                f"/ dense ({best_name}) = {ratio:.3f}  goal <= {goal:.3f}  "
                f"{'ok' if ratio <= goal else 'MISSED'}",
                flush=True,
            )
        on_row(rows)  # partial results survive an interrupted long run
    return rows


def gpu_section(args) -> list[dict]:
    rows = []
    for seq in args.gpu_seqs:
        kq, kk, kv = jax.random.split(jax.random.key(seq), 3)
        shape = (1, args.heads, seq, args.dim)
        q, k, v = (jax.random.normal(x, shape, jnp.bfloat16) for x in (kq, kk, kv))
        dense_t = timed(jax.jit(jax_nn_dpa), q, k, v, repeats=args.repeats)
        mask = random_block_mask(seq, args.block, 0.1, seed=seq)
        for backend in ("pallas_gpu", "xla"):
            fn = jax.jit(lambda q, k, v, m=mask, b=backend: attention(q, k, v, m, backend=b))
            try:
                t = timed(fn, q, k, v, repeats=args.repeats)
            except Exception as err:  # report, keep going (e.g. out of memory at 64k)
                print(f"gpu seq {seq} {backend}: failed: {type(err).__name__}: {err}")
                continue
            rows.append(
                {
                    "seq": seq,
                    "backend": backend,
                    "density": float(mask.density),
                    "sparse_s": t,
                    "dense_s": dense_t,
                    "speedup": dense_t / t,
                }
            )
            print(
                f"gpu seq {seq:>6} {backend:<10} {t * 1e3:9.2f} ms  dense {dense_t * 1e3:9.2f} ms"
                f"  speedup {dense_t / t:6.2f}x",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--split-heads-above",
        type=int,
        default=8192,
        help="dense baselines run one head at a time above this length",
    )
    parser.add_argument("--gpu-seqs", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--out", default="results/attention.json")
    args = parser.parse_args()

    result = {
        "config": vars(args),
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": [],
        "gpu": [],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    def save(section, rows):
        result[section] = rows
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)

    if jax.default_backend() == "cpu":
        save("cpu", cpu_section(args, on_row=lambda rows: save("cpu", rows)))
    if jax.default_backend() == "gpu":
        save("gpu", gpu_section(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

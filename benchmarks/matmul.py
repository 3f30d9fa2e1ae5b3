"""Block-sparse matmul vs dense ``jnp.dot``: time ratios over a sweep of block densities.

CPU section: ``A @ B`` (``bsr_matmul``) and ``X @ A`` (``dense_bsr_matmul``) through the XLA backend
at ``--size`` (default 4096) float32 with ``--block`` x ``--block`` blocks (default 128), block
densities 1, 0.5, 0.25, 0.1, 0.05, each against the dense ``jnp.dot`` of the same shapes, median
of ``--repeats`` runs after a warm-up, all in one run; the dense and sparse runs are interleaved
and each ratio is the median of per-pair ratios, so load changes on a shared machine cancel.
Goal (issue 3): time <= 1.5 x density + 0.05 of dense, and <= 1.2 x dense at density 1.

Accelerator section (only when JAX sees a GPU or TPU): the same sweep in bfloat16 at
``--accel-size`` (default 8192) through ``backend="auto"`` (``pallas_gpu`` / ``pallas_tpu``)
against the dense ``jnp.dot`` (cuBLAS on GPU). Goal on GPU: time <= 1.3 x density x dense for
density >= 0.1.

Masks are uniformly random with exactly ``round(density * blocks)`` kept blocks (density 0.05 of
32 x 32 blocks keeps 51).

Run: ``python benchmarks/matmul.py [--size 4096] [--out results/matmul.json]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.formats import BlockSparse
from sparsejax.ops import bsr_matmul, dense_bsr_matmul


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def paired_times(dense_fn, dense_args, sparse_fn, sparse_args, repeats: int
                 ) -> tuple[float, float, float]:
    """Interleaved timing (dense, sparse, dense, sparse, ...) so that load changes on a shared
    machine hit both alike: median dense time, median sparse time, median of per-pair ratios."""
    jax.block_until_ready(dense_fn(*dense_args))
    jax.block_until_ready(sparse_fn(*sparse_args))
    td, ts = [], []
    for _ in range(repeats):
        for fn, args, out in ((dense_fn, dense_args, td), (sparse_fn, sparse_args, ts)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out.append(time.perf_counter() - t0)
    ratios = np.asarray(ts) / np.asarray(td)
    return float(np.median(td)), float(np.median(ts)), float(np.median(ratios))


def random_block_mask(rng: np.random.Generator, r: int, c: int, density: float) -> np.ndarray:
    keep = max(1, int(round(density * r * c)))
    flat = np.zeros(r * c, bool)
    flat[rng.permutation(r * c)[:keep]] = True
    return flat.reshape(r, c)


def sweep(size: int, block: int, densities: list[float], dtype, backend: str, repeats: int,
          seed: int, label: str) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w = jax.random.normal(k1, (size, size), dtype)
    b = jax.random.normal(k2, (size, size), dtype)
    dense = jax.jit(jnp.dot)
    t_dense = median_time(dense, w, b, repeats=repeats)
    sd = jax.jit(lambda a, b: bsr_matmul(a, b, backend=backend))
    ds = jax.jit(lambda x, a: dense_bsr_matmul(x, a, backend=backend))
    rng = np.random.default_rng(seed)
    r = size // block
    print(f"\n{label}: {size}x{size} @ {size}x{size} {jnp.dtype(dtype).name}, {block}x{block} "
          f"blocks, backend={backend}; dense jnp.dot {t_dense * 1e3:.1f} ms "
          f"(median of {repeats})")
    print("ratios: median over interleaved (dense, sparse) pairs; ms: medians")
    print(f"{'density':>8}{'kept blocks':>13}{'dense ms':>10}{'A@B ms':>10}{'A@B/dense':>11}"
          f"{'X@A ms':>10}{'X@A/dense':>11}{'goal':>8}")
    rows = []
    for d in densities:
        mask = random_block_mask(rng, r, r, d)
        a = BlockSparse.from_dense(w, (block, block), jnp.asarray(mask))
        td1, t_sd, q_sd = paired_times(dense, (w, b), sd, (a, b), repeats)
        td2, t_ds, q_ds = paired_times(dense, (b, w), ds, (b, a), repeats)
        goal = 1.2 if d == 1.0 else 1.5 * d + 0.05
        row = {"density": d, "kept_blocks": int(mask.sum()), "dense_s": (td1 + td2) / 2,
               "bsr_matmul_s": t_sd, "dense_bsr_matmul_s": t_ds, "bsr_matmul_ratio": q_sd,
               "dense_bsr_matmul_ratio": q_ds, "goal_ratio": goal}
        rows.append(row)
        print(f"{d:>8.2f}{row['kept_blocks']:>13d}{row['dense_s'] * 1e3:>10.1f}"
              f"{t_sd * 1e3:>10.1f}{q_sd:>11.3f}{t_ds * 1e3:>10.1f}{q_ds:>11.3f}{goal:>8.2f}")
    return {"size": size, "block": block, "dtype": jnp.dtype(dtype).name, "backend": backend,
            "repeats": repeats, "dense_s": t_dense, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square size on CPU (4096)")
    parser.add_argument("--block", type=int, default=128, help="block edge (128)")
    parser.add_argument("--densities", default="1,0.5,0.25,0.1,0.05",
                        help="comma-separated block densities (1,0.5,0.25,0.1,0.05)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (5)")
    parser.add_argument("--accel-size", type=int, default=8192,
                        help="square size of the GPU/TPU bf16 sweep (8192)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the accelerator sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/matmul.json"))
    args = parser.parse_args(argv)
    densities = [float(v) for v in args.densities.split(",") if v.strip()]
    bad = [d for d in densities if not 0.0 < d <= 1.0]
    if bad or not densities:
        parser.error(f"--densities must be in (0, 1]; got {args.densities!r}")
    if args.size % args.block or args.accel_size % args.block:
        parser.error(f"--size/--accel-size must be multiples of --block {args.block}")

    results = {"jax": jax.__version__, "platform": platform.platform(),
               "devices": [str(d) for d in jax.devices()], "sweeps": []}
    if not args.skip_cpu:
        with jax.default_device(jax.devices("cpu")[0]):
            results["sweeps"].append(sweep(args.size, args.block, densities, jnp.float32, "xla",
                                           args.repeats, args.seed, "CPU (XLA backend)"))
    accel = jax.default_backend()
    if accel in ("gpu", "cuda", "rocm", "tpu"):
        results["sweeps"].append(sweep(args.accel_size, args.block, densities, jnp.bfloat16,
                                       "auto", args.repeats, args.seed,
                                       f"{accel.upper()} (Pallas backend)"))
    else:
        print("\nno GPU/TPU visible to JAX: accelerator sweep skipped")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()

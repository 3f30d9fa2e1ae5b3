"""Block-sparse matmul vs dense ``jnp.dot``: time ratios over a sweep of block densities.

CPU section: ``A @ B`` (``bsr_matmul``) and ``X @ A`` (``dense_bsr_matmul``) through the XLA backend
at ``--size`` (default 4096) float32 with ``--block`` x ``--block`` blocks (default 128), block
densities 1, 0.5, 0.25, 0.1, 0.05, each against the dense ``jnp.dot`` of the same shapes, median
of ``--repeats`` runs after a warm-up, all in one run; the dense and sparse runs are interleaved
and each ratio is the median of per-pair ratios, so load changes on a shared machine cancel.
Goal (issue 30): time <= 1.2 x density + 0.02 of dense (0.62 / 0.32 / 0.14 / 0.08 at
0.5 / 0.25 / 0.1 / 0.05), and <= 1.2 x dense at density 1; each row prints ``ok`` or ``MISSED``
for ``A @ B`` and ``X @ A``. The first line states the load, the threads and any ``OPENBLAS_*``
variable (unset them for the baseline at its best).

Accelerator section (only when JAX sees a GPU or TPU; `accel_section`, also run by
``benchmarks/device_check.py``): the same densities in bfloat16 at ``--accel-size`` (default
8192) through the Pallas backend of the platform and ``xla``, forward (``A @ B``) and
forward+backward (gradients w.r.t. the kept blocks and ``B``), each against the dense ``jnp.dot``
(cuBLAS on GPU) of the same pass; every point also checks the result against the dense product.
Goal on GPU: time <= 1.3 x density x dense for density >= 0.1.

Masks are uniformly random with exactly ``round(density * blocks)`` kept blocks (density 0.05 of
32 x 32 blocks keeps 51).

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/matmul.py [--size 4096]
[--out results/matmul.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_time, paired

from sparsejax.formats import BlockSparse
from sparsejax.ops import bsr_matmul, dense_bsr_matmul


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
          f"{'X@A ms':>10}{'X@A/dense':>11}{'goal':>8}  A@B / X@A")
    rows = []
    for d in densities:
        mask = random_block_mask(rng, r, r, d)
        a = BlockSparse.from_dense(w, (block, block), jnp.asarray(mask))
        td1, t_sd, q_sd = paired(dense, (w, b), sd, (a, b), repeats)
        td2, t_ds, q_ds = paired(dense, (b, w), ds, (b, a), repeats)
        goal = 1.2 if d == 1.0 else 1.2 * d + 0.02
        row = {"density": d, "kept_blocks": int(mask.sum()), "dense_s": (td1 + td2) / 2,
               "bsr_matmul_s": t_sd, "dense_bsr_matmul_s": t_ds, "bsr_matmul_ratio": q_sd,
               "dense_bsr_matmul_ratio": q_ds, "goal_ratio": goal}
        rows.append(row)
        print(f"{d:>8.2f}{row['kept_blocks']:>13d}{row['dense_s'] * 1e3:>10.1f}"
              f"{t_sd * 1e3:>10.1f}{q_sd:>11.3f}{t_ds * 1e3:>10.1f}{q_ds:>11.3f}{goal:>8.2f}  "
              f"{'ok' if q_sd <= goal else 'MISSED'} / {'ok' if q_ds <= goal else 'MISSED'}")
    return {"size": size, "block": block, "dtype": jnp.dtype(dtype).name, "backend": backend,
            "repeats": repeats, "dense_s": t_dense, "rows": rows}


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def accel_section(size: int, block: int, densities: list[float], backends: list[str],
                  repeats: int, seed: int = 0, dtype=jnp.bfloat16, tol: float = 2e-2,
                  interpret: bool | None = None) -> dict:
    """Forward and forward+backward ``A @ B`` per backend against dense ``jnp.dot``.

    Returns ``{"rows": [...], "failures": [...]}``; a failure is a backend that raised or whose
    forward result differs from the dense product by more than ``tol`` (relative Frobenius).
    ``interpret`` is passed to the ops (``None``: interpret exactly on CPU, for dry runs).
    """
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = jax.random.normal(k1, (size, size), dtype)
    b = jax.random.normal(k2, (size, size), dtype)
    g = jax.random.normal(k3, (size, size), dtype)
    dense_fwd = jax.jit(jnp.dot)
    dense_bwd = jax.jit(jax.grad(lambda w, b: jnp.sum(jnp.dot(w, b) * g), (0, 1)))
    rng = np.random.default_rng(seed)
    r = size // block
    rows, failures = [], []
    print(f"\n{size}x{size} @ {size}x{size} {jnp.dtype(dtype).name}, {block}x{block} blocks, "
          f"backends {backends}; ratios = median of interleaved (dense, sparse) pairs")
    print(f"{'backend':>11}{'density':>8}{'fwd ms':>9}{'fwd/dense':>10}{'f+b ms':>9}"
          f"{'f+b/dense':>10}{'rel err':>10}{'goal':>7}")
    for d in densities:
        mask = random_block_mask(rng, r, r, d)
        a = BlockSparse.from_dense(w, (block, block), jnp.asarray(mask))
        want = dense_fwd(a.to_dense(), b)
        for backend in backends:
            fwd = jax.jit(lambda a, b, be=backend: bsr_matmul(a, b, backend=be,
                                                               interpret=interpret))
            bwd = jax.jit(jax.grad(
                lambda data, b, be=backend, a=a: jnp.sum(
                    bsr_matmul(a.replace(data=data), b, backend=be, interpret=interpret) * g),
                (0, 1)))
            try:
                err = _rel_err(fwd(a, b), want)
                _, t_f, q_f = paired(dense_fwd, (w, b), fwd, (a, b), repeats)
                _, t_b, q_b = paired(dense_bwd, (w, b), bwd, (a.data, b), repeats)
            except Exception as e:  # report and go on: the summary lists the failure
                failures.append({"backend": backend, "density": d,
                                 "error": f"{type(e).__name__}: {e}"[:500]})
                print(f"{backend:>11}{d:>8.2f}  FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            goal = 1.3 * d if d >= 0.1 else None
            row = {"backend": backend, "density": d, "kept_blocks": int(mask.sum()),
                   "fwd_s": t_f, "fwd_ratio": q_f, "fwd_bwd_s": t_b, "fwd_bwd_ratio": q_b,
                   "rel_err": err, "goal_ratio": goal}
            rows.append(row)
            if err > tol:
                failures.append({"backend": backend, "density": d,
                                 "error": f"relative error {err:.3g} > {tol}"})
            print(f"{backend:>11}{d:>8.2f}{t_f * 1e3:>9.2f}{q_f:>10.3f}{t_b * 1e3:>9.2f}"
                  f"{q_b:>10.3f}{err:>10.2e}{'' if goal is None else f'{goal:.2f}':>7}")
    return {"size": size, "block": block, "dtype": jnp.dtype(dtype).name, "backends": backends,
            "repeats": repeats, "rows": rows, "failures": failures}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square size on CPU (4096)")
    parser.add_argument("--block", type=int, default=128, help="block edge (128)")
    parser.add_argument("--densities", default="1,0.5,0.25,0.1,0.05",
                        help="comma-separated block densities (1,0.5,0.25,0.1,0.05)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per point (7)")
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

    openblas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    print(f"load {os.getloadavg()}, {os.cpu_count()} CPUs (XLA uses all), jax {jax.__version__}, "
          f"OPENBLAS_* variables: {openblas or 'none'}")
    results = {"jax": jax.__version__, "platform": platform.platform(),
               "devices": [str(d) for d in jax.devices()], "loadavg_start": os.getloadavg(),
               "env_openblas": openblas, "sweeps": []}
    if not args.skip_cpu:
        with jax.default_device(jax.devices("cpu")[0]):
            results["sweeps"].append(sweep(args.size, args.block, densities, jnp.float32, "xla",
                                           args.repeats, args.seed, "CPU (XLA backend)"))
    accel = jax.default_backend()
    if accel in ("gpu", "cuda", "rocm", "tpu"):
        kernel = "pallas_tpu" if accel == "tpu" else "pallas_gpu"
        results["sweeps"].append(accel_section(args.accel_size, args.block, densities,
                                               [kernel, "xla"], args.repeats, args.seed))
    else:
        print("\nno GPU/TPU visible to JAX: accelerator sweep skipped")
    results["loadavg_end"] = os.getloadavg()
    print(f"load after: {results['loadavg_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()

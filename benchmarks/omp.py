"""Batched OMP: time against the issue-30 goal, growth with the number of signals, before/after.

Problem (issue 30): float32 signals, a 256 x 2048 unit-norm random dictionary, k = 32, all
signals coded in one jitted call (compilation excluded: one warm-up call per size first). Prints
the median of ``--repeats`` interleaved calls (wall time and process CPU time) at 1x, 2x and 4x
``--n-signals`` (the growth should be linear), the 1x figure against the goal (<= 0.45 s for 4096
signals) and, with ``--sklearn-signals`` > 0, scikit-learn's ``orthogonal_mp`` (its default, faster
path) timed on that many signals and scaled linearly (goal: >= 20x faster). ``--baseline-rev REV``
also times ``sparsejax/dictionary/omp.py`` as of git revision ``REV`` in the same process,
interleaved call by call, and checks that both return the same supports. The first call at each size
(compilation plus one run) is printed as well, wall and process CPU.

``--floor`` also times the two memory-bound parts that any Batch-OMP with stored projection rows
must do, alone, at the same shapes: the matmul ``Y D`` (4.3 GFLOP) and the per-step contractions
``w P`` over the filled rows (32 signals a chunk, four blocks of slots, as `omp` runs them; about
21 GB read over 32 steps for 4096 signals), i.e. the time left when every other op is free.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/omp.py --baseline-rev main --floor
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _timing import interleaved, module_at

GOAL_S = 0.45


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-signals", type=int, default=4096)
    p.add_argument("--n-features", type=int, default=256)
    p.add_argument("--n-atoms", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--sklearn-signals", type=int, default=128)
    p.add_argument("--baseline-rev", default=None, help="git revision to time side by side")
    p.add_argument("--floor", action="store_true", help="also time the matmul and contractions alone")
    args = p.parse_args()

    from sparsejax.dictionary import omp

    impls = {"this tree": omp}
    if args.baseline_rev:
        impls[f"omp.py @ {args.baseline_rev}"] = module_at(
            args.baseline_rev, "sparsejax/dictionary/omp.py").omp
    rng = np.random.default_rng(0)
    d = rng.normal(size=(args.n_features, args.n_atoms)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0)
    y_all = rng.normal(size=(args.n_signals * max(args.scales), args.n_features)).astype(np.float32)
    dj = jnp.asarray(d)
    print(f"cpu count {os.cpu_count()}, load {os.getloadavg()}, jax {jax.__version__}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    base = {}
    for scale in args.scales:
        yj = jnp.asarray(y_all[: args.n_signals * scale])
        runs = {name: (lambda f=f, yj=yj: jax.block_until_ready(
            f(dj, yj, k=args.k, return_indices=True))) for name, f in impls.items()}
        outs = {}
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = run()
            print(f"{name:>22}: {yj.shape[0]:6d} signals first call (compile + run) "
                  f"{time.perf_counter() - t0:6.2f} s wall, {time.process_time() - c0:6.2f} s CPU")
        times = interleaved(runs, args.repeats)
        ref = next(iter(outs.values())).indices
        for name, (wall, cpu) in times.items():
            t, c = float(np.median(wall)), float(np.median(cpu))
            same = bool(jnp.all(outs[name].indices == ref))
            base.setdefault(name, t)
            print(f"{name:>22}: {yj.shape[0]:6d} signals {t:7.3f} s wall, {c:7.3f} s CPU "
                  f"({t / base[name]:.2f}x the 1x time; same supports: {same})")
    ours = base["this tree"]
    verdict = "met" if ours <= GOAL_S else "not met"
    print(f"goal: {args.n_signals} signals <= {GOAL_S} s (median wall): {ours:.3f} s ({verdict})")
    if args.sklearn_signals > 0:
        from sklearn.linear_model import orthogonal_mp

        n = min(args.sklearn_signals, args.n_signals)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t0 = time.perf_counter()
            orthogonal_mp(d, y_all[:n].T, n_nonzero_coefs=args.k)
            sk = (time.perf_counter() - t0) / n * args.n_signals
        print(f"sklearn orthogonal_mp (scaled from {n} signals): {sk:.2f} s; "
              f"sparsejax {sk / ours:.1f}x faster (goal >= 20x)")
    if args.floor:
        _floor(dj, jnp.asarray(y_all[: args.n_signals]), args.k, args.repeats)
    print(f"load after: {os.getloadavg()}", file=sys.stdout)


def _floor(d, y, k, repeats):
    """Time ``Y D`` and the contractions ``w P`` of every step alone (median wall / CPU)."""
    from _timing import interleaved

    from sparsejax.dictionary.omp import _block_ends, _default_chunk

    n_atoms = d.shape[1]
    chunk = _default_chunk(k, n_atoms, 4)
    ends = _block_ends(k, n_atoms)
    starts = [0, *ends[:-1]]
    n_chunks = y.shape[0] // chunk

    @jax.jit
    def contractions(xy):
        def one_chunk(a):
            rows = tuple(jnp.zeros((chunk, e - s, n_atoms), a.dtype) + 1e-3
                         for s, e in zip(starts, ends, strict=True))

            def step(t, a, block):
                w = a[:, : ends[block]]  # depends on the carry: nothing is hoisted
                fit = sum(jnp.einsum("bk,bka->ba", w[:, starts[m]:ends[m]], rows[m])
                          for m in range(block + 1))
                return a - 1e-6 * fit

            for block, (s, e) in enumerate(zip(starts, ends, strict=True)):
                a = jax.lax.fori_loop(s, e, lambda t, a, block=block: step(t, a, block), a)
            return a
        return jax.lax.map(one_chunk, xy.reshape(n_chunks, chunk, n_atoms))

    matmul = jax.jit(lambda d, y: y @ d)
    xy = jax.block_until_ready(matmul(d, y))
    jax.block_until_ready(contractions(xy))
    times = interleaved({"Y D": lambda: jax.block_until_ready(matmul(d, y)),
                         "w P, all steps": lambda: jax.block_until_ready(contractions(xy))},
                        repeats)
    for name, (wall, cpu) in times.items():
        print(f"floor: {name:>15} alone: {float(np.median(wall)):.3f} s wall, "
              f"{float(np.median(cpu)):.3f} s CPU")


if __name__ == "__main__":
    main()

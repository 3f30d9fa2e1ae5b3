"""Batched OMP: time against the issue-30 goal, growth with the number of signals, before/after.

Problem (issue 30): float32 signals, a 256 x 2048 unit-norm random dictionary, k = 32, all
signals coded in one jitted call (compilation excluded: one warm-up call per size first). Prints
the median of ``--repeats`` interleaved calls (wall time and process CPU time) at 1x, 2x and 4x
``--n-signals`` (the growth should be linear), the 1x figure against the goal (<= 0.45 s for 4096
signals) and, with ``--sklearn-signals`` > 0, scikit-learn's ``orthogonal_mp`` (its default, faster
path) timed on that many signals and scaled linearly (goal: >= 20x faster). ``--baseline-rev REV``
also times ``sparsejax/dictionary/omp.py`` as of git revision ``REV`` in the same process,
interleaved call by call, and checks that both return the same supports.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/omp.py --baseline-rev main
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
        outs = {name: run() for name, run in runs.items()}
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
    print(f"load after: {os.getloadavg()}", file=sys.stdout)


if __name__ == "__main__":
    main()

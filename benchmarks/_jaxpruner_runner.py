"""Time google-research/jaxpruner's mask calculators; run by ``benchmarks/masks.py`` in a subprocess.

This script runs under *another* Python (a throwaway virtual environment with jaxpruner's
dependencies; jaxpruner itself is put on ``sys.path`` from ``--jaxpruner-src``). It imports nothing
from sparsejax: it reads the score arrays and the case list written by ``benchmarks/masks.py``,
times ``jaxpruner.mask_calculator.get_topk_fn(<sparsity type>)`` on them, eagerly and under
``jax.jit`` (sparsity traced), and writes the timings plus the masks (bit-packed ``.npy``) back.

Shims applied at run time (each one documented in the output JSON under ``"shims"``):

* ``jax.tree_map = jax.tree.map``: ``jax.tree_map`` was removed from current JAX and jaxpruner's
  updaters still call it. The mask calculators timed here do not call it, so the shim does not
  change what is measured; it is set so that ``import jaxpruner`` and its updaters work as upstream
  expects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jaxpruner-src", required=True, help="directory holding the jaxpruner package")
    p.add_argument("--workdir", required=True, help="directory with scores.npy, ties.npy, cases.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="eager,jit")
    args = p.parse_args()

    sys.path.insert(0, os.path.abspath(args.jaxpruner_src))
    import jax
    import jax.numpy as jnp
    import numpy as np

    shims = []
    if not hasattr(jax, "tree_map"):
        jax.tree_map = jax.tree.map
        shims.append("jax.tree_map = jax.tree.map (removed from current JAX; jaxpruner's updaters "
                     "call it; the mask calculators timed here do not)")
    import jaxpruner  # noqa: F401  (the full package import must work, not only one module)
    from jaxpruner import mask_calculator, sparsity_types

    src_file = mask_calculator.__file__
    with open(src_file, "rb") as f:
        src_sha = hashlib.sha256(f.read()).hexdigest()

    work = args.workdir
    with open(os.path.join(work, "cases.json")) as f:
        cases = json.load(f)
    scores = jnp.asarray(np.load(os.path.join(work, "scores.npy")))
    ties = jnp.asarray(np.load(os.path.join(work, "ties.npy")))
    modes = [m for m in args.modes.split(",") if m]

    def sparsity_type(case):
        kind = case["kind"]
        if kind == "unstructured":
            return sparsity_types.Unstructured()
        if kind == "nm":
            return sparsity_types.NByM(n=case["n"], m=case["m"], axis=case["axis"])
        if kind == "block":
            assert case["reduce"] == "mean", case
            return sparsity_types.Block(block_shape=tuple(case["block_shape"]), use_avg_pooling=True)
        raise ValueError(f"unknown case kind {kind!r}")

    def save_mask(mask, name):
        mask = np.asarray(mask).astype(bool)
        np.save(os.path.join(work, name), np.packbits(mask.reshape(-1)))

    results = []
    for case in cases:
        fn = mask_calculator.get_topk_fn(sparsity_type(case))
        # jaxpruner's N:M ignores the sparsity value except for 0 (= dense); pass the pattern's own
        sp = float(case["sparsity"])
        out = {"name": case["name"], "modes": {}}
        for mode in modes:
            rec = {}
            if mode == "eager":
                t0 = time.perf_counter()
                mask = jax.block_until_ready(fn(scores, sp))
                rec["first_call_s"] = time.perf_counter() - t0
                call = lambda: fn(scores, sp)  # noqa: B023
            else:
                t0 = time.perf_counter()
                compiled = jax.jit(fn).lower(scores, jnp.float32(sp)).compile()
                rec["compile_s"] = time.perf_counter() - t0
                sp_arr = jnp.float32(sp)
                t0 = time.perf_counter()
                mask = jax.block_until_ready(compiled(scores, sp_arr))
                rec["first_call_s"] = time.perf_counter() - t0
                call = lambda: compiled(scores, sp_arr)  # noqa: B023
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(call())
                times.append(time.perf_counter() - t0)
            rec["times_s"] = times
            rec["median_s"] = _median(times)
            rec["dtype"] = str(mask.dtype)
            rec["kept"] = int(np.asarray(mask).astype(bool).sum())
            save_mask(mask, f"jp_{case['name']}_{mode}.npy")
            out["modes"][mode] = rec
            print(f"[jaxpruner] {case['name']:<28s} {mode:<5s} median {rec['median_s'] * 1e3:10.1f} ms",
                  flush=True)
        # tie-heavy small input: masks only (no timing), eager
        save_mask(fn(ties, sp), f"jp_{case['name']}_ties.npy")
        results.append(out)

    meta = {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": __import__("jaxlib").__version__,
        "devices": [str(d) for d in jax.devices()],
        "mask_calculator_file": src_file,
        "mask_calculator_sha256": src_sha,
        "shims": shims,
        "repeats": args.repeats,
    }
    with open(os.path.join(work, "jaxpruner_results.json"), "w") as f:
        json.dump({"meta": meta, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main()

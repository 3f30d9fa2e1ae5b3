"""Top-2-of-8 MoE feed-forward through each `moe_ffn` implementation vs an equal-FLOPs dense FFN.

Layer: ``T`` tokens (``--tokens``, default 8192) of width ``d`` (``--d-model``, 512), ``E = 8``
experts of hidden width ``F`` (``--d-ff``, 1024), top-2 routing from a random linear router. The
dense baseline is a two-layer FFN of hidden width ``2 * F`` (the same *active* FLOPs per token).
Each MoE time includes the router matmul, routing, dispatch, the experts and the combine.
Rows (all in one run, median of ``--repeats``, dense and MoE interleaved, ratio = median of
per-pair ratios so load changes on a shared machine cancel):

* ``ragged``: dropless top-2, backend ``ragged_xla`` (the grouped matmul `sparsejax.moe.gmm` as
  the tiled XLA loop; ``ragged_dot`` on GPU/TPU);
* ``ragged_dot``: backend ``ragged_dot`` forced (CPU: dense per-group lowering);
* ``block_sparse``: dropless, backend ``block_sparse_xla`` (MegaBlocks on `sparsejax.ops`);
* ``einsum``: capacity factor 1.25 (dropless einsum would need ``[T, E, T]`` dispatch tensors);
* ``mixtral_gated``: the Mixtral shape of the layer (8 experts, top-2, renormalised, gated SwiGLU
  experts ``w1, w3, w2``) through ``ragged_xla``, against a dense SwiGLU FFN of hidden width
  ``2 * F``;
* each forward only and forward + backward (gradients w.r.t. x, w1, w2 and the router);
* ``ep_memory`` (in a subprocess with 8 host devices): dropless expert parallelism,
  `sparsejax.moe.expert_parallel_moe_ffn` over 8 devices, ``E = 8 * --ep-experts-per-device``
  gated experts, top-2 at a skewed load (router bias: a quarter of the experts take most
  tokens). Compiled memory per device (XLA's memory analysis of the forward + backward
  program: temporaries, arguments, outputs) of ``exchange="padded"`` at capacity ``T / n``
  (dropless) and at capacity factor 1.25 (with the fraction of slots it drops at this load)
  against ``exchange="ragged"`` (dropless).

Goal (issue 13, CPU): ``ragged`` within 1.3x of the dense FFN and faster than ``einsum``.
Accelerator section (only when JAX sees a GPU/TPU): the same in bfloat16 through
``block_sparse`` with ``backend="auto"`` (Pallas) and ``ragged`` (``ragged_dot``).

Run: ``python benchmarks/moe.py [--tokens 8192] [--out results/moe.json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _timing import paired

from sparsejax import moe


def paired_dict(dense_fn, moe_fn, args_dense, args_moe, repeats: int) -> dict:
    td, tm, ratio = paired(dense_fn, args_dense, moe_fn, args_moe, repeats)
    return {"dense_s": td, "moe_s": tm, "ratio": ratio}


def run(tokens: int, d: int, f: int, e: int, k: int, dtype, rows: list[tuple[str, dict]],
        repeats: int, seed: int, tile: int) -> dict:
    ks = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(ks[0], (tokens, d), dtype)
    wr = jax.random.normal(ks[1], (d, e), dtype) * 0.02
    w1 = jax.random.normal(ks[2], (e, d, f), dtype) / np.sqrt(d)
    w2 = jax.random.normal(ks[3], (e, f, d), dtype) / np.sqrt(f)
    w3 = jax.random.normal(ks[4], (e, d, f), dtype) / np.sqrt(d)
    d1 = jax.random.normal(ks[4], (d, k * f), dtype) / np.sqrt(d)
    d2 = jax.random.normal(ks[5], (k * f, d), dtype) / np.sqrt(k * f)
    d3 = jax.random.normal(ks[1], (d, k * f), dtype) / np.sqrt(d)

    def dense(x, d1, d2):
        return jax.nn.gelu(x @ d1) @ d2

    def dense_gated(x, d1, d2, d3):
        return (jax.nn.silu(x @ d1) * (x @ d3)) @ d2

    def make(kw, capacity_factor, gated):
        if gated:
            def layer(x, wr, w1, w2, w3):
                routing = moe.top_k_routing(x @ wr, k, capacity_factor=capacity_factor)
                return moe.moe_ffn(x, routing, w1, w2, w3, activation=jax.nn.silu, tile=tile,
                                   **kw)
            return layer

        def layer(x, wr, w1, w2):
            routing = moe.top_k_routing(x @ wr, k, capacity_factor=capacity_factor)
            return moe.moe_ffn(x, routing, w1, w2, tile=tile, **kw)
        return layer

    def loss(fn, nargs):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2),
                                argnums=tuple(range(nargs))))

    out = {}
    for name, spec in rows:
        kw, cf = dict(spec), spec.get("capacity_factor")
        kw.pop("capacity_factor", None)
        gated = kw.pop("gated", False)
        layer = make(kw, cf, gated)
        base, a_base = (dense_gated, (x, d1, d2, d3)) if gated else (dense, (x, d1, d2))
        a_moe = (x, wr, w1, w2, w3) if gated else (x, wr, w1, w2)
        fwd = paired_dict(jax.jit(base), jax.jit(layer), a_base, a_moe, repeats)
        bwd = paired_dict(loss(base, len(a_base)), loss(layer, len(a_moe)), a_base, a_moe, repeats)
        out[name] = {"forward": fwd, "forward_backward": bwd, "config": spec}
        print(f"  {name:<14} forward {fwd['moe_s'] * 1e3:8.1f} ms  ({fwd['ratio']:.2f}x dense "
              f"{fwd['dense_s'] * 1e3:.1f} ms)   fwd+bwd {bwd['moe_s'] * 1e3:8.1f} ms  "
              f"({bwd['ratio']:.2f}x dense {bwd['dense_s'] * 1e3:.1f} ms)", flush=True)
    return out


def ep_memory(tokens: int, d: int, f: int, experts_per_device: int, k: int, seed: int) -> dict:
    """Compiled per-device memory of padded vs ragged expert parallelism (needs 8 devices)."""
    from jax.sharding import Mesh

    n = 8
    e = n * experts_per_device
    ks = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(ks[0], (tokens, d))
    skew = jnp.where(jnp.arange(e) < e // 4, 2.0, 0.0)  # a quarter of the experts: hot
    logits = jax.random.normal(ks[1], (tokens, e)) + skew
    w1 = jax.random.normal(ks[2], (e, d, f)) / np.sqrt(d)
    w2 = jax.random.normal(ks[3], (e, f, d)) / np.sqrt(f)
    w3 = jax.random.normal(ks[4], (e, d, f)) / np.sqrt(d)
    mesh = Mesh(np.array(jax.devices()[:n]), ("expert",))
    out = {"devices": n, "experts": e, "tokens": tokens, "k": k, "d": d, "f": f}
    rows = {"padded_dropless": ("padded", None), "padded_cf1.25": ("padded", 1.25),
            "ragged_dropless": ("ragged", None)}
    for name, (exchange, cf) in rows.items():
        router = functools.partial(moe.top_k_routing, k=k, capacity_factor=cf)
        layer = functools.partial(moe.expert_parallel_moe_ffn, mesh=mesh, axis_name="expert",
                                  router=router, activation=jax.nn.silu, exchange=exchange)
        grad = jax.jit(jax.grad(lambda *a, f=layer: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3, 4)))
        mem = grad.lower(x, logits, w1, w2, w3).compile().memory_analysis()
        groups = logits.reshape(n, tokens // n, e)
        dropped = float(jnp.mean(jax.vmap(lambda g, r=router: r(g).dropped_fraction())(groups)))
        out[name] = {"temp_mib": mem.temp_size_in_bytes / 2**20,
                     "argument_mib": mem.argument_size_in_bytes / 2**20,
                     "output_mib": mem.output_size_in_bytes / 2**20,
                     "dropped_slots": dropped}
        print(f"  {name:<16} temporaries {out[name]['temp_mib']:8.1f} MiB per device, "
              f"dropped slots {dropped:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="row names to leave out")
    parser.add_argument("--ep-tokens", type=int, default=8192)
    parser.add_argument("--ep-experts-per-device", type=int, default=8)
    parser.add_argument("--ep-memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/moe.json"))
    args = parser.parse_args(argv)
    ep_args = dict(tokens=args.ep_tokens, d=args.d_model, f=args.d_ff,
                   experts_per_device=args.ep_experts_per_device, k=args.k, seed=args.seed)
    if args.ep_memory_child:
        print(json.dumps(ep_memory(**ep_args)))
        return {}
    shape = dict(tokens=args.tokens, d=args.d_model, f=args.d_ff, e=args.experts, k=args.k)
    results = {"shape": shape, "machine": platform.platform(), "jax": jax.__version__,
               "devices": [str(dv) for dv in jax.devices()], "repeats": args.repeats}
    cpu_rows = [
        ("ragged", {"backend": "ragged_xla"}),
        ("block_sparse", {"backend": "block_sparse_xla"}),
        ("einsum_cf1.25", {"backend": "einsum", "capacity_factor": 1.25}),
        ("ragged_dot", {"backend": "ragged_dot"}),
        ("mixtral_gated", {"backend": "ragged_xla", "gated": True}),
    ]
    cpu_rows = [r for r in cpu_rows if r[0] not in args.skip]
    print(f"CPU float32 {shape}; time per call, ratio to the equal-active-FLOPs dense FFN")
    with jax.default_device(jax.devices("cpu")[0]):
        results["cpu"] = run(**shape, dtype=jnp.float32, rows=cpu_rows, repeats=args.repeats,
                             seed=args.seed, tile=args.tile)
    if jax.default_backend() != "cpu":
        accel_rows = [
            ("ragged", {"backend": "ragged_dot"}),
            ("block_sparse", {"backend": f"block_sparse_pallas_{jax.default_backend()}"
                              if jax.default_backend() == "tpu" else "block_sparse_pallas_gpu",
                              "block_shape": (128, 128)}),
            ("einsum_cf1.25", {"backend": "einsum", "capacity_factor": 1.25}),
            ("mixtral_gated", {"backend": "ragged_dot", "gated": True}),
        ]
        print(f"{jax.default_backend()} bfloat16 {shape}")
        results["accelerator"] = run(**shape, dtype=jnp.bfloat16, rows=accel_rows,
                                     repeats=args.repeats, seed=args.seed, tile=128)
    if "ep_memory" not in args.skip:
        print(f"dropless expert parallelism on 8 host devices {ep_args}: compiled memory of "
              "forward + backward per device", flush=True)
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                   JAX_PLATFORMS="cpu")
        child = subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]),
                                "--ep-memory-child"], env=env, capture_output=True, text=True,
                               check=True)
        lines = child.stdout.strip().splitlines()
        print("\n".join(lines[:-1]))
        results["ep_memory"] = json.loads(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()

"""SAE training throughput (tokens/s) of sparsejax's jitted training step.

Default size: d_in=384, 16x expansion (6144 latents), k=32, float32, Adam with the decoder
parallel-gradient removal and renormalisation (what ``train_sae`` runs). Each variant runs
``--steps`` steps per repeat after a warm-up; the median over ``--repeats`` is reported, with each
variant's throughput as a ratio to the TopK SAE's from the same run.

    python benchmarks/sae.py --out results/sae.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from sparsejax.dictionary import sae as S


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/sae.json"))
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024, help="tokens per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="topk,batch_topk,jumprelu,relu",
                   help="comma-separated SAE activations")
    return p.parse_args()


def _time_variant(activation: str, args: argparse.Namespace, x: jax.Array) -> dict:
    d_sae = args.d_in * args.expansion
    cfg = S.SAEConfig(args.d_in, d_sae, activation=activation, k=args.k)
    params = S.init_sae(jax.random.PRNGKey(0), cfg)
    opt = optax.chain(S.remove_decoder_parallel_grads(), optax.adam(1e-4))
    opt_state = opt.init(params)
    state = S.init_state(cfg)
    step = S.make_train_step(cfg, opt)
    t0 = time.perf_counter()
    params, opt_state, state, metrics = step(params, opt_state, state, x, None)
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            params, opt_state, state, metrics = step(params, opt_state, state, x, None)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"activation": activation, "d_sae": d_sae, "seconds_per_step": med / args.steps,
            "tokens_per_s": args.batch * args.steps / med, "first_step_s": compile_s,
            "l0": float(metrics["l0"]), "repeats_s": times}


def main() -> None:
    args = _parse()
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.d_in), jnp.float32)
    rows = [_time_variant(v.strip(), args, x) for v in args.variants.split(",") if v.strip()]
    base = next((r for r in rows if r["activation"] == "topk"), rows[0])
    print(f"SAE training step, d_in={args.d_in}, d_sae={args.d_in * args.expansion}, "
          f"k={args.k}, batch={args.batch}, backend={jax.default_backend()}")
    print(f"{'variant':<12}{'tokens/s':>12}{'ms/step':>10}{'vs ' + base['activation']:>10}")
    for r in rows:
        r["ratio_vs_" + base["activation"]] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['activation']:<12}{r['tokens_per_s']:>12.0f}{1e3 * r['seconds_per_step']:>10.1f}"
              f"{r['ratio_vs_' + base['activation']]:>10.2f}")
    result = {"benchmark": "sae_training_throughput", "config": vars(args) | {"out": str(args.out)},
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "platform": platform.platform(), "jax": jax.__version__, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""SAE training throughput (tokens/s) of sparsejax's jitted training step.

Default size: d_in=384, 16x expansion (6144 latents), k=32, float32, Adam with the decoder
parallel-gradient removal and renormalisation (what ``train_sae`` runs). Each variant runs
``--steps`` steps per repeat after a warm-up; the median over ``--repeats`` is reported, with each
variant's throughput as a ratio to the TopK SAE's from the same run. The ``matryoshka`` variant is
BatchTopK with Matryoshka prefixes at ``d_sae / 16`` and ``d_sae / 4`` (three groups); its ratio to
the plain BatchTopK step of the same width is reported too (issue 25's budget: at most 1.25x).

``--minilm-steps N`` (needs the MiniLM weights, `sparsejax.models`) also trains a Matryoshka and a
plain BatchTopK SAE of the same width on MiniLM's last hidden states of the standard library's
docstring sentences and reports each prefix's FVU on held-out sentences' tokens.

    python benchmarks/sae.py --out results/sae.json
    python benchmarks/sae.py --variants batch_topk,matryoshka --minilm-steps 600
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
    p.add_argument("--variants", default="topk,batch_topk,matryoshka,jumprelu,relu",
                   help="comma-separated SAE activations (or matryoshka)")
    p.add_argument("--minilm-steps", type=int, default=0,
                   help="train on MiniLM activations for this many steps (0: skip)")
    p.add_argument("--minilm-expansion", type=int, default=4)
    return p.parse_args()


def _config(variant: str, d_in: int, d_sae: int, k: int) -> S.SAEConfig:
    if variant == "matryoshka":
        return S.SAEConfig(d_in, d_sae, activation="batch_topk", k=k,
                           matryoshka_widths=(d_sae // 16, d_sae // 4))
    return S.SAEConfig(d_in, d_sae, activation=variant, k=k)


def _time_variant(activation: str, args: argparse.Namespace, x: jax.Array) -> dict:
    d_sae = args.d_in * args.expansion
    cfg = _config(activation, args.d_in, d_sae, args.k)
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


def _paired_cost(args: argparse.Namespace, x: jax.Array) -> dict:
    """Matryoshka / BatchTopK step time, the two timed alternately (median of per-pair ratios)."""
    d_sae = args.d_in * args.expansion
    runs = []
    for variant in ("batch_topk", "matryoshka"):
        cfg = _config(variant, args.d_in, d_sae, args.k)
        params = S.init_sae(jax.random.PRNGKey(0), cfg)
        opt = optax.chain(S.remove_decoder_parallel_grads(), optax.adam(1e-4))
        step = S.make_train_step(cfg, opt)
        carry = list(step(params, opt.init(params), S.init_state(cfg), x, None)[:3])
        jax.block_until_ready(carry[0])
        runs.append((step, carry))

    def timed(step, carry):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            carry[0], carry[1], carry[2], _ = step(*carry, x, None)
        jax.block_until_ready(carry[0])
        return time.perf_counter() - t0

    pairs = [(timed(*runs[0]), timed(*runs[1])) for _ in range(args.repeats)]
    ratio = statistics.median(m / p for p, m in pairs)
    print(f"matryoshka step / batch_topk step (median of {len(pairs)} alternating pairs): "
          f"{ratio:.3f}")
    return {"ratio_median": ratio, "pairs_s": pairs}


def _minilm_tokens(n_sentences: int = 1200) -> tuple[jax.Array, jax.Array]:
    import numpy as np

    from sparsejax.models import docstring_sentences, encode, load_minilm, split_sentences

    model = load_minilm()
    train, held = split_sentences(docstring_sentences()[:n_sentences], held_out=0.25, seed=0)

    def tokens(texts):
        out = []
        for i in range(0, len(texts), 64):
            ids, mask = model.tokenizer(texts[i:i + 64], pad_to_multiple_of=32)
            h = np.asarray(encode(model.params, ids, mask, model.config))
            out.append(h[np.asarray(mask) > 0])
        return jnp.asarray(np.concatenate(out))

    return tokens(train), tokens(held)


def _minilm_prefixes(args: argparse.Namespace) -> dict:
    """Prefix FVU of a Matryoshka vs a plain BatchTopK SAE trained alike on MiniLM tokens."""
    train, held = _minilm_tokens()
    mean = train.mean(0)
    d_in = train.shape[1]
    d_sae = d_in * args.minilm_expansion
    widths = (d_sae // 16, d_sae // 4, d_sae)
    out = {"d_sae": d_sae, "k": args.k, "steps": args.minilm_steps, "widths": widths,
           "train_tokens": int(train.shape[0]), "held_tokens": int(held.shape[0])}
    for variant in ("batch_topk", "matryoshka"):
        cfg = _config(variant, d_in, d_sae, args.k)
        params = S.init_sae(jax.random.PRNGKey(0), cfg, b_dec=mean)
        opt = optax.chain(S.remove_decoder_parallel_grads(), optax.adam(1e-3))
        opt_state, state = opt.init(params), S.init_state(cfg)
        step = S.make_train_step(cfg, opt)
        key = jax.random.PRNGKey(1)
        for _ in range(args.minilm_steps):
            key, sub = jax.random.split(key)
            batch = train[jax.random.randint(sub, (args.batch,), 0, train.shape[0])]
            params, opt_state, state, _ = step(params, opt_state, state, batch, None)
        codes = S.encode(params, held, cfg, threshold=state.threshold)
        fvus = []
        for w in widths:
            recon = S.decode(params, codes.at[:, w:].set(0.0), cfg)
            fvus.append(float(S.fvu(held, recon)))
        out[variant] = {"prefix_fvu": fvus, "l0": float(S.l0(codes))}
        print(f"MiniLM {variant:<12} prefix FVU at widths {widths}: "
              + ", ".join(f"{f:.3f}" for f in fvus) + f"  (L0 {out[variant]['l0']:.1f})")
    return out


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
    names = {r["activation"] for r in rows}
    paired = _paired_cost(args, x) if {"batch_topk", "matryoshka"} <= names else None
    minilm = _minilm_prefixes(args) if args.minilm_steps else None
    result = {"benchmark": "sae_training_throughput", "config": vars(args) | {"out": str(args.out)},
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "platform": platform.platform(), "jax": jax.__version__, "results": rows,
              "matryoshka_vs_batch_topk": paired, "minilm_prefixes": minilm}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Batched OMP (sparsejax) against scikit-learn's ``orthogonal_mp``, plus SAE training throughput.

Default problem: 4096 float32 signals, a 256 x 2048 unit-norm random dictionary, k = 32. sparsejax
codes all signals in one jitted call (compilation excluded: one warm-up call first). scikit-learn
codes signals one by one in a Python loop (its cost is linear in the number of signals), so it is
timed on ``--sklearn-signals`` of them and scaled to the full count; both its default path
(``precompute=False``) and its Gram path (``precompute=True``: ``orthogonal_mp_gram``, with the
Gram matrix computed once for all signals and its time added once) are timed. Median of
``--repeats``.
Codes are compared on the sklearn subset (support agreement, max abs difference).

If ``sparsejax.dictionary.sae`` is present, the TopK SAE training step is timed too (tokens/s,
d_in = 384, 16x expansion, k = 32).

Binary sparse coding (``--bsc-points``, 0 skips): the truncated E-step (selection function and
log-joint of every truncated state, prosper's ``select_Hprimes`` + ``E_step``) on bars data
(5 x 5, H = 10, H' = 8, gamma = 5), sparsejax's batched jitted `bsc_posterior` against a numpy
per-point loop transcribed from ml-uol/prosper ``bsc_et.py``; then the bars test over
``--bsc-seeds`` seeds (1000 points, 150 annealed EM iterations each): a seed succeeds when every
bar has a learned field with cosine >= 0.95, all distinct.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dictionary.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _timing import times


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/dictionary.json"))
    p.add_argument("--n-signals", type=int, default=4096)
    p.add_argument("--n-features", type=int, default=256)
    p.add_argument("--n-atoms", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sklearn-signals", type=int, default=128,
                   help="signals timed for sklearn (its per-signal loop scales linearly)")
    p.add_argument("--chunk-size", type=int, default=None, help="sparsejax omp chunk_size")
    p.add_argument("--sae-batch", type=int, default=1024, help="tokens per SAE step (0: skip)")
    p.add_argument("--sae-steps", type=int, default=3)
    p.add_argument("--skip-omp", action="store_true", help="skip the OMP comparison")
    p.add_argument("--bsc-points", type=int, default=2000, help="E-step data points (0: skip)")
    p.add_argument("--bsc-seeds", type=int, default=10, help="bars-test seeds (0: skip)")
    return p.parse_args()


def _median_time(fn, repeats):
    all_times = times(fn, repeats=repeats, warmup=False)
    return statistics.median(all_times), all_times


def _omp_rows(args):
    from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram

    from sparsejax.dictionary import omp

    rng = np.random.default_rng(0)
    d = rng.normal(size=(args.n_features, args.n_atoms)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0)
    y = rng.normal(size=(args.n_signals, args.n_features)).astype(np.float32)
    dj, yj = jnp.asarray(d), jnp.asarray(y)

    run = lambda: jax.block_until_ready(omp(dj, yj, k=args.k, chunk_size=args.chunk_size))
    t0 = time.perf_counter()
    ours_codes = np.asarray(run())
    first = time.perf_counter() - t0
    ours, ours_all = _median_time(run, args.repeats)

    n_sk = min(args.sklearn_signals, args.n_signals)
    rows = [{"impl": "sparsejax.omp (jit, batched)", "signals_timed": args.n_signals,
             "seconds": ours, "seconds_per_signal": ours / args.n_signals,
             "first_call_s": first, "repeats_s": ours_all}]
    gram = np.asfortranarray(d.T @ d)
    gram_s, _ = _median_time(lambda: d.T @ d, args.repeats)
    for precompute in (False, True):
        def sk(precompute=precompute):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if not precompute:
                    return orthogonal_mp(d, y[:n_sk].T, n_nonzero_coefs=args.k).T
                # what orthogonal_mp(precompute=True) runs, with the Gram matrix (computed once
                # for all signals, timed separately and added once) kept out of the per-signal cost
                return orthogonal_mp_gram(gram, d.T @ y[:n_sk].T, n_nonzero_coefs=args.k).T
        sk_codes = sk()
        t, all_t = _median_time(sk, args.repeats)
        per = t / n_sk
        total = per * args.n_signals + (gram_s if precompute else 0.0)
        rows.append({
            "impl": f"sklearn.orthogonal_mp(precompute={precompute})", "signals_timed": n_sk,
            "seconds": total, "seconds_per_signal": total / args.n_signals, "repeats_s": all_t,
            "support_agreement": float(np.mean((sk_codes != 0) == (ours_codes[:n_sk] != 0))),
            "max_abs_code_diff": float(np.abs(sk_codes - ours_codes[:n_sk]).max()),
        })
    for r in rows:
        r["speedup_of_sparsejax"] = r["seconds"] / ours
    return rows


def _sae_row(args):
    try:
        import optax

        from sparsejax.dictionary import sae as S
    except ImportError:
        return None
    d_in, k, batch = 384, 32, args.sae_batch
    cfg = S.SAEConfig(d_in, 16 * d_in, activation="topk", k=k)
    params = S.init_sae(jax.random.PRNGKey(0), cfg)
    opt = optax.chain(S.remove_decoder_parallel_grads(), optax.adam(1e-4))
    opt_state = opt.init(params)
    state = S.init_state(cfg)
    step = S.make_train_step(cfg, opt)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, d_in), jnp.float32)
    params, opt_state, state, _ = step(params, opt_state, state, x, None)
    jax.block_until_ready(params)
    carry = [params, opt_state, state]

    def run():
        for _ in range(args.sae_steps):
            carry[0], carry[1], carry[2], _ = step(*carry, x, None)
        jax.block_until_ready(carry[0])

    t, all_t = _median_time(run, args.repeats)
    return {"impl": "TopK SAE train step", "d_in": d_in, "d_sae": 16 * d_in, "k": k,
            "batch": batch, "tokens_per_s": batch * args.sae_steps / t, "repeats_s": all_t}


def _bars_data(seed, n, size=5, amplitude=10.0, p_bar=0.2, sigma=2.0):
    h = 2 * size
    w = np.zeros((size, size, h))
    for i in range(size):
        w[i, :, i] = 1
        w[:, i, size + i] = 1
    w = amplitude * w.reshape(size * size, h)
    rng = np.random.default_rng(seed)
    y = (rng.random((n, h)) < p_bar) @ w.T + sigma * rng.normal(size=(n, size * size))
    return w, y.astype(np.float32)


def _numpy_bsc_estep(w, pi, sigma, y, sm):
    """prosper bsc_et.py select_Hprimes + E_step, one data point at a time (float64)."""
    wt = w.T
    h = wt.shape[0]
    h_prime = sm.shape[1]
    pre1 = -0.5 / sigma**2
    pil = np.log(pi / (1 - pi))
    pre_f = np.concatenate([[0.0], np.full(h, pil), pil * sm.sum(1)])
    out = np.empty((len(y), 1 + h + len(sm)))
    for n, yn in enumerate(y):
        sim = wt @ yn / np.sqrt(np.diag(wt @ wt.T)) / np.sqrt(yn @ yn)
        cand = np.argsort(sim)[-h_prime:]
        out[n, 0] = pre1 * (yn**2).sum()
        out[n, 1:h + 1] = pre1 * ((wt - yn) ** 2).sum(1)
        out[n, h + 1:] = pre1 * ((sm @ wt[cand] - yn) ** 2).sum(1)
    return pre_f + out


def _bsc_rows(args):
    from sparsejax.dictionary import BSCParams, bsc_fit, bsc_posterior, state_matrix

    h_prime, gamma = 8, 5
    w, y = _bars_data(0, args.bsc_points)
    params = BSCParams(jnp.asarray(w, jnp.float32), jnp.float32(0.2), jnp.float32(2.0))
    yj = jnp.asarray(y)
    jax.block_until_ready(bsc_posterior(params, yj, h_prime=h_prime, gamma=gamma))
    ours, ours_all = _median_time(lambda: jax.block_until_ready(
        bsc_posterior(params, yj, h_prime=h_prime, gamma=gamma)), args.repeats)
    sm = state_matrix(h_prime, gamma).astype(np.float64)
    n_np = min(args.bsc_points, 500)
    ref, ref_all = _median_time(lambda: _numpy_bsc_estep(w, 0.2, 2.0, y[:n_np].astype(np.float64),
                                                          sm), args.repeats)
    ref = ref * args.bsc_points / n_np
    estep = {"points": args.bsc_points, "H": 10, "h_prime": h_prime, "gamma": gamma,
             "states_per_point": int(1 + 10 + len(sm)), "sparsejax_s": ours,
             "numpy_loop_s_scaled": ref, "numpy_points_timed": n_np, "speedup": ref / ours,
             "sparsejax_repeats_s": ours_all, "numpy_repeats_s": ref_all}
    seeds = []
    for seed in range(args.bsc_seeds):
        w_true, y = _bars_data(seed, 1000)
        t0 = time.perf_counter()
        fit, _ = bsc_fit(jax.random.PRNGKey(seed), y, 10, h_prime=h_prime, gamma=gamma,
                         n_iter=150)
        learned = np.asarray(jax.block_until_ready(fit.W))
        cos = (w_true / np.linalg.norm(w_true, axis=0)).T @ (learned / np.linalg.norm(learned,
                                                                                      axis=0))
        ok = bool(cos.max(1).min() >= 0.95 and len(set(cos.argmax(1).tolist())) == 10)
        seeds.append({"seed": seed, "recovered": ok, "min_best_cosine": float(cos.max(1).min()),
                      "pi": float(fit.pi), "sigma": float(fit.sigma),
                      "seconds": time.perf_counter() - t0})
    return estep, seeds


def main() -> None:
    args = _parse()
    rows = [] if args.skip_omp else _omp_rows(args)
    if rows:
        print(f"OMP: {args.n_signals} signals, dictionary {args.n_features}x{args.n_atoms}, "
              f"k={args.k}, float32, backend={jax.default_backend()}")
        print(f"{'implementation':<42}{'seconds':>10}{'ms/signal':>11}{'sparsejax x':>13}")
        for r in rows:
            print(f"{r['impl']:<42}{r['seconds']:>10.2f}{1e3 * r['seconds_per_signal']:>11.3f}"
                  f"{r['speedup_of_sparsejax']:>13.1f}")
        for r in rows[1:]:
            print(f"  vs {r['impl']}: support agreement {r['support_agreement']:.4f}, "
                  f"max |code diff| {r['max_abs_code_diff']:.2e} (on {r['signals_timed']} signals)")
    sae = _sae_row(args) if args.sae_batch > 0 else None
    if sae is not None:
        print(f"SAE (TopK, d={sae['d_in']}, {sae['d_sae']} latents, k={sae['k']}, "
              f"batch {sae['batch']}): {sae['tokens_per_s']:.0f} tokens/s")
    estep, seeds = _bsc_rows(args) if args.bsc_points > 0 else (None, [])
    if estep is not None:
        print(f"BSC truncated E-step, {estep['points']} points, {estep['states_per_point']} "
              f"states each: sparsejax {1e3 * estep['sparsejax_s']:.1f} ms, numpy per-point loop "
              f"{1e3 * estep['numpy_loop_s_scaled']:.0f} ms (scaled from "
              f"{estep['numpy_points_timed']}): {estep['speedup']:.0f}x")
    if seeds:
        print(f"BSC bars test: all bars recovered in {sum(s['recovered'] for s in seeds)} of "
              f"{len(seeds)} seeds (min best cosine "
              f"{min(s['min_best_cosine'] for s in seeds):.3f})")
    result = {"benchmark": "dictionary", "config": vars(args) | {"out": str(args.out)},
              "backend": jax.default_backend(), "platform": platform.platform(),
              "jax": jax.__version__, "omp": rows, "sae": sae, "bsc_estep": estep,
              "bsc_bars": seeds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

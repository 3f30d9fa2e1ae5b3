"""Draw every figure of the docs site from the library itself: ``python scripts/figures.py``.

Each ``fig_<name>`` function computes its data with `sparsejax` (masks, attention patterns,
schedules, training on scikit-learn's embedded digits, ...) and writes ``docs/figures/<name>.png``.
``python scripts/figures.py NAME ...`` redraws only the named figures; ``--list`` lists them.
The PNGs are committed (so the docs build does not train anything); rerun this script when the
code behind a figure changes. Needs the ``dev`` extra (matplotlib, scikit-learn); the one-shot
figure uses the MiniLM weights when installed and the digits MLP otherwise.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

import sparsejax as sj  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "figures"
DPI = 90
BLOCK_CMAP = ListedColormap(["#ffffff", "#9ecae1", "#08519c"])  # EMPTY, PARTIAL, FULL
KEEP_CMAP = ListedColormap(["#ffffff", "#08519c"])
plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "figure.dpi": DPI})


def _save(fig, name: str) -> None:
    fig.tight_layout()
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(f"  wrote {path.relative_to(OUT.parents[1])} ({path.stat().st_size / 1024:.0f} KB)")


# -- weight masks ------------------------------------------------------------------------------

def fig_weight_masks() -> None:
    """Unstructured, 2:4, block and channel masks of one 32 x 48 weight at (about) 50%."""
    w = jax.random.normal(jax.random.key(0), (32, 48))
    masks = [
        ("unstructured 50%", sj.masks.magnitude_mask(w, 0.5)),
        ("2:4 along axis 0", sj.masks.nm(jnp.abs(w), 2, 4, axis=0)),
        ("block 8x8, 50%", sj.masks.block(jnp.abs(w), (8, 8), 0.5)),
        ("channel (axis -1), 50%", sj.masks.channel(jnp.abs(w), 0.5, axis=-1)),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(10, 2.4))
    axes[0].imshow(np.abs(np.asarray(w)), cmap="Greys", aspect="auto")
    axes[0].set_title("|w|  [32 in, 48 out]")
    for ax, (title, m) in zip(axes[1:], masks):
        ax.imshow(np.asarray(m), cmap=KEEP_CMAP, vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{title}\nkept {float(np.mean(m)):.2f}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, "weight_masks")


# -- schedules ---------------------------------------------------------------------------------

def fig_schedules() -> None:
    """Sparsity schedules over 1000 steps and RigL's cosine-annealed drop fraction."""
    from sparsejax.training.drop_grow import DropGrowSchedule

    steps = np.arange(1001)
    scheds = {
        "constant(0.9)": sj.schedules.constant(0.9),
        "one_shot(0.9, step=200)": sj.schedules.one_shot(0.9, 200),
        "polynomial(0.9, 100, 600)": sj.schedules.polynomial(0.9, 100, 600),
        "polynomial(..., frequency=100)": sj.schedules.polynomial(0.9, 100, 600, frequency=100),
    }
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    for name, s in scheds.items():
        a.plot(steps, np.asarray(jax.vmap(s)(steps)), label=name,
               drawstyle="steps-post" if "frequency" in name or "one_shot" in name else None)
    a.set_xlabel("optimizer step")
    a.set_ylabel("target sparsity")
    a.set_title("sparsejax.schedules")
    a.legend(fontsize=6.5)
    dg = DropGrowSchedule.create(update_every=100, end_step=750, drop_fraction=0.3)
    frac = np.asarray(jax.vmap(dg.fraction)(steps))
    active = np.asarray(jax.vmap(dg.active)(steps))
    b.plot(steps, frac, color="gray", lw=1, label="drop_fraction / 2 (1 + cos(pi t / end))")
    b.plot(steps[active], frac[active], "o", color="C3", label="mask updates (every 100)")
    b.set_xlabel("optimizer step")
    b.set_ylabel("fraction of kept weights dropped")
    b.set_title("RigL drop fraction (DropGrowSchedule, f0=0.3, end 750)")
    b.legend(fontsize=6.5)
    _save(fig, "schedules")


# -- attention patterns ------------------------------------------------------------------------

def _structured_qk(heads: int, seq: int, dim: int = 32, seed: int = 0):
    """Queries/keys whose attention has structure (not uniform noise): a local band from a slow
    rotation, periodic slashes from a fast one, and a few heavy key columns (attention sinks)."""
    rng = np.random.default_rng(seed)
    pos = np.arange(seq)[:, None]
    q = rng.normal(size=(1, heads, seq, dim)) * 0.4
    k = rng.normal(size=(1, heads, seq, dim)) * 0.4
    for h in range(heads):
        for f, (omega, amp) in enumerate([(0.004 * (h + 1), 2.0), (2 * np.pi / (40 + 17 * h), 1.2)]):
            ang = omega * pos
            q[0, h, :, 2 * f:2 * f + 2] += amp * np.concatenate([np.cos(ang), np.sin(ang)], 1)
            k[0, h, :, 2 * f:2 * f + 2] += amp * np.concatenate([np.cos(ang), np.sin(ang)], 1)
        heavy = np.concatenate([[0, 1], rng.choice(seq, 3, replace=False)])
        q[0, h, :, 6] += 1.5
        k[0, h, heavy, 6] += 3.0
    return jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)


def _mask_panels(axes_block, axes_token, mask, title: str, head: int = 0) -> None:
    bm = np.asarray(mask.block_map)
    bm = bm[0, min(head, bm.shape[1] - 1)]
    tok = np.asarray(mask.to_dense())[0, min(head, mask.to_dense().shape[1] - 1)]
    axes_block.imshow(bm, cmap=BLOCK_CMAP, vmin=0, vmax=2, interpolation="nearest")
    axes_block.set_title(f"{title}\nblocks {bm.shape[0]}x{bm.shape[1]}, "
                         f"fetched {float(np.mean(bm > 0)):.2f}")
    axes_token.imshow(tok, cmap=KEEP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    axes_token.set_title(f"tokens {tok.shape[0]}x{tok.shape[1]}, kept {float(np.mean(tok)):.2f}")
    for ax in (axes_block, axes_token):
        ax.set_xticks([])
        ax.set_yticks([])


def _pattern_figure(name: str, masks: list[tuple[str, object]]) -> None:
    fig, axes = plt.subplots(2, len(masks), figsize=(2.15 * len(masks), 4.9), squeeze=False)
    for j, (title, mask) in enumerate(masks):
        _mask_panels(axes[0, j], axes[1, j], mask, title)
    axes[0, 0].set_ylabel("block map\n(white empty, light partial, dark full)")
    axes[1, 0].set_ylabel("token map (query x key)")
    _save(fig, name)


def fig_attention_static() -> None:
    """Static masks: causal, sliding window, sink + window, chunked, global band."""
    from sparsejax import attention as A

    L, bs = 256, 32
    kw = {"block_q": bs, "block_kv": bs}
    _pattern_figure("attention_static", [
        ("causal_mask", A.causal_mask(L, **kw)),
        ("sliding_window_mask (64, 0)", A.sliding_window_mask(L, window=(63, 0), **kw)),
        ("sink_window_mask (16, 48)", A.sink_window_mask(L, sink=16, window=48, **kw)),
        ("chunked_causal_mask (64)", A.chunked_causal_mask(L, chunk=64, **kw)),
        ("global_band_mask (32, 16)", A.global_band_mask(L, band=32, num_global=16, **kw)),
    ])


def fig_attention_prefill() -> None:
    """Dynamic prefill patterns on structured q, k: MoA, SparseD, vertical-slash, FlexPrefill,
    block top-k (head 0 of each)."""
    from sparsejax.attention import prefill
    from sparsejax.attention.moa import MoARule

    L, H = 512, 2
    q, k = _structured_qk(H, L)
    rule = MoARule(block_size=32, max_new_tokens=0, sink_size=32, minimum_cache_size=64,
                   split_size=32)
    masks = [
        ("MoA (alpha 96, beta 0.2)", prefill.moa_mask([96.0, 64.0], [0.2, 0.1], L, rule=rule)),
        ("SparseD (rho 0.3, gen 128)",
         prefill.sparsed_mask(q, k, new_generation=128, block_size=32, rho=0.3)),
        ("vertical-slash (32 / 32)",
         prefill.vertical_slash_mask(q, k, vertical_size=32, slash_size=32, last_q=64,
                                     block_size=32)),
        ("FlexPrefill (alpha 0.65)",
         prefill.flexprefill_mask(q, k, alpha=0.65, approximation_size=64, min_budget=16,
                                  block_size=32)),
        ("block top-k (bs 32, k 4)", prefill.block_topk_mask(q, k, block_size=32, top_k=4)),
    ]
    _pattern_figure("attention_prefill", masks)


def fig_attention_decode() -> None:
    """Decode-time keep sets over a 512-token KV cache: MoA, Quest, SnapKV, Ada-SnapKV."""
    from sparsejax.attention import decode

    L, H = 512, 4
    q, k = _structured_qk(H, L, seed=1)
    q_t = q[:, :, -1]
    keeps = [
        ("MoA keep (sink + local)",
         decode.moa_keep([32.0, 48.0, 96.0, 128.0], [0.0, 0.1, 0.2, 0.3], L, L)),
        ("Quest (page 16, budget 128)", decode.quest_keep(q_t, k, page_size=16, token_budget=128)),
        ("SnapKV (budget 128)",
         decode.snapkv_keep(q, k, token_budget=128, window=32, kernel_size=7, local_window=16)),
        ("Ada-SnapKV (budget 128)",
         decode.ada_snapkv_keep(q, k, token_budget=128, window=32, kernel_size=7,
                                local_window=16)),
    ]
    fig, axes = plt.subplots(len(keeps), 1, figsize=(8.4, 0.9 * len(keeps) + 0.8))
    for ax, (title, keep) in zip(axes, keeps):
        kp = np.asarray(keep)[0]
        ax.imshow(kp, cmap=KEEP_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{title}: kept {kp.sum(-1).tolist()} of {kp.shape[-1]} per head", loc="left")
        ax.set_yticks(range(kp.shape[0]))
        ax.set_ylabel("head")
    axes[-1].set_xlabel("KV-cache position")
    _save(fig, "attention_decode")


# -- training on digits ------------------------------------------------------------------------

def _digits():
    from sparsejax.demo.context import load_digits_split

    return [jnp.asarray(a) for a in load_digits_split()]


def fig_training_curves() -> None:
    """Test accuracy and kernel sparsity over 600 Adam steps: dense, gradual, RigL, SR-STE."""
    from sparsejax.demo import training as T

    data = _digits()
    steps = 600
    runs = [T.train_method(name, *data, steps=steps, key=jax.random.key(0), eval_every=30)
            for name in T.METHODS]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    for r in runs:
        xs = [c["step"] for c in r["curve"]]
        a.plot(xs, [c["accuracy"] for c in r["curve"]], label=r["method"])
        b.plot(xs, [c["sparsity"] for c in r["curve"]], label=r["method"])
    a.set_ylim(0.7, 1.0)
    a.set_xlabel("Adam step")
    a.set_ylabel("test accuracy (deployed weights)")
    b.set_xlabel("Adam step")
    b.set_ylabel("kernel sparsity (exact zeros)")
    a.legend(fontsize=6.5)
    a.set_title("digits MLP 64-256-256-10, same init")
    b.set_title("sparsity of the deployed kernels")
    _save(fig, "training_curves")


def fig_ssvi_reliability() -> None:
    """Reliability diagram of dense mean-field VI and SSVI at 10% density on digits."""
    from sparsejax.bayes import expected_calibration_error
    from sparsejax.demo import ssvi

    x_tr, y_tr, x_te, y_te = _digits()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    edges = np.linspace(0, 1, 11)
    for name, sparsity, marker in (("dense VI", 0.0, "o-"), ("SSVI 10%", 0.9, "s-")):
        k_train, k_eval = jax.random.split(jax.random.key(0))
        post = ssvi.train_bnn(k_train, x_tr, y_tr, sparsity=sparsity, steps=600)["posterior"]
        probs = ssvi.evaluate_bnn(k_eval, post, x_te, y_te)["probs"]
        conf = np.asarray(probs.max(-1))
        right = np.asarray(probs.argmax(-1) == y_te)
        idx = np.clip(np.digitize(conf, edges) - 1, 0, 9)
        xs = [conf[idx == b].mean() for b in range(10) if np.any(idx == b)]
        ys = [right[idx == b].mean() for b in range(10) if np.any(idx == b)]
        ece = float(expected_calibration_error(probs, y_te, bins=15))
        ax.plot(xs, ys, marker, ms=4, label=f"{name}: acc {right.mean():.3f}, ECE {ece:.3f}")
    ax.set_xlabel("confidence (max predictive probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("digits MLP 64-256-256-10, 600 steps,\n32-sample MC predictive, 10 bins")
    ax.legend(fontsize=6.5)
    _save(fig, "ssvi_reliability")


def _dense_mlp(steps: int = 800):
    from sparsejax.demo.context import init_mlp, train

    x_tr, y_tr, x_te, y_te = _digits()
    k_init, k_train = jax.random.split(jax.random.key(0))
    params = train(init_mlp(k_init), x_tr, y_tr, steps=steps, key=k_train, progress=False)
    return params, (x_tr, y_tr, x_te, y_te)


def fig_sae_fvu_l0() -> None:
    """SAE FVU against L0 (TopK k = 2 .. 64) on the digits MLP's last hidden activations."""
    from sparsejax.demo.context import mlp_apply
    from sparsejax.dictionary import sae as S

    params, (x_tr, _, x_te, _) = _dense_mlp()
    _, h_tr = mlp_apply(params, x_tr, return_hidden=True)
    _, h_te = mlp_apply(params, x_te, return_hidden=True)
    d_in = h_tr.shape[-1]
    points = []
    for k in (2, 4, 8, 16, 32, 64):
        cfg = S.SAEConfig(d_in, 2 * d_in, activation="topk", k=k)
        res = S.train_sae(jax.random.key(k), h_tr, cfg, steps=300, batch_size=128,
                          learning_rate=1e-3)
        recon, codes = S.forward(res.params, h_te, cfg)
        points.append((float(S.l0(codes)), float(S.fvu(h_te, recon))))
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.plot(*zip(*points), "o-")
    for (l0, f), k in zip(points, (2, 4, 8, 16, 32, 64)):
        ax.annotate(f"k={k}", (l0, f), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L0 (active latents per token, test split)")
    ax.set_ylabel("FVU (test split)")
    ax.set_title(f"TopK SAEs {d_in} -> {2 * d_in}, 300 Adam steps each,\n"
                 "on the digits MLP's last hidden layer")
    _save(fig, "sae_fvu_l0")


def fig_moe_load() -> None:
    """Expert load of the demo's top-2-of-8 MoE layer with and without the balancing loss."""
    import optax

    from sparsejax.demo import moe

    x_tr, y_tr, x_te, _ = _digits()
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    width = 0.4
    for i, coef in enumerate((0.0, 0.01)):
        params = moe.init(jax.random.key(0))
        opt = optax.adam(1e-3)
        state = opt.init(params)

        @jax.jit
        def step(params, state, xb, yb, coef=coef, opt=opt):
            def loss_fn(p):
                logits, aux = moe.apply(p, xb)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
                return ce + coef * aux.load_balancing_loss + 1e-3 * aux.router_z_loss

            grads = jax.grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        idx = jax.random.randint(jax.random.key(1), (400, 128), 0, x_tr.shape[0])
        for t in range(400):
            params, state = step(params, state, x_tr[idx[t]], y_tr[idx[t]])
        _, aux = jax.jit(moe.apply)(params, x_te)
        load = np.asarray(aux.expert_load)
        ax.bar(np.arange(len(load)) + (i - 0.5) * width, load, width,
               label=f"balancing loss x{coef}: dropped {float(aux.dropped_fraction):.3f}")
    cap = moe.CONFIG.capacity_factor * x_te.shape[0] * moe.CONFIG.k / moe.CONFIG.num_experts
    ax.axhline(cap, color="gray", ls=":", label=f"capacity ({moe.CONFIG.capacity_factor} x even)")
    ax.set_ylim(0, 1.5 * cap)
    ax.set_xlabel("expert")
    ax.set_ylabel("test tokens routed (top-2)")
    ax.set_title("top-2 of 8 experts (256-64-256) in the digits MLP,\n400 Adam steps")
    ax.legend(fontsize=6.5, loc="upper left", ncol=2)
    _save(fig, "moe_load")


def fig_oneshot_fidelity() -> None:
    """Embedding fidelity vs sparsity of one-shot pruning per method (MiniLM when installed,
    else the digits MLP's test accuracy)."""
    from sparsejax import models
    from sparsejax.oneshot import prune_model

    sparsities = (0.3, 0.5, 0.7)
    methods = ("magnitude", "wanda", "sparsegpt", "dsnot")
    fig, ax = plt.subplots(figsize=(4.4, 3.2))
    if models.available():
        model = models.load_minilm()
        cal, held = models.split_sentences(models.docstring_sentences(), seed=0)
        cal, held = cal[:32], held[:64]
        batches = [model.tokenizer(cal[i:i + 32], pad_to_multiple_of=32)
                   for i in range(0, len(cal), 32)]

        def forward(p, batch, tap):
            return models.embed(p, *batch, model.config, tap)

        dense = model(held)
        groups = models.layer_groups(model.config)
        for method in methods:
            ys = []
            for s in sparsities:
                pruned, _ = prune_model(model.params, forward, batches, method, sparsity=s,
                                        groups=groups, axis=0)
                ys.append(models.fidelity(dense, model(held, params=pruned))[0])
                print(f"  {method} {s}: cosine {ys[-1]:.3f}", flush=True)
            ax.plot(sparsities, ys, "o-", label=method)
        ax.set_ylabel("mean cosine, pruned vs dense embedding")
        ax.set_title("all-MiniLM-L6-v2, 36 linear layers, 32 calibration /\n"
                     "64 held-out stdlib docstring sentences")
    else:  # pragma: no cover - without the MiniLM weights
        from sparsejax.demo.context import accuracy, mlp_apply

        params, (x_tr, _, x_te, y_te) = _dense_mlp()
        layer_names = sorted(params)

        def forward(p, batch, tap):
            h = batch
            for i, name in enumerate(layer_names):
                h = tap(f"{name}/kernel", h) @ p[name]["kernel"] + p[name]["bias"]
                if i < len(layer_names) - 1:
                    h = jax.nn.relu(h)
            return h

        batches = [x_tr[i:i + 256] for i in range(0, 1024, 256)]
        for method in methods:
            ys = []
            for s in sparsities:
                pruned, _ = prune_model(params, forward, batches, method, sparsity=s, axis=0)
                ys.append(accuracy(mlp_apply, pruned, x_te, y_te))
            ax.plot(sparsities, ys, "o-", label=method)
        ax.set_ylabel("test accuracy")
        ax.set_title("digits MLP 64-256-256-10 (MiniLM not installed)")
    ax.set_xlabel("unstructured sparsity per layer")
    ax.legend(fontsize=6.5)
    _save(fig, "oneshot_fidelity")


def main(argv: list[str] | None = None) -> None:
    figures = {n[4:]: f for n, f in globals().items() if n.startswith("fig_")}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"figures to draw (default all): {sorted(figures)}")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    args = parser.parse_args(argv)
    if args.list:
        for n, f in figures.items():
            print(f"{n}: {f.__doc__.splitlines()[0]}")
        return
    unknown = sorted(set(args.names) - set(figures))
    if unknown:
        sys.exit(f"unknown figure(s) {unknown}; known: {sorted(figures)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for n in args.names or figures:
        t0 = time.perf_counter()
        print(f"{n}:")
        figures[n]()
        print(f"  {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

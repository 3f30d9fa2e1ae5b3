"""N:M in the backward pass: transposable masks, BDWP / transposable layers, CAST vs SR-STE.

Sections (``--sections`` picks a subset), JSON to ``--out`` and printed ratios:

* ``masks``: `sparsejax.masks.nm_transposable` 2:4 on a 4096 x 4096 weight under ``jit``
  (goal < 100 ms) next to the plain `sparsejax.masks.nm`; exactness of the 2:4 enumeration
  against scipy's ``milp`` on ``--blocks`` random 4 x 4 blocks (max objective gap, both axes
  checked); the Sinkhorn solver's kept-|W| ratio to the exact optimum at 4:8.
* ``layer``: forward+backward of ``x @ W`` (batch 256, ``--width`` square, 2:4): dense, an N:M
  layer with a forward-only mask (`sparsejax.ops.dense_nm_matmul`; its backward is XLA's
  transpose of the gather) and with a transposable mask
  (`sparsejax.ops.dense_transposable_nm_matmul`, backward ``g @ W^T`` as an N:M product).
* ``quality``: the digits MLP (64-256-256-10) trained ``--steps`` steps from the same init:
  dense Adam, 2:4 SR-STE (Adam, decay 2e-4, masked straight-through forward) and 2:4 CAST
  (`sparsejax.training.adams` on the dense forward: the decay shrinks the weights outside the
  mask); test accuracy after the hard projection, the pruned-to-kept |W| mass before it, and the
  relative change of the training loss from each method's own training forward to the projected
  weights.
* ``transformer``: a tiny causal character-level transformer (``--lm-layers`` blocks, width
  ``--lm-width``, 4 heads, context 64) trained ``--lm-steps`` Adam steps on the text of this
  repository's ``docs/*.md`` (the last 10% held out), every block kernel at 2:4 along ``in``
  (embeddings and the output head dense): dense; SR-STE; SR-STE on transposable masks
  (`sparsejax.masks.nm_transposable`, N:M along both axes); BDWP (`sparsejax.training.bdwp_matmul`:
  forward N:M along ``in``, input gradient N:M along ``out``); CAST (`sparsejax.training.adams` on
  the dense forward, then `sparsejax.training.project`). Held-out cross-entropy (bits per
  character) of each method's final sparse weights, and wall time.

Run from the repository root: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
benchmarks/nm_training.py``. The CPU is shared; state the load (``uptime``) with any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _timing import median_time  # noqa: E402

import sparsejax as sj  # noqa: E402
from sparsejax import masks, ops  # noqa: E402
from sparsejax import training as T  # noqa: E402
from sparsejax.formats import NMSparse  # noqa: E402


def lp_optimum(blocks, n):
    from scipy import sparse
    from scipy.optimize import LinearConstraint, milp

    b, m, _ = blocks.shape
    var = np.arange(b * m * m).reshape(b, m, m)
    cons = np.concatenate([var.reshape(-1, m), var.transpose(0, 2, 1).reshape(-1, m)])
    a = sparse.csr_matrix((np.ones(cons.size), (np.repeat(np.arange(len(cons)), m), cons.ravel())),
                          shape=(len(cons), var.size))
    res = milp(-blocks.ravel().astype(np.float64), constraints=LinearConstraint(a, n, n),
               integrality=np.ones(var.size), bounds=(0, 1))
    return np.einsum("bij,bij->b", res.x.reshape(b, m, m), blocks)


def to_blocks(x, m):
    r, c = x.shape
    return x.reshape(r // m, m, c // m, m).transpose(0, 2, 1, 3).reshape(-1, m, m)


def run_masks(args):
    print("== masks ==")
    x = jax.random.normal(jax.random.PRNGKey(0), (4096, 4096))
    t_tr = median_time(jax.jit(lambda s: masks.nm_transposable(s, 2, 4)), x, repeats=args.repeats)
    t_nm = median_time(jax.jit(lambda s: masks.nm(s, 2, 4, axis=0)), x, repeats=args.repeats)
    print(f"  4096^2 transposable 2:4 {t_tr * 1e3:.1f} ms (goal < 100 ms); plain 2:4 "
          f"{t_nm * 1e3:.1f} ms; ratio {t_tr / t_nm:.2f}")
    side = 4 * int(np.ceil(np.sqrt(args.blocks)))
    rng = np.random.default_rng(0)
    s = rng.standard_normal((side, side)).astype(np.float32)
    mask = np.asarray(masks.nm_transposable(jnp.asarray(s), 2, 4))
    blocks = to_blocks(s, 4).astype(np.float64)
    got = np.einsum("bij,bij->b", to_blocks(mask, 4), blocks)
    gap = float(np.max(np.abs(got - lp_optimum(blocks, 2))))
    both = bool(masks.satisfies_nm(mask, 2, 4, axis=0)) and bool(masks.satisfies_nm(mask, 2, 4,
                                                                                      axis=1))
    print(f"  2:4 enumeration vs milp on {len(blocks)} blocks: max |gap| {gap:.2e}, both axes "
          f"2:4: {both}")
    w = np.abs(rng.standard_normal((256, 256))).astype(np.float32)
    exact = np.asarray(masks.nm_transposable(jnp.asarray(w), 4, 8, method="exact"))
    approx = np.asarray(masks.nm_transposable(jnp.asarray(w), 4, 8, method="sinkhorn"))
    ratio = float((w * approx).sum() / (w * exact).sum())
    print(f"  4:8 Sinkhorn kept |W| / exact optimum on 256^2 |N(0,1)|: {ratio:.4f} (goal >= 0.98)")
    return {"transposable_2_4_4096_ms": t_tr * 1e3, "nm_2_4_4096_ms": t_nm * 1e3,
            "enumeration_blocks": len(blocks), "enumeration_max_gap": gap,
            "both_axes_2_4": both, "sinkhorn_4_8_ratio": ratio}


def layer_section(width, batch=256, repeats=10, dtype=jnp.float32, mask_method="auto"):
    """Forward+backward of ``x @ W`` at 2:4 (``[width, width]``, ``dtype``): dense, forward-only
    N:M and transposable N:M (its mask by ``mask_method``); each sparse gradient checked against
    the dense masked one."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    w = (jax.random.normal(k1, (width, width)) / np.sqrt(width)).astype(dtype)
    x = jax.random.normal(k2, (batch, width)).astype(dtype)
    fwd_only = NMSparse.from_dense(w, 2, 4, axis=0)
    trans = NMSparse.from_dense(w, 2, 4, axis=0, mask=masks.nm_transposable(
        jnp.abs(w).astype(jnp.float32), 2, 4, method=mask_method))

    def grad_of(f):
        return jax.jit(jax.grad(lambda v, x: jnp.sum(f(x, v).astype(jnp.float32) ** 2),
                                argnums=(0, 1)))

    dense = grad_of(lambda x, v: x @ v)
    rows = {"width": width, "batch": batch, "dtype": jnp.dtype(dtype).name, "failures": []}
    t_d = median_time(dense, w, x, repeats=repeats)
    rows["dense_ms"] = t_d * 1e3
    for name, fmt, op in (("forward_only_nm", fwd_only, ops.dense_nm_matmul),
                          ("transposable_nm", trans, ops.dense_transposable_nm_matmul)):
        f = grad_of(lambda x, v, fmt=fmt, op=op: op(x, fmt.replace(values=v)))
        t = median_time(f, fmt.values, x, repeats=repeats)
        gv, gx = f(fmt.values, x)
        ref_w, ref_x = dense(fmt.to_dense(), x)
        got = fmt.replace(values=gv).to_dense().astype(jnp.float32)
        want = jnp.where(fmt.mask(), ref_w, 0).astype(jnp.float32)
        err = float(jnp.max(jnp.abs(got - want)) / (jnp.max(jnp.abs(want)) + 1e-30))
        err = max(err, float(jnp.max(jnp.abs(gx - ref_x).astype(jnp.float32))
                             / (jnp.max(jnp.abs(ref_x)).astype(jnp.float32) + 1e-30)))
        rows[f"{name}_ms"], rows[f"{name}_ratio"], rows[f"{name}_rel_err"] = (
            t * 1e3, t / t_d, err)
        if not err < (2e-2 if jnp.dtype(dtype).itemsize < 4 else 1e-4):
            rows["failures"].append(f"{name}: gradient rel err {err:.2e}")
    return rows


def accel_section(width, batch, repeats, dtype=jnp.bfloat16, mask_method="auto"):
    """`layer_section` on the accelerator (``benchmarks/device_check.py``)."""
    print(f"== N:M layer fwd+bwd on {jax.default_backend()} ({width}^2, batch {batch}, "
          f"{jnp.dtype(dtype).name}) ==", flush=True)
    r = layer_section(width, batch, repeats, dtype, mask_method)
    print(f"  dense {r['dense_ms']:.3f} ms; forward-only N:M {r['forward_only_nm_ms']:.3f} ms "
          f"({r['forward_only_nm_ratio']:.2f}x); transposable N:M {r['transposable_nm_ms']:.3f} "
          f"ms ({r['transposable_nm_ratio']:.2f}x)", flush=True)
    return r


def run_layer(args):
    print("== layer forward+backward (batch 256, 2:4) ==")
    r = layer_section(args.width, 256, args.repeats)
    print(f"  dense {r['dense_ms']:.2f} ms; forward-only N:M {r['forward_only_nm_ms']:.2f} ms "
          f"({r['forward_only_nm_ratio']:.2f}x); transposable N:M {r['transposable_nm_ms']:.2f} "
          f"ms ({r['transposable_nm_ratio']:.2f}x); gradient rel err "
          f"{r['forward_only_nm_rel_err']:.1e} / {r['transposable_nm_rel_err']:.1e}")
    return r


def run_quality(args):
    from sparsejax.demo.context import init_mlp, load_digits_split, mlp_apply

    print(f"== digits MLP, {args.steps} steps, 2:4 ==")
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in load_digits_split(0))
    kernels = "*kernel"
    nm_masks = lambda p: sj.compute_masks(p, "nm", n=2, m=4, axis=0, where=kernels)  # noqa: E731

    def loss_of(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, x), y).mean()

    methods = {
        "dense": (optax.adam(1e-3), lambda p: p),
        "SR-STE 2:4": (optax.adam(1e-3), lambda p: T.sr_ste(p, nm_masks, 2e-4)),
        # CAST trains the dense weights (AdamS shrinks those outside the mask), projects at the end
        "CAST 2:4": (T.adams(args.cast_lr, where=kernels, decay=T.cast_decay(
            args.cast_decay, args.steps // 2)), lambda p: p),
    }
    rows = []
    for name, (tx, forward) in methods.items():
        accs, masses, changes = [], [], []
        for seed in range(args.seeds):
            params = init_mlp(jax.random.PRNGKey(seed))
            idx = jax.random.randint(jax.random.PRNGKey(100 + seed), (args.steps, 128), 0,
                                     x_tr.shape[0])

            @jax.jit
            def train(params, idx, tx=tx, forward=forward):
                def step(carry, i):
                    p, s = carry
                    g = jax.grad(lambda q: loss_of(forward(q), x_tr[i], y_tr[i]))(p)
                    u, s = tx.update(g, s, p)
                    return (optax.apply_updates(p, u), s), None

                (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
                return p

            params = train(params, idx)
            if name == "dense":
                accs.append(float(jnp.mean(jnp.argmax(mlp_apply(params, x_te), -1) == y_te)))
                continue
            projected, pm = T.project(params, where=kernels)
            pairs = [(params[k]["kernel"], pm[k]["kernel"]) for k in params]
            kept = sum(float(jnp.sum(jnp.where(mk, jnp.abs(w), 0))) for w, mk in pairs)
            pruned = sum(float(jnp.sum(jnp.where(mk, 0, jnp.abs(w)))) for w, mk in pairs)
            before = float(loss_of(forward(params), x_tr, y_tr))  # what the method trains
            after = float(loss_of(projected, x_tr, y_tr))
            accs.append(float(jnp.mean(jnp.argmax(mlp_apply(projected, x_te), -1) == y_te)))
            masses.append(pruned / kept)
            changes.append((after - before) / before)
        row = {"method": name, "accuracy_mean": float(np.mean(accs)), "accuracy_per_seed": accs}
        if masses:
            row |= {"pruned_to_kept_mass": float(np.mean(masses)),
                    "projection_loss_change": float(np.mean(changes))}
        rows.append(row)
        extra = (f"; pruned/kept |W| {row['pruned_to_kept_mass']:.3f}, projection changes the "
                 f"train loss by {100 * row['projection_loss_change']:+.1f}%") if masses else ""
        print(f"  {name:12s} accuracy {row['accuracy_mean']:.4f}{extra}", flush=True)
    return rows


def _lm_data(context):
    text = "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    vocab = sorted(set(text))
    ids = np.asarray([vocab.index(c) for c in text], np.int32)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(vocab)


def _lm_init(key, vocab, width, layers, context):
    ks = iter(jax.random.split(key, 3 + 4 * layers))
    nrm = lambda shape, fan: jax.random.normal(next(ks), shape) / np.sqrt(fan)  # noqa: E731
    p = {"embed": nrm((vocab, width), 50.0), "pos": nrm((context, width), 50.0),
         "head": nrm((width, vocab), width)}
    for i in range(layers):
        p[f"block{i}"] = {name: {"kernel": nrm((k, n), k)} for name, (k, n) in {
            "qkv": (width, 3 * width), "proj": (width, width), "up": (width, 4 * width),
            "down": (4 * width, width)}.items()}
    return p


def _lm_apply(p, tokens, mm=jnp.matmul, heads=4):
    """Logits ``[B, T, vocab]``; ``mm(x, kernel)`` runs every block product."""
    norm = lambda x: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)  # noqa: E731
    b, t = tokens.shape
    x = p["embed"][tokens] + p["pos"][:t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for i in range(sum(k.startswith("block") for k in p)):
        blk = p[f"block{i}"]
        q, k, v = jnp.split(mm(norm(x), blk["qkv"]["kernel"]), 3, axis=-1)
        q, k, v = (a.reshape(b, t, heads, -1) for a in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
        x = x + mm(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, -1),
                   blk["proj"]["kernel"])
        x = x + mm(jax.nn.gelu(mm(norm(x), blk["up"]["kernel"])), blk["down"]["kernel"])
    return norm(x) @ p["head"]


def run_transformer(args):
    ctx, batch = 64, 32
    train_ids, val_ids, vocab = _lm_data(ctx)
    print(f"== tiny char transformer ({args.lm_layers} x {args.lm_width}, {args.lm_steps} steps, "
          f"{len(train_ids)} train / {len(val_ids)} held-out chars, vocab {vocab}), 2:4 ==")
    kernels = "*kernel"
    nm_masks = lambda p: sj.compute_masks(p, "nm", n=2, m=4, axis=0, where=kernels)  # noqa: E731
    tr_masks = lambda p: sj.compute_masks(p, "nm_transposable", n=2, m=4,  # noqa: E731
                                          where=kernels)
    starts = np.arange(0, len(val_ids) - ctx - 1, ctx)
    val_x = jnp.asarray(np.stack([val_ids[s:s + ctx] for s in starts]))
    val_y = jnp.asarray(np.stack([val_ids[s + 1:s + ctx + 1] for s in starts]))

    def xent(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def apply_masks(p, mk):
        return jax.tree.map(lambda m, w: w if m is None else jnp.where(m, w, 0), mk, p,
                            is_leaf=lambda v: v is None)

    lr = 3e-3
    methods = {  # name: (optimizer, training forward params -> params, block matmul, final masks)
        "dense": (optax.adam(lr), lambda p: p, jnp.matmul, None),
        "SR-STE 2:4": (optax.adam(lr), lambda p: T.sr_ste(p, nm_masks, 2e-4), jnp.matmul,
                       nm_masks),
        "transposable SR-STE 2:4": (optax.adam(lr), lambda p: T.sr_ste(p, tr_masks, 2e-4),
                                    jnp.matmul, tr_masks),
        "BDWP 2:4": (optax.adam(lr), lambda p: p, lambda x, w: T.bdwp_matmul(x, w), nm_masks),
        "CAST 2:4": (T.adams(args.lm_cast_lr, where=kernels, decay=T.cast_decay(
            args.cast_decay, args.lm_steps // 2)), lambda p: p, jnp.matmul, nm_masks),
    }
    offsets = jax.random.randint(jax.random.PRNGKey(7), (args.lm_steps, batch), 0,
                                 len(train_ids) - ctx - 1)
    train_arr = jnp.asarray(train_ids)
    rows = []
    for name, (tx, forward, mm, final_masks) in methods.items():
        params = _lm_init(jax.random.PRNGKey(0), vocab, args.lm_width, args.lm_layers, ctx)

        @jax.jit
        def train(params, offsets, tx=tx, forward=forward, mm=mm):
            def step(carry, off):
                p, s = carry
                idx = off[:, None] + jnp.arange(ctx + 1)
                seq = train_arr[idx]
                loss, g = jax.value_and_grad(
                    lambda q: xent(_lm_apply(forward(q), seq[:, :-1], mm), seq[:, 1:]))(p)
                u, s = tx.update(g, s, p)
                return (optax.apply_updates(p, u), s), loss

            (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), offsets)
            return p, losses

        t0 = time.perf_counter()
        params, losses = jax.block_until_ready(train(params, offsets))
        wall = time.perf_counter() - t0
        final = params if final_masks is None else apply_masks(params, final_masks(params))
        val = float(xent(_lm_apply(final, val_x), val_y)) / np.log(2)
        row = {"method": name, "val_bits_per_char": val, "train_loss_last": float(losses[-1]),
               "wall_s": wall}
        rows.append(row)
        print(f"  {name:24s} held-out {val:.3f} bits/char (final sparse weights); last train "
              f"loss {row['train_loss_last']:.3f} nats; {wall:.1f} s incl. compile", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="masks,layer,quality,transformer")
    p.add_argument("--blocks", type=int, default=10000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--cast-lr", type=float, default=3e-4)
    p.add_argument("--lm-steps", type=int, default=300)
    p.add_argument("--lm-width", type=int, default=64)
    p.add_argument("--lm-layers", type=int, default=2)
    p.add_argument("--lm-cast-lr", type=float, default=1e-3)
    p.add_argument("--cast-decay", type=float, default=5e-2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "nm_training.json")
    args = p.parse_args()
    result = {"machine": platform.platform(), "jax": jax.__version__,
              "backend": jax.default_backend(), "load": os.getloadavg(),
              "args": vars(args) | {"out": str(args.out)}}
    runners = {"masks": run_masks, "layer": run_layer, "quality": run_quality,
               "transformer": run_transformer}
    for s in [s.strip() for s in args.sections.split(",") if s.strip()]:
        result[s] = runners[s](args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

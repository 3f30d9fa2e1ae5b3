"""Sparse fine-tuning of the real all-MiniLM-L6-v2: step time and compiled memory per method.

Full fine-tuning, LoRA (rank 2 on every linear kernel), a fixed sparse delta, SpIEL, S2FT and
DSEE (rank 1 + ``in + out`` sparse entries per kernel) at LoRA's trainable count (~0.8% of the
linear weights), and PST (weight and mask ranks 1 plus row / column scores: 1.5x that count, at a
constant 50% sparsity here), each with a trainable linear head, on the
standard-library docstring corpus labelled by module (no download). Reports, per method, the
trainable count, the optimizer state's size, the jitted step's median time and the compiled
program's memory analysis (temporaries), and with ``--train-steps N`` the test accuracy after ``N``
Adam steps.

    python benchmarks/peft.py --batch 16 --length 32 --train-steps 0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import models, peft
from sparsejax.models.corpus import STDLIB_MODULES, split_sentences
from sparsejax.peft import s2ft

RANK = 2
PST_SPARSITY = 0.5


def labelled_docstrings(n_modules: int, per_module: int) -> tuple[list[str], np.ndarray, list]:
    """First docstring sentences of the public members of stdlib modules, labelled by module."""
    texts, labels, names = [], [], []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found = []
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr, None)) if not attr.startswith("_") else None
            if doc:
                s = split_sentences(doc)[:1]
                if s and 30 <= len(s[0]) <= 200 and s[0] not in found:
                    found.append(s[0])
        if len(found) >= per_module:
            texts += found[:per_module]
            labels += [len(names)] * per_module
            names.append(name)
        if len(names) == n_modules:
            break
    return texts, np.asarray(labels, np.int32), names


def build(method: str, params: dict, config, head: jax.Array, key: jax.Array):
    """``(trainable, to_params(trainable) -> (encoder params, head), optimizer, dense_grad)``."""
    kernels = {f"layers/{i}/{n}": params["layers"][i][n]["kernel"].size
               for i in range(config.layers) for n in models.LINEARS}
    n_linear = sum(kernels.values())
    lora_count = RANK * sum(sum(params["layers"][i][n]["kernel"].shape)
                            for i in range(config.layers) for n in models.LINEARS)
    if method == "full":
        return (params, head), lambda t: t, optax.adam(1e-4), False
    if method == "lora":
        ks = iter(jax.random.split(key, len(kernels)))
        lora = [{n: (jax.random.normal(next(ks), (lp[n]["kernel"].shape[0], RANK)) * 0.01,
                     jnp.zeros((RANK, lp[n]["kernel"].shape[1]))) for n in models.LINEARS}
                for lp in params["layers"]]

        def to_params(t):
            lo, h = t
            layers = [{**lp, **{n: {**lp[n], "kernel": lp[n]["kernel"] + a @ b}
                                for n, (a, b) in lo_l.items()}}
                      for lp, lo_l in zip(params["layers"], lo)]
            return {**params, "layers": layers}, h
        return (lora, head), to_params, optax.adam(1e-3), False
    if method in ("delta", "spiel"):
        where = [f"layers/*/{n}/kernel" for n in models.LINEARS]
        delta = peft.sparse_delta(params, lora_count / n_linear, where=where, key=key)
        tx = (peft.train_delta(optax.adam(1e-3)) if method == "delta" else
              peft.spiel(optax.adam(1e-3), total_steps=1000, reselect_every=20,
                         accumulate_steps=5))
        return (delta, head), (lambda t: (peft.apply(params, t[0]), t[1])), tx, True
    if method == "dsee":  # the GreBsmo split at rank_steps=20 (rank <= 96 < 384 / 5 + 1)
        where = [f"layers/*/{n}/kernel" for n in models.LINEARS]
        delta = peft.dsee.init(params, rank=1, num_sparse=sum, key=key, where=where,
                               rank_steps=20)
        return ((delta, head), (lambda t: (peft.dsee.apply(params, t[0]), t[1])),
                peft.dsee.train(optax.adam(1e-3)), True)
    if method == "pst":
        where = [f"layers/*/{n}/kernel" for n in models.LINEARS]
        factors = peft.pst.init(params, key=key, where=where, weight_rank=1, mask_rank=1)
        return ((factors, head), (lambda t: (peft.pst.apply(params, t[0], PST_SPARSITY), t[1])),
                optax.adam(1e-3), False)
    if method == "s2ft":
        heads = config.heads * config.layers
        sel = s2ft.select_bert(params, config, v_ratio=2 / heads, o_ratio=2 / heads,
                               u_ratio=45 / (config.intermediate * config.layers),
                               d_ratio=45 / (config.intermediate * config.layers),
                               criterion="random", key=key)
        s2p = s2ft.s2ft_bert(params, config, sel)
        return ((s2ft.values(s2p), head), lambda t: (s2ft.with_values(s2p, t[0]), t[1]),
                optax.adam(1e-3), False)
    raise ValueError(method)


def make_step(method, trainable, to_params, tx, dense_grad, config):
    """The jitted step and its optimizer (the sparse deltas' transform and Adam on the head)."""
    head_tx = optax.adam(1e-3)

    def loss_fn(p_and_h, ids, mask, y):
        p, h = p_and_h
        logits = models.embed(p, ids, mask, config) @ h
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    if dense_grad:
        delta_tx = tx

        def init(t):
            return delta_tx.init(t[0]), head_tx.init(t[1])

        def update(grads, state, t):
            u0, s0 = delta_tx.update(grads[0], state[0], t[0])
            u1, s1 = head_tx.update(grads[1], state[1], t[1])
            return (u0, u1), (s0, s1)

        tx = optax.GradientTransformation(init, update)

    def step(trainable, state, ids, mask, y):
        if dense_grad:  # the gradient at base + delta (SpIEL regrows from it)
            grads = jax.grad(loss_fn)(to_params(trainable), ids, mask, y)
        else:
            grads = jax.grad(lambda t: loss_fn(to_params(t), ids, mask, y))(trainable)
        updates, state = tx.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state

    return jax.jit(step), tx


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default="full,lora,delta,spiel,s2ft,dsee,pst")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=0)
    args = ap.parse_args(argv)
    model = models.load_minilm()
    params, config = model.params, model.config
    texts, labels, names = labelled_docstrings(8, 40)
    ids, mask = model.tokenizer(texts, pad_to_multiple_of=args.length)
    ids, mask = np.asarray(ids)[:, :args.length], np.asarray(mask)[:, :args.length]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    test, train = order[: len(order) // 4], order[len(order) // 4:]
    head0 = jnp.zeros((config.hidden, len(names)))
    print(f"{len(texts)} docstrings, {len(names)} modules; batch {args.batch}, length "
          f"{args.length}; device {jax.devices()[0].platform}")
    print(f"{'method':8} {'trainable':>10} {'opt state':>10} {'step ms':>9} {'temp MiB':>9} "
          f"{'acc':>6}")
    for method in args.methods.split(","):
        trainable, to_params, tx, dense_grad = build(method, params, config, head0,
                                                     jax.random.key(0))
        step, tx = make_step(method, trainable, to_params, tx, dense_grad, config)
        state = tx.init(trainable)
        b = train[: args.batch]
        batch = (jnp.asarray(ids[b]), jnp.asarray(mask[b]), jnp.asarray(labels[b]))
        compiled = step.lower(trainable, state, *batch).compile()
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
        if method in ("delta", "spiel"):
            count = peft.delta_size(trainable[0]) + trainable[1].size
        elif method == "dsee":
            count = peft.dsee.trainable_count(trainable[0]) + trainable[1].size
        else:
            count = sum(x.size for x in jax.tree.leaves(trainable))
        opt = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim > 0)
        out = compiled(trainable, state, *batch)
        jax.block_until_ready(out)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(trainable, state, *batch))
            times.append(time.perf_counter() - t0)
        acc = float("nan")
        if args.train_steps:
            for _ in range(args.train_steps):
                b = rng.choice(train, args.batch, replace=False)
                trainable, state = compiled(trainable, state, jnp.asarray(ids[b]),
                                            jnp.asarray(mask[b]), jnp.asarray(labels[b]))
            p, h = to_params(trainable)
            emb = models.embed(p, jnp.asarray(ids[test]), jnp.asarray(mask[test]), config)
            acc = float(jnp.mean(jnp.argmax(emb @ h, -1) == labels[test]))
        print(f"{method:8} {count:>10} {opt:>10} {np.median(times) * 1e3:>9.1f} {temp:>9.1f} "
              f"{acc:>6.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Accuracy vs density of each sparse-attention pattern on the synthetic needle-retrieval task.

Every method selects its mask from the task's ``q``/``k`` (or is static); the answer is decoded from
the last query's attention output over the kept keys. Density is the kept fraction of the causal
(query, key) pairs for prefill patterns (SparseD: of all pairs, it is bidirectional) and the kept
fraction of the KV cache for the decoding methods (Quest, SnapKV, Ada-SnapKV). Vertical-slash
and FlexPrefill densities (MInference kernel coverage) are averaged over the first 8 instances.
The reference defaults of each method are included in its sweep (marked ``default``). Selection
time is the median over ``--repeats`` runs after one warm-up (the CPU may be shared: rough).
The last rows time `sparsejax.attention.decode.attend_kept` (attention over the kept KV entries
only) against dense single-query attention over the whole cache.

    python benchmarks/attention_retrieval.py --seq-len 8192 --out results/attention_retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_time

from sparsejax.attention import decode, moa, prefill
from sparsejax.attention.moa import MoARule
from sparsejax.demo import retrieval as R

PREFILL = MoARule(max_new_tokens=0)


def _timed(fn, repeats):
    out = jax.block_until_ready(fn())  # compiles; the warm-up of the timed calls
    return out, median_time(fn, repeats=repeats, warmup=False)


def _block_causal_density(blocks: np.ndarray, seq: int, bs: int) -> float:
    """Kept causal pairs / causal pairs for a block selection [..., nb, nb] AND causal."""
    nb = blocks.shape[-1]
    i = np.arange(nb * bs)
    valid = i < seq
    rows = (i[:, None] >= i[None, :]) & valid[:, None] & valid[None, :]
    counts = rows.reshape(nb, bs, nb, bs).sum((1, 3))
    lead = int(np.prod(blocks.shape[:-2]))
    return float((blocks * counts).sum() / (counts.sum() * lead))


def _vs_density(v, s, seq, max_instances=8):
    """Mean causal density over the first ``max_instances`` (batch, head) pairs (each one
    materialises an L x L token mask)."""
    dens = []
    pairs = [(b, h) for b in range(v.shape[0]) for h in range(v.shape[1])][:max_instances]
    for b, h in pairs:
        tok = prefill.vertical_slash_tokens(v[b, h], s[b, h])
        dens.append(R.causal_density(np.asarray(tok)))
    return float(np.mean(dens))


def _dense_decode(q, k, v):
    """Single-query softmax attention over the whole cache: q [B, H, D], k/v [B, H, L, D]."""
    s = jnp.einsum("bhd,bhkd->bhk", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhk,bhkd->bhd", jax.nn.softmax(s, axis=-1), v)


def run(args) -> dict:
    task = R.make_retrieval_task(
        jax.random.key(args.seed),
        batch=args.batch,
        heads=args.heads,
        seq_len=args.seq_len,
        head_dim=args.head_dim,
        num_queries=args.num_queries,
    )
    q, k, lq = task.q, task.k, args.seq_len
    last = jnp.array([lq - 1])
    rows = []

    def add(method, setting, keep, density, kind, seconds, default=False):
        acc = R.retrieval_accuracy(task, keep)
        rows.append(
            dict(
                method=method,
                setting=setting,
                default=default,
                accuracy=acc,
                density=density,
                density_kind=kind,
                select_s=seconds,
            )
        )
        print(
            f"{method:16s} {setting:28s} acc {acc:5.3f}  density {density:6.4f} ({kind})"
            f"  select {seconds * 1e3:8.1f} ms{'  [default]' if default else ''}",
            flush=True,
        )

    add("dense", "-", None, 1.0, "causal", 0.0, True)

    for beta in (0.05, 0.1, 0.25, 0.5):
        mask, t = _timed(
            lambda b=beta, h=args.heads: prefill.moa_mask([0.0] * h, [b] * h, lq, rule=PREFILL),
            args.repeats,
        )
        lay = moa.moa_blocks([0.0], [beta], lq, rule=PREFILL)
        add(
            "moa_uniform",
            f"alpha=0 beta={beta}",
            R.mask_answer_row(mask),
            _block_causal_density(lay, lq, 64),
            "causal",
            t,
        )

    # MoA search: profile the task's influence at two shorter lengths; KV density <= 0.25 at the
    # full length (and <= 0.5 at the longer profiled length)
    prof_lens = [lq // 8, lq // 4]

    def probs_fn(t):
        s = jnp.einsum("bhqd,bhkd->bhqk", t.q, t.k) / np.sqrt(t.q.shape[-1])
        n = t.q.shape[2]
        s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -jnp.inf)
        return jax.nn.softmax(s, axis=-1)

    def loss_fn(a, t):
        out = jnp.einsum("bhk,bhkd->bhd", a[:, :, -1], t.v)
        logp = jax.nn.log_softmax(out @ t.codes.T, axis=-1)
        return -jnp.take_along_axis(logp, t.label[..., None], axis=-1).sum()

    t0 = time.perf_counter()
    batches = {
        n: [
            R.make_retrieval_task(
                jax.random.key(100 + n),
                batch=2,
                heads=args.heads,
                seq_len=n,
                head_dim=args.head_dim,
                num_queries=args.num_queries,
            )
        ]
        for n in prof_lens
    }
    prof = moa.moa_profile(loss_fn, probs_fn, batches)
    # the reference grid (alpha spacing 1024 at 8k) scaled to the length
    cands = moa.moa_candidates(prof_lens, [lq], alpha_interval=max(64, lq // 8))
    found = moa.moa_search(prof, {prof_lens[-1]: 0.5, lq: 0.25}, candidates=cands)
    t_search = time.perf_counter() - t0
    mask = prefill.moa_mask(found["alphas"], found["betas"], lq, rule=PREFILL)
    lay = moa.moa_blocks(found["alphas"], found["betas"], lq, rule=PREFILL)
    add(
        "moa_searched",
        "kv budget 0.25 at L",
        R.mask_answer_row(mask),
        _block_causal_density(lay, lq, 64),
        "causal",
        t_search,
    )

    for size in (64, 128, 256, 512):
        (v, s), t = _timed(
            lambda n=size: prefill.vertical_slash_lines(q, k, vertical_size=n, slash_size=n, last_q=256),
            args.repeats,
        )
        keep = prefill.vertical_slash_tokens(v, s, rows=last)[..., 0, :]
        add(
            "vertical_slash",
            f"v={size} s={size}",
            keep,
            _vs_density(v, s, lq),
            "causal",
            t,
            size == 512,
        )

    for alpha in (0.5, 0.65, 0.8, 0.9):
        (v, s), t = _timed(lambda a=alpha: prefill.flexprefill_lines(q, k, alpha=a), args.repeats)
        keep = prefill.vertical_slash_tokens(v, s, rows=last)[..., 0, :]
        add(
            "flexprefill",
            f"alpha={alpha} min=512",
            keep,
            _vs_density(v, s, lq),
            "causal",
            t,
            alpha == 0.65,
        )

    for top_k in (8, 16, 32, 64):
        blocks, t = _timed(
            lambda n=top_k: prefill.block_topk_blocks(q, k, block_size=16, top_k=n), args.repeats
        )
        keep = jnp.repeat(blocks[:, :, -1], 16, axis=-1)[..., :lq]
        add(
            "block_topk",
            f"block=16 top_k={top_k}",
            keep,
            _block_causal_density(np.asarray(blocks), lq, 16),
            "causal",
            t,
            top_k == 64,
        )

    for rho in (0.05, 0.1, 0.3):
        blocks, t = _timed(
            lambda r=rho: prefill.sparsed_blocks(
                q, k, new_generation=args.num_queries, block_size=128, rho=r
            ),
            args.repeats,
        )
        keep = jnp.repeat(blocks[:, :, -1], 128, axis=-1)[..., :lq]
        add(
            "sparsed",
            f"block=128 rho={rho}",
            keep,
            float(np.asarray(blocks).mean()),
            "all",
            t,
            rho == 0.3,
        )

    for budget in (256, 512, 1024):
        keep, t = _timed(
            lambda n=budget: decode.quest_keep(q[:, :, -1], k, page_size=16, token_budget=n),
            args.repeats,
        )
        add(
            "quest",
            f"page=16 budget={budget}",
            keep,
            float(np.asarray(keep).mean()),
            "kv",
            t,
            budget == 1024,
        )

    for cap in (256, 512, 1024):
        keep, t = _timed(lambda n=cap: decode.snapkv_keep(q, k, token_budget=n), args.repeats)
        add("snapkv", f"capacity={cap}", keep, float(np.asarray(keep).mean()), "kv", t, cap == 1024)
        keep, t = _timed(lambda n=cap: decode.ada_snapkv_keep(q, k, token_budget=n), args.repeats)
        add(
            "ada_snapkv",
            f"capacity={cap}",
            keep,
            float(np.asarray(keep).mean()),
            "kv",
            t,
            cap == 1024,
        )

    # decode attention over the kept entries only (attend_kept) vs dense single-query attention
    qd, v = q[:, :, -1], task.v
    dense_fn = jax.jit(lambda q, k, v: _dense_decode(q, k, v))
    _, t_dense = _timed(lambda: dense_fn(qd, k, v), args.repeats)
    decode_rows = []
    for name, keep, cap in (
        ("quest budget=1024", decode.quest_keep(qd, k, token_budget=1024), 1024 + 16),
        ("snapkv capacity=1024", decode.snapkv_keep(q, k, token_budget=1024), 1024),
    ):
        fn = jax.jit(lambda q, k, v, keep, c=cap: decode.attend_kept(q, k, v, keep, token_budget=c))
        _, t = _timed(lambda f=fn, m=keep: f(qd, k, v, m), args.repeats)
        decode_rows.append(dict(setting=name, attend_kept_s=t, dense_s=t_dense, ratio=t / t_dense))
        print(f"attend_kept      {name:28s} {t * 1e3:8.2f} ms vs dense {t_dense * 1e3:8.2f} ms"
              f"  ratio {t / t_dense:5.2f}", flush=True)

    return dict(
        benchmark="attention_retrieval",
        decode_attention=decode_rows,
        config=vars(args),
        platform=dict(
            backend=jax.default_backend(),
            machine=platform.machine(),
            cpu_count=os.cpu_count(),
            jax=jax.__version__,
        ),
        moa_searched=dict(
            alphas=found["alphas"].tolist(),
            betas=found["betas"].tolist(),
            kv_density=found["density"],
        ),
        results=rows,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/attention_retrieval.json")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--num-queries", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seq_len < 2048 or args.seq_len % 64:
        p.error("--seq-len must be a multiple of 64 and >= 2048 (the reference budgets are 512+)")
    out = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

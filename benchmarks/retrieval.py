"""Exact sparse top-k search: sparsejax's inverted index vs scipy.sparse brute force.

Synthetic corpus: ``--docs`` documents over a Zipf(1) vocabulary of ``--vocab`` terms, about
``--terms`` distinct terms per document, weights uniform in (0, 3] (SPLADE-like magnitudes);
``--queries`` queries of about ``--query-terms`` terms from the same distribution. The peer is
scipy: ``Q @ D.T`` (CSR x CSC) then ``argpartition`` + sort of the top ``k`` per row. Checks that
both give the same ids (ties broken by lower id on both sides), reports the time of each, the
index bytes per posting, and writes JSON.

    python benchmarks/retrieval.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def zipf_rows(rng, n, vocab, terms, scale):
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    draws = int(terms * scale)
    ids = rng.choice(vocab, size=(n, draws), p=p).astype(np.int32)
    ids.sort(axis=1)
    dup = np.zeros_like(ids, bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
    # weights on a 1/64 grid so every dot product is exact in float32 (ids comparable exactly)
    w = rng.integers(1, 193, size=ids.shape).astype(np.float32) / 64.0
    w[dup] = 0.0
    return ids, w


def to_csr(ids, w, vocab):
    import scipy.sparse as sp

    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    keep = w.reshape(-1) != 0
    return sp.csr_matrix((w.reshape(-1)[keep], (rows[keep], ids.reshape(-1)[keep])),
                         shape=(ids.shape[0], vocab))


def scipy_topk(Q, D, k):
    """Brute force: all scores with scipy.sparse, then the top k per row (ties: lower id)."""
    S = (Q @ D.T).toarray()
    part = np.argpartition(-S, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(S, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1), S


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--terms", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--query-terms", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--query-batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from sparsejax import retrieval as R

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    d_ids, d_w = zipf_rows(rng, args.docs, args.vocab, args.terms, 1.25)
    q_ids, q_w = zipf_rows(rng, args.queries, args.vocab, args.query_terms, 1.1)
    D, Q = to_csr(d_ids, d_w, args.vocab), to_csr(q_ids, q_w, args.vocab)
    gen_s = time.perf_counter() - t

    t = time.perf_counter()
    index = R.build_index((d_ids, d_w), vocab_size=args.vocab)
    jax.block_until_ready(index.weights)
    build_s = time.perf_counter() - t
    queries = (jnp.asarray(q_ids), jnp.asarray(q_w))
    max_work = int(jnp.max(R.index._work(index, *queries)))
    max_work = -(-max_work // 4096) * 4096

    def ours():
        s, i = R.search(index, queries, args.k, max_work=max_work, query_batch=args.query_batch)
        return jax.block_until_ready((s, i))

    t = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - t
    times_ours, times_scipy = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        s_ours, i_ours = ours()
        times_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        s_ref, i_ref, S = scipy_topk(Q, D, args.k)
        times_scipy.append(time.perf_counter() - t)
    i_ours, s_ours = np.asarray(i_ours), np.asarray(s_ours)
    same_ids = bool((i_ours == i_ref).all())
    result = {
        "docs": args.docs, "vocab": args.vocab, "queries": args.queries, "k": args.k,
        "postings": index.num_postings,
        "mean_terms_per_doc": index.num_postings / args.docs,
        "mean_terms_per_query": float((q_w != 0).sum(1).mean()),
        "max_work_per_query": max_work,
        "bytes_per_posting": index.bytes_per_posting,
        "index_bytes": index.nbytes,
        "scipy_csr_bytes_per_posting": D.data.itemsize + D.indices.itemsize,
        "same_ids_as_scipy": same_ids,
        "max_abs_score_diff": float(np.abs(s_ours - s_ref).max()),
        "ours_s": min(times_ours), "scipy_s": min(times_scipy),
        "speedup_vs_scipy": min(times_scipy) / min(times_ours),
        "compile_s": compile_s, "build_s": build_s, "generate_s": gen_s,
        "backend": jax.default_backend(), "load": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if not same_ids:
        raise SystemExit("ids differ from scipy brute force")
    return result


if __name__ == "__main__":
    main()

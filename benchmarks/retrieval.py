"""Exact sparse top-k search: sparsejax's inverted index vs scipy.sparse brute force.

Synthetic corpus: ``--docs`` documents over a Zipf(1) vocabulary of ``--vocab`` terms, about
``--terms`` distinct terms per document, weights uniform in (0, 3] (SPLADE-like magnitudes);
``--queries`` queries of about ``--query-terms`` terms from the same distribution. The peer is
scipy: ``Q @ D.T`` (CSR x CSR^T), then per row the ``k``-th score by ``np.partition``, the ids
above it and the lowest ids tied at it, sorted (the same tie rule as ours). Checks that
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
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]
    ids = np.empty((S.shape[0], k), np.int64)
    for r in range(S.shape[0]):  # above the k-th score, then ties at it by lower id
        above = np.flatnonzero(S[r] > kth[r])
        at = np.flatnonzero(S[r] == kth[r])[: k - len(above)]
        ids[r] = np.concatenate([above, at])
    vals = np.take_along_axis(S, ids, axis=1)
    order = np.lexsort((ids, -vals), axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(ids, order, 1), S


def accel_section(docs: int, queries: int, vocab: int = 30_000, terms: int = 100,
                  query_terms: int = 20, k: int = 10, repeats: int = 3) -> dict:
    """Exact top-k on the default JAX device (GPU/TPU) vs scipy on the host: same ids, times.

    Used by ``benchmarks/device_check.py``; returns a dict with a ``failures`` list.
    """
    import jax
    import jax.numpy as jnp

    from sparsejax import retrieval as R

    rng = np.random.default_rng(0)
    d_ids, d_w = zipf_rows(rng, docs, vocab, terms, 1.25)
    q_ids, q_w = zipf_rows(rng, queries, vocab, query_terms, 1.1)
    index = R.build_index((d_ids, d_w), vocab_size=vocab)
    qs = (jnp.asarray(q_ids), jnp.asarray(q_w))
    jax.block_until_ready(R.search(index, qs, k))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        s_ours, i_ours = jax.block_until_ready(R.search(index, qs, k))
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    s_ref, i_ref, _ = scipy_topk(to_csr(q_ids, q_w, vocab), to_csr(d_ids, d_w, vocab), k)
    scipy_s = time.perf_counter() - t
    same = bool((np.asarray(i_ours) == i_ref).all())
    return {"docs": docs, "queries": queries, "k": k, "device": str(jax.devices()[0].device_kind),
            "search_s": min(times), "scipy_host_s": scipy_s, "same_ids_as_scipy": same,
            "failures": [] if same else ["retrieval: ids differ from scipy brute force"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--terms", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--query-terms", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--query-batch", type=int, default=32)
    ap.add_argument("--shards", type=int, default=2,
                    help="document shards on one device (<= 65,536 docs each: uint16 ids)")
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
    index = R.build_index((d_ids, d_w), vocab_size=args.vocab, shards=args.shards)
    jax.block_until_ready(index.weights)
    build_s = time.perf_counter() - t
    queries = (jnp.asarray(q_ids), jnp.asarray(q_w))

    def ours():  # includes the eager bound on postings per query (max_work)
        s, i = R.search(index, queries, args.k, query_batch=args.query_batch)
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
        "bytes_per_posting": index.bytes_per_posting,
        "dense_head_terms": int(index.head.shape[-1]),
        "index_bytes": index.nbytes,
        "index_bytes_per_nonzero": index.nbytes / index.num_postings,
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

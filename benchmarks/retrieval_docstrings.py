"""Learned sparse retrieval on standard-library docstrings: BM25 vs LSR vs dense MiniLM, and hybrids.

Task (`sparsejax.retrieval.corpus.docstring_pairs`): query = a docstring's first sentence, the one
relevant document = the rest of that docstring; documents = all pairs, held-out queries = a
deterministic 30 %. Retrievers:

* ``bm25``: ``bm25s`` (the peer; English stopwords, k1=1.5, b=0.75) on the raw text;
* ``idf_bag``: inference-free baseline, untrained: IDF-weighted query tokens x binary document bag;
* ``inference_free``: IDF query tokens (no encoder) x documents by all-MiniLM-L6-v2 + a uniCOIL
  term-weight head (``d -> 1``), trained with in-batch negatives + FLOPS on the documents only
  (the inference-free recipe: the IDF enters through the query side of the match);
* ``splade_minilm``: siamese SPLADE over all-MiniLM-L6-v2 with its tied embedding table as the
  expansion head (a trainable ``d x d`` map before it and a per-term bias), trained with in-batch
  negatives + quadratic-warm-up FLOPS on both sides;
* ``dense``: all-MiniLM-L6-v2 cosine (no training; texts cut to the same 48 / 128 tokens), and
  ``rrf`` / ``convex`` hybrids of each retriever with it.

Training is made cheap enough for a loaded CPU: the MiniLM encoder is frozen and its last hidden
states are computed once for every query and document (one jitted forward per length); each
training step is one jitted call on a batch of cached states (fixed shapes: one compile), so a
budget of a few minutes gives thousands of head steps. SPLADE's expansion vocabulary is the terms
that occur in the documents or the training queries (a term outside it can match nothing in the
index). Sparse vectors are pruned (documents 256 / queries 64 active terms), indexed with
`sparsejax.retrieval.build_index` and searched with `search`. Needs the ``models`` extra and
``bm25s`` (e.g. ``pip install --target DIR bm25s`` and DIR on PYTHONPATH).

    python benchmarks/retrieval_docstrings.py --train-seconds 120 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import retrieval as R
from sparsejax.models import encode, load_minilm
from sparsejax.retrieval.corpus import docstring_pairs

Q_LEN, D_LEN = 48, 128


def tokenize(tok, texts, max_length):
    """Token ids and mask padded to exactly ``max_length`` (one shape: one compile)."""
    ids, mask = tok(texts, max_length=max_length)
    ids, mask = np.asarray(ids), np.asarray(mask)
    pad = max_length - ids.shape[1]
    return (jnp.asarray(np.pad(ids, ((0, 0), (0, pad)))),
            jnp.asarray(np.pad(mask, ((0, 0), (0, pad)))))


def frozen_states(model, ids, mask, size=64, bucket=32):
    """Last hidden states of the frozen encoder for all rows ``[n, length, hidden]``.

    Rows are sorted by length and run in jitted batches of ``size`` cut to the batch's longest
    row rounded up to ``bucket`` (a few shapes, a few compiles, little padding).
    """
    fn = jax.jit(lambda i, m: encode(model.params, i, m, model.config))
    ids_np, mask_np = np.asarray(ids), np.asarray(mask)
    lengths = mask_np.sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((*ids_np.shape, model.config.hidden), np.float32)
    for i in range(0, len(order), size):
        rows = order[i:i + size]
        width = min(-(-int(lengths[rows].max()) // bucket) * bucket, ids_np.shape[1])
        pad = size - len(rows)
        b_ids = np.pad(ids_np[rows, :width], ((0, pad), (0, 0)))
        b_mask = np.pad(mask_np[rows, :width], ((0, pad), (0, 0)))
        out[rows, :width] = np.asarray(fn(jnp.asarray(b_ids), jnp.asarray(b_mask)))[:len(rows)]
    return jnp.asarray(out)


def mean_pool(states, mask):
    """sentence-transformers' mean pooling + L2 normalisation (all-MiniLM-L6-v2's embedding)."""
    m = mask[..., None].astype(states.dtype)
    pooled = jnp.sum(states * m, 1) / jnp.maximum(jnp.sum(m, 1), 1e-9)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def batched(fn, *arrays, size=64):
    n = arrays[0].shape[0]
    return jnp.concatenate([fn(*(a[i:i + size] for a in arrays)) for i in range(0, n, size)])


def train(loss_fn, params, train_ids, batch, seconds, lr, seed=0):
    """AdamW on ``loss_fn(params, pick, step)`` for ``seconds``; ``pick`` = batch row indices."""
    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, pick, t):
        loss, g = jax.value_and_grad(loss_fn)(params, pick, t)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    rng = np.random.default_rng(seed)
    jax.block_until_ready(step(params, state, jnp.asarray(train_ids[:batch]), 0))  # compile
    start, t, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        pick = jnp.asarray(rng.choice(train_ids, batch, replace=False))
        params, state, loss = step(params, state, pick, t)
        if t % 50 == 0:
            losses.append(float(loss))
        t += 1
    losses.append(float(loss))
    print(f"trained {t} steps in {seconds:.0f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}",
          flush=True)
    return params, t, losses


def evaluate(index, queries, relevant, k=100):
    scores, ids = R.search(index, queries, k)
    return scores, ids, {"mrr@10": float(R.mrr_at_k(ids, relevant, 10)),
                         "recall@100": float(R.recall_at_k(ids, relevant, 100))}


class _Log(dict):
    """A dict that prints each result as it arrives (a late failure keeps the earlier figures)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(key, json.dumps(value), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--splade-batch", type=int, default=16)
    ap.add_argument("--splade-seconds", type=float, default=None,
                    help="SPLADE training budget (default: --train-seconds)")
    ap.add_argument("--splade-doc-tokens", type=int, default=64,
                    help="document tokens seen by SPLADE training (evaluation uses all 128)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200, help="FLOPS weight warm-up steps")
    ap.add_argument("--free-flops", type=float, default=1e-3, help="inference-free doc FLOPS")
    ap.add_argument("--doc-flops", type=float, default=3e-3, help="SPLADE doc FLOPS")
    ap.add_argument("--query-flops", type=float, default=5e-3, help="SPLADE query FLOPS")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import bm25s

    pairs = docstring_pairs()
    n = len(pairs)
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    test = np.sort(order[: int(0.3 * n)])
    train_ids = order[int(0.3 * n):]
    queries = [q for q, _ in pairs]
    docs = [d for _, d in pairs]
    results, timings = _Log(), {}

    # BM25 peer
    t = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    bm_ids, bm_scores = retriever.retrieve(bm25s.tokenize([queries[i] for i in test],
                                                          stopwords="en", show_progress=False),
                                           k=100, show_progress=False)
    rel = jnp.asarray(test)
    results["bm25"] = {"mrr@10": float(R.mrr_at_k(jnp.asarray(bm_ids), rel, 10)),
                       "recall@100": float(R.recall_at_k(jnp.asarray(bm_ids), rel, 100))}
    timings["bm25_s"] = time.perf_counter() - t

    model = load_minilm()
    tok, config = model.tokenizer, model.config
    vocab = config.vocab_size
    q_ids, q_mask = tokenize(tok, queries, Q_LEN)
    d_ids, d_mask = tokenize(tok, docs, D_LEN)
    special = [tok.cls, tok.sep, tok.pad]
    d_content = (d_mask * (d_ids != tok.cls) * (d_ids != tok.sep)).astype(jnp.int32)
    idf = R.idf(d_ids, vocab, d_content)
    q_free = R.inference_free_query(q_ids, q_mask, idf, special_ids=special)
    d_bag = R.inference_free_query(d_ids, d_mask, jnp.ones_like(idf), special_ids=special)

    def sparse_eval(name, q_reps, d_reps):
        index = R.build_index(R.max_active_dims(d_reps, 256))
        qv = R.max_active_dims(q_reps[test], 64)
        scores, ids, res = evaluate(index, qv, rel)
        res["doc_active_terms"] = float(jnp.mean(jnp.sum(d_reps != 0, 1)))
        res["query_active_terms"] = float(jnp.mean(jnp.sum(q_reps[test] != 0, 1)))
        results[name] = res
        return ids, scores

    runs = {"idf_bag": sparse_eval("idf_bag", q_free, d_bag)}

    # the frozen encoder, once for every text; dense MiniLM = its mean-pooled states
    t = time.perf_counter()
    hq, hd = frozen_states(model, q_ids, q_mask), frozen_states(model, d_ids, d_mask)
    timings["frozen_states_s"] = time.perf_counter() - t
    qe, de = mean_pool(hq, q_mask), mean_pool(hd, d_mask)
    dense_scores, dense_ids = jax.lax.top_k(qe[test] @ de.T, 100)
    results["dense"] = {"mrr@10": float(R.mrr_at_k(dense_ids, rel, 10)),
                        "recall@100": float(R.recall_at_k(dense_ids, rel, 100))}

    # inference-free LSR: IDF queries x MiniLM + uniCOIL doc encoder
    def free_docs(p, h, ids, content):
        return R.term_weight_head(p, h, ids, content, vocab)

    def free_loss(p, pick, t):
        d = free_docs(p, hd[pick], d_ids[pick], d_content[pick])
        reg = R.regularizer_weight(t, args.free_flops, args.warmup) * R.flops_loss(d)
        return R.contrastive_loss(q_free[pick], d) + reg

    t = time.perf_counter()
    free_params, steps, losses = train(free_loss, R.term_weight_head_init(config.hidden),
                                       train_ids, args.batch, args.train_seconds, args.lr)
    timings["inference_free_train_s"] = time.perf_counter() - t
    d_free = batched(jax.jit(lambda h, i, c: free_docs(free_params, h, i, c)), hd, d_ids,
                     d_content)
    runs["inference_free"] = sparse_eval("inference_free", q_free, d_free)
    results["inference_free"].update(steps=steps, first_loss=losses[0], last_loss=losses[-1])

    # siamese SPLADE over MiniLM with the tied embedding head, on the corpus vocabulary
    terms = np.unique(np.concatenate([np.asarray(d_ids)[np.asarray(d_mask) > 0],
                                      np.asarray(q_ids[train_ids])[np.asarray(q_mask[train_ids]) > 0]]))
    terms = jnp.asarray(np.setdiff1d(terms, special))
    emb_terms = model.params["embeddings"]["word"][terms]

    def splade(p, h, mask):
        return R.splade_pool(R.tied_mlm_logits(h @ p["map"], emb_terms, p["bias"]), mask)

    def splade_loss(p, pick, t):
        cut = args.splade_doc_tokens    # training sees each document's first tokens only
        q = splade(p, hq[pick], q_mask[pick])
        d = splade(p, hd[pick, :cut], d_mask[pick, :cut])
        reg = (R.regularizer_weight(t, args.doc_flops, args.warmup) * R.flops_loss(d)
               + R.regularizer_weight(t, args.query_flops, args.warmup) * R.flops_loss(q))
        return R.contrastive_loss(q, d) + reg

    sp_params = {"map": jnp.eye(config.hidden), "bias": jnp.full((terms.shape[0],), -2.0)}
    t = time.perf_counter()
    sp_params, steps, losses = train(splade_loss, sp_params, train_ids, args.splade_batch,
                                     args.splade_seconds or args.train_seconds, args.lr)
    timings["splade_train_s"] = time.perf_counter() - t
    enc = jax.jit(lambda h, m: splade(sp_params, h, m))
    q_sp, d_sp = batched(enc, hq, q_mask), batched(enc, hd, d_mask)
    runs["splade_minilm"] = sparse_eval("splade_minilm", q_sp, d_sp)
    results["splade_minilm"].update(steps=steps, first_loss=losses[0], last_loss=losses[-1],
                                    vocabulary=int(terms.shape[0]))

    # hybrids with dense MiniLM
    runs["bm25"] = (jnp.asarray(bm_ids), jnp.asarray(bm_scores))
    for name, (ids, scores) in runs.items():
        _, fused = R.reciprocal_rank_fusion([ids, dense_ids], 100)
        results[f"{name}+dense_rrf"] = {"mrr@10": float(R.mrr_at_k(fused, rel, 10)),
                                        "recall@100": float(R.recall_at_k(fused, rel, 100))}
        _, fused = R.convex_fusion(ids, scores, dense_ids, dense_scores, 100, alpha=0.5)
        results[f"{name}+dense_convex"] = {"mrr@10": float(R.mrr_at_k(fused, rel, 10)),
                                           "recall@100": float(R.recall_at_k(fused, rel, 100))}

    out = {"pairs": n, "test_queries": len(test), "train_pairs": len(train_ids),
           "train_seconds": args.train_seconds, "results": results, "timings": timings,
           "load": os.getloadavg()[0]}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

"""Learned sparse retrieval on standard-library docstrings: BM25 vs LSR vs dense MiniLM, and hybrids.

Task (`sparsejax.retrieval.corpus.docstring_pairs`): query = a docstring's first sentence, the one
relevant document = the rest of that docstring; documents = all pairs, held-out queries = a
deterministic 30 %. Retrievers:

* ``bm25``: ``bm25s`` (the peer; English stopwords, k1=1.5, b=0.75) on the raw text;
* ``idf_bag``: inference-free baseline, untrained: IDF-weighted query tokens x binary document bag;
* ``inference_free``: IDF query tokens (no encoder) x documents by all-MiniLM-L6-v2 + a uniCOIL
  term-weight head (``d -> 1``), trained with in-batch negatives + FLOPS on the documents;
* ``splade_minilm``: siamese SPLADE over all-MiniLM-L6-v2 with its tied embedding table as the MLM
  head, trained with in-batch negatives + quadratic-warm-up FLOPS on both sides;
* ``dense``: all-MiniLM-L6-v2 cosine (no training), and ``rrf`` / ``convex`` hybrids of each sparse
  model with it.

Sparse vectors are pruned (documents 256 / queries 64 active terms), indexed with
`sparsejax.retrieval.build_index` and searched with `search`. Needs the ``models`` extra and
``bm25s`` (e.g. ``pip install --target DIR bm25s`` and DIR on PYTHONPATH).

    python benchmarks/retrieval_docstrings.py --train-seconds 150 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import retrieval as R
from sparsejax.models import encode, load_minilm
from sparsejax.retrieval.corpus import docstring_pairs

Q_LEN, D_LEN = 48, 128


def tokenize(tok, texts, max_length):
    ids, mask = tok(texts, max_length=max_length, pad_to_multiple_of=16)
    return jnp.asarray(ids), jnp.asarray(mask)


def content_mask(ids, mask, tok):
    """Real tokens minus [CLS]/[SEP]."""
    return mask * (ids != tok.cls) * (ids != tok.sep)


def splade_encoder(params, ids, mask, config):
    h = encode(params["bert"], ids, mask, config)
    logits = R.tied_mlm_logits(h, params["bert"]["embeddings"]["word"], params["bias"])
    return R.splade_pool(logits, mask)


def unicoil_encoder(params, ids, mask, config, special):
    h = encode(params["bert"], ids, mask, config)
    return R.term_weight_head(params["head"], h, ids, mask * special, config.vocab_size)


def batched(fn, ids, mask, size=64):
    return jnp.concatenate([fn(ids[i:i + size], mask[i:i + size])
                            for i in range(0, ids.shape[0], size)])


def train(loss_fn, params, batches, seconds, lr):
    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch, t):
        loss, g = jax.value_and_grad(loss_fn)(params, batch, t)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    start, t, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        params, state, loss = step(params, state, batches(t), t)
        losses.append(float(loss))
        t += 1
    print(f"trained {t} steps in {seconds:.0f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}",
          flush=True)
    return params, t, losses


def evaluate(index, queries, relevant, k=100):
    _, ids = R.search(index, queries, k)
    return ids, {"mrr@10": float(R.mrr_at_k(ids, relevant, 10)),
                 "recall@100": float(R.recall_at_k(ids, relevant, 100))}


class _Log(dict):
    """A dict that prints each result as it arrives (a late failure keeps the earlier figures)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(key, json.dumps(value), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--batch", type=int, default=32)
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
    q_ids, q_mask = tokenize(tok, queries, Q_LEN)
    d_ids, d_mask = tokenize(tok, docs, D_LEN)
    special = [tok.cls, tok.sep, tok.pad]
    idf = R.idf(d_ids, config.vocab_size, content_mask(d_ids, d_mask, tok))
    q_free = R.inference_free_query(q_ids, q_mask, idf, special_ids=special)
    d_bag = R.inference_free_query(d_ids, d_mask, jnp.ones_like(idf), special_ids=special)

    def sparse_eval(name, q_reps, d_reps):
        index = R.build_index(R.max_active_dims(d_reps, 256))
        qv = R.max_active_dims(q_reps[test], 64)
        ids, res = evaluate(index, qv, rel)
        res["doc_active_terms"] = float(jnp.mean(jnp.sum(d_reps != 0, 1)))
        res["query_active_terms"] = float(jnp.mean(jnp.sum(q_reps[test] != 0, 1)))
        results[name] = res
        return ids, R.search(index, qv, 100)[0]

    runs = {"idf_bag": sparse_eval("idf_bag", q_free, d_bag)}

    # dense MiniLM
    t = time.perf_counter()
    emb = jnp.asarray(model(queries + docs))
    qe, de = emb[:n], emb[n:]
    dense_scores, dense_ids = jax.lax.top_k(qe[test] @ de.T, 100)
    results["dense"] = {"mrr@10": float(R.mrr_at_k(dense_ids, rel, 10)),
                        "recall@100": float(R.recall_at_k(dense_ids, rel, 100))}
    timings["dense_encode_s"] = time.perf_counter() - t

    def batches_of(ids_a, mask_a, ids_b, mask_b):
        def get(t):
            rs = np.random.default_rng(t)
            pick = rs.choice(train_ids, args.batch, replace=False)
            return ids_a[pick], mask_a[pick], ids_b[pick], mask_b[pick]
        return get

    # inference-free LSR: IDF queries x MiniLM + uniCOIL doc encoder
    d_special = (d_ids != tok.cls) & (d_ids != tok.sep)
    free_params = {"bert": model.params, "head": R.term_weight_head_init(config.hidden)}
    doc_enc = partial(unicoil_encoder, config=config)

    def free_loss(p, batch, t):
        qi, qm, di, dm = batch
        q = R.inference_free_query(qi, qm, idf, special_ids=special)
        d = doc_enc(p, di, dm, special=(di != tok.cls) & (di != tok.sep))
        reg = R.regularizer_weight(t, 1e-3, 50) * R.flops_loss(d)
        return R.contrastive_loss(q, d) + reg

    t = time.perf_counter()
    free_params, steps, losses = train(free_loss, free_params, batches_of(q_ids, q_mask, d_ids,
                                                                          d_mask),
                                       args.train_seconds, 3e-5)
    timings["inference_free_train_s"] = time.perf_counter() - t
    free_jit = jax.jit(lambda i, m: doc_enc(free_params, i, m,
                                            special=(i != tok.cls) & (i != tok.sep)))
    d_free = batched(free_jit, d_ids, d_mask)
    runs["inference_free"] = sparse_eval("inference_free", q_free, d_free)
    results["inference_free"].update(steps=steps, first_loss=losses[0], last_loss=losses[-1])
    del d_special

    # siamese SPLADE over MiniLM with the tied embedding head
    sp_params = {"bert": model.params, "bias": jnp.full((config.vocab_size,), -2.0)}
    enc = partial(splade_encoder, config=config)

    def splade_loss(p, batch, t):
        qi, qm, di, dm = batch
        q, d = enc(p, qi, qm), enc(p, di, dm)
        reg = (R.regularizer_weight(t, 3e-3, 50) * R.flops_loss(d)
               + R.regularizer_weight(t, 5e-3, 50) * R.flops_loss(q))
        return R.contrastive_loss(q, d) + reg

    t = time.perf_counter()
    sp_params, steps, losses = train(splade_loss, sp_params,
                                     batches_of(q_ids, q_mask, d_ids, d_mask),
                                     args.train_seconds, 3e-5)
    timings["splade_train_s"] = time.perf_counter() - t
    enc_jit = jax.jit(lambda i, m: enc(sp_params, i, m))
    q_sp = batched(enc_jit, q_ids, q_mask)
    d_sp = batched(enc_jit, d_ids, d_mask)
    runs["splade_minilm"] = sparse_eval("splade_minilm", q_sp, d_sp)
    results["splade_minilm"].update(steps=steps, first_loss=losses[0], last_loss=losses[-1])

    # hybrids with dense MiniLM
    for name, (ids, scores) in runs.items():
        _, fused = R.reciprocal_rank_fusion([ids, dense_ids], 100)
        results[f"{name}+dense_rrf"] = {"mrr@10": float(R.mrr_at_k(fused, rel, 10)),
                                        "recall@100": float(R.recall_at_k(fused, rel, 100))}
        _, fused = R.convex_fusion(ids, scores, dense_ids, dense_scores, 100, alpha=0.5)
        results[f"{name}+dense_convex"] = {"mrr@10": float(R.mrr_at_k(fused, rel, 10)),
                                           "recall@100": float(R.recall_at_k(fused, rel, 100))}
    _, fused = R.reciprocal_rank_fusion([jnp.asarray(bm_ids), dense_ids], 100)
    results["bm25+dense_rrf"] = {"mrr@10": float(R.mrr_at_k(fused, rel, 10)),
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

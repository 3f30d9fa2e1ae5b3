"""An inverted index of sparse document vectors as JAX arrays, and exact top-k search over it.

Layout (per shard, documents split into contiguous ranges, one range per shard):

* ``offsets[s, v] : offsets[s, v + 1]`` is term ``v``'s posting list in shard ``s``;
* ``doc_ids[s, p]`` the shard-local document id (int32; ``uint16`` when a shard holds at most
  65,536 documents), ``weights[s, p]`` the term weight (``float32``, or ``float16``/``bfloat16``
  to halve it), postings sorted by term then document.

One posting costs ``doc_ids.itemsize + weights.itemsize`` bytes (`InvertedIndex.bytes_per_posting`).

The most frequent terms (present in many documents) are kept instead as one dense
``[docs, n_head]`` block per shard, scored by a matrix product: their posting lists are the long
ones, and a matrix product does per entry a fraction of the work of a gather and a scatter.

Search is exact: the dense head by a matrix product, then each query's remaining postings are
gathered into one flat work list (its length is bounded by ``max_work``, found eagerly from the
index), scatter-added into a
per-shard score row, and each shard keeps its own top ``k``; one merge over the shards' ``k``
candidates gives the global top ``k``. With a `jax.sharding.Mesh` the shards live on the devices
of one mesh axis and the per-shard work runs under `jax.shard_map`; without one it runs under
`jax.vmap`; the call is the same. Ties are broken by the lower document id, as a stable sort of
the exact scores would.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_choice, check_int, check_positive_int, must_be

__all__ = ["InvertedIndex", "build_index", "search", "to_term_lists"]

_WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


@partial(jax.tree_util.register_dataclass,
         data_fields=["offsets", "doc_ids", "weights", "head_terms", "head"],
         meta_fields=["num_docs", "docs_per_shard", "vocab_size", "mesh", "axis"])
@dataclasses.dataclass(frozen=True)
class InvertedIndex:
    """Compressed postings of ``num_docs`` sparse document vectors over ``vocab_size`` terms.

    Attributes:
        offsets: int32 ``[shards, vocab_size + 1]`` start of each term's postings.
        doc_ids: shard-local document ids ``[shards, postings]`` (int32 or uint16).
        weights: term weights ``[shards, postings]``.
        head_terms: int32 ``[vocab_size]``: column of term ``v`` in ``head``, or ``-1`` for a term
            kept as postings.
        head: the most frequent terms' weights as a dense block ``[shards, docs_per_shard,
            n_head]`` (their postings are not stored; ``n_head`` may be 0).
        num_docs: documents indexed (static).
        docs_per_shard: documents per shard; shard ``s`` holds ids
            ``[s * docs_per_shard, (s + 1) * docs_per_shard)`` (static).
        vocab_size: number of terms (static).
        mesh: the `jax.sharding.Mesh` the shards are placed on, or ``None`` (static).
        axis: the mesh axis the shards are split over (static).
    """

    offsets: Int[Array, "shards vocab_plus_1"]
    doc_ids: Int[Array, "shards postings"]
    weights: Float[Array, "shards postings"]
    head_terms: Int[Array, " vocab"]
    head: Float[Array, "shards docs_per_shard n_head"]
    num_docs: int
    docs_per_shard: int
    vocab_size: int
    mesh: Mesh | None = None
    axis: str | None = None

    @property
    def num_shards(self) -> int:
        return self.offsets.shape[0]

    @property
    def num_postings(self) -> int:
        """Non-zero (document, term) entries indexed: postings plus dense-head non-zeros."""
        return int(np.asarray(self.offsets[:, -1]).sum()) + int(np.count_nonzero(
            np.asarray(self.head)))

    @property
    def bytes_per_posting(self) -> int:
        """Bytes one posting takes (document id + weight)."""
        return self.doc_ids.dtype.itemsize + self.weights.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays (padding included)."""
        return sum(int(a.size) * a.dtype.itemsize for a in (self.offsets, self.doc_ids,
                                                             self.weights, self.head_terms,
                                                             self.head))


def _coo(docs, name: str):
    """(doc, term, weight) of the non-zeros of dense ``[n, V]`` or ``(term_ids, weights)``."""
    if isinstance(docs, tuple):
        if len(docs) != 2:
            raise ValueError(must_be(name, "a dense [n, vocab] array or a pair (term_ids, "
                                     "weights) of [n, length] arrays", f"a tuple of {len(docs)}",
                                     raw=True))
        ids, w = np.asarray(docs[0]), np.asarray(docs[1])
        if ids.ndim != 2 or ids.shape != w.shape or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(must_be(name, "(term_ids, weights) int and float arrays of one shape "
                                     "[n, length]", f"shapes {ids.shape}, {w.shape} and dtype "
                                     f"{ids.dtype}", raw=True))
        rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
        keep = w != 0
        return ids.shape[0], rows[keep], ids[keep], w[keep], None
    dense = np.asarray(docs)
    if dense.ndim != 2 or not np.issubdtype(dense.dtype, np.floating):
        raise ValueError(must_be(name, "a float array [n, vocab] or a pair (term_ids, weights)",
                                 f"shape {dense.shape}, dtype {dense.dtype}", raw=True))
    rows, cols = np.nonzero(dense)
    return dense.shape[0], rows, cols, dense[rows, cols], dense.shape[1]


def to_term_lists(reps: Float[Array, "n vocab"], max_terms: int
                  ) -> tuple[Int[Array, "n max_terms"], Float[Array, "n max_terms"]]:
    """Dense vectors to padded term lists: the ``max_terms`` largest-``|w|`` terms of each row.

    Rows with fewer non-zeros are padded with weight 0 (ignored by `search` and `build_index`).
    Exact when ``max_terms`` is at least the largest number of non-zeros in a row.

    Args:
        reps: ``[n, vocab]`` float vectors.
        max_terms: ``>= 1``.

    Returns:
        ``(term_ids int32 [n, max_terms], weights [n, max_terms])``.
    """
    reps = jnp.asarray(reps)
    max_terms = min(check_positive_int(max_terms, "max_terms"), reps.shape[-1])
    _, ids = lax.top_k(jnp.abs(reps), max_terms)
    return ids.astype(jnp.int32), jnp.take_along_axis(reps, ids, axis=-1)


def build_index(
    docs: Any,
    *,
    vocab_size: int | None = None,
    shards: int | None = None,
    mesh: Mesh | None = None,
    axis: str | None = None,
    weight_dtype: str = "float32",
    dense_terms: int | None = None,
) -> InvertedIndex:
    """Build the inverted index of document vectors (on the host, once; search is jittable).

    Args:
        docs: dense ``[n, vocab]`` float vectors, or ``(term_ids, weights)`` ``[n, length]``
            padded term lists (weight 0 = padding; repeated terms in a row are summed).
        vocab_size: number of terms (required for term lists; defaults to ``docs.shape[1]``).
        shards: split the documents into this many contiguous ranges (default: the size of
            ``mesh``'s ``axis``, else 1).
        mesh: place shard ``s`` on the ``s``-th device along ``axis`` of this mesh.
        axis: mesh axis name (required with ``mesh``).
        weight_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` posting weights.
        dense_terms: the number of most frequent terms stored as a dense ``[docs, dense_terms]``
            block instead of postings (scored by a matrix product, which is faster than gathering
            long posting lists). Default: the terms present in at least 1/8 of the documents,
            at most 128.

    Returns:
        an `InvertedIndex`.
    """
    n, rows, terms, w, v = _coo(docs, "docs")
    if vocab_size is None:
        if v is None:
            raise ValueError(must_be("vocab_size", "given when `docs` are term lists", None))
        vocab_size = v
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    if v is not None and v != vocab_size:
        raise ValueError(must_be("vocab_size", f"docs.shape[1] = {v}", vocab_size))
    if terms.size and (terms.min() < 0 or terms.max() >= vocab_size):
        raise ValueError(must_be("docs", f"term ids in [0, {vocab_size})",
                                 f"ids in [{terms.min()}, {terms.max()}]", raw=True))
    check_positive_int(n, "len(docs)")
    check_choice(weight_dtype, "weight_dtype", _WEIGHT_DTYPES)
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(must_be("mesh", "a jax.sharding.Mesh", mesh))
        check_choice(axis, "axis", tuple(mesh.axis_names))
        size = mesh.shape[axis]
        shards = size if shards is None else shards
        if shards != size:
            raise ValueError(must_be("shards", f"mesh.shape[{axis!r}] = {size}", shards))
    shards = check_positive_int(1 if shards is None else shards, "shards")
    per = -(-n // shards)
    # merge repeated (doc, term) pairs, sort by (shard, term, doc)
    shard = rows // per
    order = np.lexsort((rows, terms, shard))
    shard, terms, rows, w = shard[order], terms[order], rows[order], w[order].astype(np.float32)
    if rows.size:
        new = np.r_[True, (rows[1:] != rows[:-1]) | (terms[1:] != terms[:-1])]
        starts = np.flatnonzero(new)
        w = np.add.reduceat(w, starts)
        shard, terms, rows = shard[starts], terms[starts], rows[starts]
        keep = w != 0
        shard, terms, rows, w = shard[keep], terms[keep], rows[keep], w[keep]
    df = np.bincount(terms, minlength=vocab_size)
    if dense_terms is None:
        dense_terms = min(int(np.sum(df * 8 >= n)), 128)
    dense_terms = check_int(dense_terms, "dense_terms", minimum=0, maximum=vocab_size)
    head_ids = np.argsort(-df, kind="stable")[:dense_terms]
    head_terms = np.full(vocab_size, -1, np.int32)
    head_terms[head_ids] = np.arange(dense_terms, dtype=np.int32)
    col = head_terms[terms]
    head = np.zeros((shards, per, dense_terms), np.float32)
    in_head = col >= 0
    head[shard[in_head], rows[in_head] - shard[in_head] * per, col[in_head]] = w[in_head]
    shard, terms, rows, w = shard[~in_head], terms[~in_head], rows[~in_head], w[~in_head]
    counts = np.bincount(shard * vocab_size + terms, minlength=shards * vocab_size)
    counts = counts.reshape(shards, vocab_size)
    offsets = np.zeros((shards, vocab_size + 1), np.int64)
    offsets[:, 1:] = np.cumsum(counts, axis=1)
    if offsets[:, -1].max() >= 2**31:
        raise ValueError(must_be("docs", "fewer than 2**31 postings per shard",
                                 int(offsets[:, -1].max()), raw=True))
    width = -(-max(int(offsets[:, -1].max()), 1) // 1024) * 1024  # fewer distinct shapes to compile
    id_dtype = np.uint16 if per <= 2**16 else np.int32
    doc_ids = np.zeros((shards, width), id_dtype)
    weights = np.zeros((shards, width), np.float32)
    bounds = np.searchsorted(shard, np.arange(shards + 1))
    for s in range(shards):
        a, b = bounds[s], bounds[s + 1]
        doc_ids[s, : b - a] = rows[a:b] - s * per
        weights[s, : b - a] = w[a:b]
    wdt = jnp.dtype(weight_dtype)
    arrays = (jnp.asarray(offsets, jnp.int32), jnp.asarray(doc_ids), jnp.asarray(weights, wdt))
    head = jnp.asarray(head, wdt)
    if mesh is not None:
        arrays = jax.device_put(arrays, NamedSharding(mesh, P(axis)))
        head = jax.device_put(head, NamedSharding(mesh, P(axis)))
    return InvertedIndex(*arrays, jnp.asarray(head_terms), head, num_docs=n, docs_per_shard=per,
                         vocab_size=vocab_size, mesh=mesh, axis=axis)


def _queries(queries, vocab_size: int, max_terms: int | None):
    if isinstance(queries, tuple):
        if len(queries) != 2:
            raise ValueError(must_be("queries", "a dense [batch, vocab] array or a pair "
                                     "(term_ids, weights)", f"a tuple of {len(queries)}",
                                     raw=True))
        ids, w = jnp.asarray(queries[0]), jnp.asarray(queries[1])
        if ids.ndim != 2 or ids.shape != w.shape or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(must_be("queries", "(term_ids, weights) int and float arrays of one "
                                     "shape [batch, length]", f"shapes {ids.shape}, {w.shape}",
                                     raw=True))
        return ids.astype(jnp.int32), w
    q = jnp.asarray(queries)
    if q.ndim != 2 or q.shape[1] != vocab_size or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(must_be("queries", f"a float array [batch, {vocab_size}] or a pair "
                                 "(term_ids, weights)", f"shape {tuple(q.shape)}, dtype "
                                 f"{q.dtype}", raw=True))
    if max_terms is None:
        if isinstance(q, jax.core.Tracer):
            raise ValueError(must_be("max_terms", "given when dense `queries` are traced", None))
        max_terms = max(int(jnp.max(jnp.sum(q != 0, axis=1))), 1)
    return to_term_lists(q, max_terms)


def _work(index: InvertedIndex, ids: jax.Array, w: jax.Array) -> jax.Array:
    """Postings each query touches in each shard: int32 ``[shards, batch]``."""
    length = index.offsets[:, 1:] - index.offsets[:, :-1]            # [S, V]
    per_term = jnp.take(length, jnp.clip(ids, 0, index.vocab_size - 1), axis=1)  # [S, B, L]
    return jnp.sum(jnp.where((w != 0)[None], per_term, 0), axis=2)


def _shard_topk(offsets, doc_ids, weights, head, first_doc, ids, w, qh, *, k, max_work, per,
                num_docs, query_batch):
    """Exact top-k of one shard for all queries: (scores [B, k], global ids [B, k])."""
    nterms = ids.shape[1]
    valid_t = (w != 0) & (ids >= 0) & (ids < offsets.shape[0] - 1)
    safe = jnp.where(valid_t, ids, 0)
    start = offsets[safe]
    length = jnp.where(valid_t, offsets[safe + 1] - start, 0)
    cum = jnp.cumsum(length, axis=1)
    doc_valid = (jnp.arange(per) + first_doc) < num_docs

    def one(args):
        start, length, cum, wq, q_head = args
        pos = jnp.arange(max_work, dtype=jnp.int32)
        # term slot of each work item: count of cumulative ends <= pos
        marks = jnp.zeros(max_work + 1, jnp.int32).at[jnp.minimum(cum, max_work)].add(1)
        slot = jnp.minimum(jnp.cumsum(marks)[:max_work], nterms - 1)
        p = start[slot] + pos - (cum[slot] - length[slot])
        live = pos < cum[-1]
        p = jnp.where(live, p, 0)
        contrib = jnp.where(live, wq[slot].astype(jnp.float32) *
                            weights[p].astype(jnp.float32), 0.0)
        scores = head.astype(jnp.float32) @ q_head
        scores = scores.at[doc_ids[p].astype(jnp.int32)].add(contrib)
        scores = jnp.where(doc_valid, scores, -jnp.inf)
        vals, idx = lax.top_k(scores, k)
        return vals, idx.astype(jnp.int32) + first_doc

    return lax.map(one, (start, length, cum, w, qh), batch_size=query_batch)


def search(
    index: InvertedIndex,
    queries: Any,
    k: int,
    *,
    max_terms: int | None = None,
    max_work: int | None = None,
    query_batch: int = 32,
) -> tuple[Float[Array, "batch k"], Int[Array, "batch k"]]:
    """Exact top-``k`` documents by dot product for a batch of sparse queries.

    The same ids (and scores, up to float32 summation order) as ``Q @ D.T`` followed by a stable
    descending sort; ties go to the lower document id. Documents that share no term with a query
    score 0 and still rank (after every positive score) when fewer than ``k`` documents match.

    Args:
        index: from `build_index` (sharded or not: the call is the same).
        queries: dense ``[batch, vocab]`` float vectors, or ``(term_ids, weights)`` padded term
            lists ``[batch, length]`` (weight 0 = padding).
        k: results per query, ``1 <= k <= docs_per_shard``.
        max_terms: terms kept per dense query (default: the largest number of non-zeros; needed
            when dense ``queries`` are traced).
        max_work: bound on the postings one query touches in one shard (default: computed from
            ``queries`` and the index, rounded up to a multiple of 4096; needed under ``jit``).
        query_batch: queries scored together per step (memory ``query_batch * max_work``).

    Returns:
        ``(scores float32 [batch, k], doc_ids int32 [batch, k])``, best first.
    """
    if not isinstance(index, InvertedIndex):
        raise TypeError(must_be("index", "an InvertedIndex (from build_index)", index))
    k = check_int(k, "k", minimum=1, maximum=index.docs_per_shard)
    query_batch = check_positive_int(query_batch, "query_batch")
    ids, w = _queries(queries, index.vocab_size, max_terms)
    if max_work is None:
        if any(isinstance(a, jax.core.Tracer) for a in (ids, w, index.offsets)):
            raise ValueError(must_be("max_work", "given when `queries` or `index` are traced",
                                     None))
        need = int(jnp.max(_work(index, ids, w)))
        max_work = max(4096, -(-need // 4096) * 4096)
    max_work = check_positive_int(max_work, "max_work")
    return _search(index, ids, w, k=k, max_work=max_work, query_batch=query_batch)


@partial(jax.jit, static_argnames=("k", "max_work", "query_batch"))
def _search(index, ids, w, *, k, max_work, query_batch):
    per = index.docs_per_shard
    local = partial(_shard_topk, k=k, max_work=max_work, per=per, num_docs=index.num_docs,
                    query_batch=query_batch)
    first = jnp.arange(index.num_shards, dtype=jnp.int32) * per
    # query weights of the dense head terms, [B, n_head]; head terms leave the term lists
    col = jnp.where(w != 0, index.head_terms[jnp.clip(ids, 0, index.vocab_size - 1)], -1)
    n_head = index.head.shape[-1]
    rows = jnp.arange(ids.shape[0])[:, None]
    qh = jnp.zeros((ids.shape[0], n_head), jnp.float32).at[
        rows, jnp.where(col >= 0, col, n_head)].add(w.astype(jnp.float32), mode="drop")
    w = jnp.where(col >= 0, jnp.zeros((), w.dtype), w)
    args = (index.offsets, index.doc_ids, index.weights, index.head, first, ids, w, qh)
    if index.mesh is None:
        vals, gids = jax.vmap(local, in_axes=(0, 0, 0, 0, 0, None, None, None))(*args)
    else:
        spec = P(index.axis)

        def on_device(offsets, doc_ids, weights, head, first, ids, w, qh):
            v, g = local(offsets[0], doc_ids[0], weights[0], head[0], first[0], ids, w, qh)
            return v[None], g[None]

        vals, gids = jax.shard_map(on_device, mesh=index.mesh,
                                   in_specs=(spec,) * 5 + (P(),) * 3,
                                   out_specs=(spec, spec))(*args)
    # one merge: shards are in document order, so a stable top-k keeps lower ids first on ties
    vals = jnp.moveaxis(vals, 0, 1).reshape(ids.shape[0], -1)
    gids = jnp.moveaxis(gids, 0, 1).reshape(ids.shape[0], -1)
    best, pos = lax.top_k(vals, k)
    return best, jnp.take_along_axis(gids, pos, axis=1)

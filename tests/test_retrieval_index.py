"""sparsejax.retrieval inverted index, search and fusion against scipy.sparse / numpy brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import retrieval as R


def _corpus(seed, n=300, vocab=120, q=12):
    rng = np.random.default_rng(seed)
    # Zipf-ish term frequencies, weights on a 1/8 grid: dot products are exact in float32
    p = 1.0 / np.arange(1, vocab + 1)
    docs = (rng.random((n, vocab)) < 0.6 * p / p[:20].mean()) * rng.integers(1, 17, (n, vocab))
    queries = (rng.random((q, vocab)) < 0.1) * rng.integers(1, 17, (q, vocab))
    return docs.astype(np.float32) / 8, queries.astype(np.float32) / 8


def _brute(queries, docs, k):
    s = (sp.csr_matrix(queries) @ sp.csr_matrix(docs).T).toarray()
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


@pytest.mark.parametrize("shards,dense_terms", [(1, None), (4, 5)])
def test_search_same_ids_as_scipy(shards, dense_terms):
    docs, queries = _corpus(0)
    index = R.build_index(docs, shards=shards, dense_terms=dense_terms)
    scores, ids = R.search(index, jnp.asarray(queries), 10)
    want_s, want_i = _brute(queries, docs, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_array_equal(scores, want_s)
    assert index.num_postings + int((docs[:, :0] != 0).sum()) <= int((docs != 0).sum())


def test_search_term_lists_equal_dense_queries_and_jit():
    docs, queries = _corpus(1)
    index = R.build_index(R.to_term_lists(jnp.asarray(docs), 60), vocab_size=docs.shape[1],
                          weight_dtype="float16")
    assert index.bytes_per_posting == 4  # uint16 ids + float16 weights
    q = R.to_term_lists(jnp.asarray(queries), 40)
    s1, i1 = R.search(index, q, 7)
    s2, i2 = jax.jit(lambda qq: R.search(index, qq, 7, max_terms=40, max_work=4096))(
        jnp.asarray(queries))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, _brute(queries, docs, 7)[1])


def test_search_ties_and_empty_queries_rank_by_lower_id():
    docs = np.zeros((6, 4), np.float32)
    docs[[1, 3, 4], 2] = 1.0
    index = R.build_index(docs, shards=2)
    q = np.zeros((2, 4), np.float32)
    q[0, 2] = 1.0
    scores, ids = R.search(index, jnp.asarray(q), 3)
    np.testing.assert_array_equal(ids, [[1, 3, 4], [0, 1, 2]])
    np.testing.assert_array_equal(scores, [[1, 1, 1], [0, 0, 0]])


def test_last_shard_padding_never_returned():
    docs = np.zeros((5, 3), np.float32)  # 5 docs over 4 shards: shards of 2, last one padded
    index = R.build_index(docs, shards=4)
    assert index.docs_per_shard == 2
    _, ids = R.search(index, jnp.ones((1, 3)), 2)
    assert set(np.asarray(ids).ravel()) <= set(range(5))


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1))
def test_search_matches_brute_force_property(seed):
    docs, queries = _corpus(seed, n=64, vocab=40, q=4)
    index = R.build_index(docs, shards=2, dense_terms=0)  # postings only
    scores, ids = R.search(index, jnp.asarray(queries), 5, max_terms=40, max_work=4096)
    np.testing.assert_array_equal(ids, _brute(queries, docs, 5)[1])


def test_build_and_search_reject_bad_input():
    docs, queries = _corpus(0, n=20, vocab=10, q=2)
    index = R.build_index(docs)
    with pytest.raises(ValueError, match="`k` must be <= 20"):
        R.search(index, jnp.asarray(queries), 21)
    with pytest.raises(ValueError, match="`queries` must"):
        R.search(index, jnp.ones((2, 11)), 3)
    with pytest.raises(ValueError, match="`vocab_size` must be given"):
        R.build_index((np.zeros((2, 3), int), np.ones((2, 3))))
    with pytest.raises(ValueError, match="`docs` must"):
        R.build_index((np.full((2, 3), 9), np.ones((2, 3))), vocab_size=5)
    with pytest.raises(ValueError, match="`weight_dtype` must be one of"):
        R.build_index(docs, weight_dtype="int8")
    with pytest.raises(TypeError, match="`index` must"):
        R.search(docs, jnp.asarray(queries), 3)


def _np_rrf(lists, c):
    score = {}
    for lst in lists:
        seen = set()
        for r, d in enumerate(lst):
            if d not in seen:
                seen.add(d)
                score[d] = score.get(d, 0.0) + 1.0 / (c + r + 1)
    return score


def test_reciprocal_rank_fusion_matches_python():
    a = np.array([[3, 1, 4, 5], [0, 1, 2, 3]])
    b = np.array([[1, 9, 3, 3], [7, 6, 5, 4]])
    scores, ids = R.reciprocal_rank_fusion([jnp.asarray(a), jnp.asarray(b)], 4, rank_constant=60)
    for row in range(2):
        want = _np_rrf([a[row], b[row]], 60)
        order = sorted(want, key=lambda d: -want[d])[:4]
        np.testing.assert_allclose(scores[row], [want[d] for d in order], rtol=1e-6)
        assert set(np.asarray(ids[row])[:2]) == set(order[:2])
    assert list(np.asarray(ids[0])[:2]) == [1, 3]  # both lists agree on 1 and 3


def test_convex_fusion_minmax():
    ids_a, s_a = jnp.array([[1, 2, 3]]), jnp.array([[3.0, 2.0, 1.0]])
    ids_b, s_b = jnp.array([[3, 4, 5]]), jnp.array([[10.0, 6.0, 2.0]])
    scores, ids = R.convex_fusion(ids_a, s_a, ids_b, s_b, 4, alpha=0.5)
    # normalised a: 1->1, 2->.5, 3->0; b: 3->1, 4->.5, 5->0
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.25, 0.25]])
    np.testing.assert_array_equal(ids, [[1, 3, 2, 4]])
    only_a = R.convex_fusion(ids_a, s_a, ids_b, s_b, 3, alpha=1.0, normalize="none")
    np.testing.assert_array_equal(only_a[1], [[1, 2, 3]])
    with pytest.raises(ValueError, match="`alpha` must be <= 1"):
        R.convex_fusion(ids_a, s_a, ids_b, s_b, 3, alpha=2.0)
    with pytest.raises(ValueError, match="`k` must be <= 6"):
        R.convex_fusion(ids_a, s_a, ids_b, s_b, 7)


def test_metrics():
    ranked = jnp.array([[4, 2, 9], [1, 0, 3], [5, 6, 7]])
    rel = jnp.array([2, 1, 8])
    np.testing.assert_allclose(R.mrr_at_k(ranked, rel, 10), (0.5 + 1.0 + 0.0) / 3)
    np.testing.assert_allclose(R.recall_at_k(ranked, rel, 1), 1 / 3)

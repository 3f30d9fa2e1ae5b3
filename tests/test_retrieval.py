"""sparsejax.retrieval encoders, losses and pruning against plain numpy transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import retrieval as R


def _np_splade(logits, mask, pooling, activation):
    x = np.log1p(np.maximum(logits * mask[..., None], 0.0))
    if activation == "log1p_relu":
        x = np.log1p(x)
    return x.max(1) if pooling == "max" else x.sum(1)


@pytest.mark.parametrize("pooling", ["max", "sum"])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
def test_splade_pool_matches_numpy(pooling, activation):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)
    got = R.splade_pool(jnp.asarray(logits), jnp.asarray(mask), pooling=pooling,
                        activation=activation)
    want = _np_splade(logits.astype(np.float64), mask, pooling, activation)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(got)[2] == 0)  # no real token -> empty vector


def test_splade_pool_ignores_masked_tokens_and_has_gradients():
    logits = jnp.array([[[1.0, -2.0], [5.0, 5.0]]])
    mask = jnp.array([[1, 0]])
    np.testing.assert_allclose(R.splade_pool(logits, mask), [[np.log1p(1.0), 0.0]], rtol=1e-6)
    g = jax.grad(lambda x: R.splade_pool(x, mask).sum())(logits)
    np.testing.assert_allclose(g, [[[0.5, 0.0], [0.0, 0.0]]], rtol=1e-6)


def test_splade_pool_rejects_bad_arguments():
    x = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        R.splade_pool(x, jnp.ones((2, 3)), pooling="mean")
    with pytest.raises(ValueError, match="`activation` must be one of"):
        R.splade_pool(x, jnp.ones((2, 3)), activation="gelu")
    with pytest.raises(ValueError, match="`attention_mask` must"):
        R.splade_pool(x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`logits` must"):
        R.splade_pool(jnp.zeros((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="`logits` must"):
        R.splade_pool(jnp.zeros((2, 3, 4), jnp.int32), jnp.ones((2, 3)))


def test_tied_mlm_logits():
    rng = np.random.default_rng(1)
    h, e, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(7, 4)), rng.normal(size=7)
    got = R.tied_mlm_logits(jnp.asarray(h, jnp.float32), jnp.asarray(e, jnp.float32),
                            jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(got, np.einsum("bld,vd->blv", h, e) + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`word_embeddings` must"):
        R.tied_mlm_logits(jnp.zeros((2, 3, 4)), jnp.zeros((7, 5)))


@pytest.mark.parametrize("pooling", ["max", "sum"])
def test_term_weight_pool_matches_loop(pooling):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 6, size=(3, 7))
    w = rng.random((3, 7)).astype(np.float32)
    mask = (rng.random((3, 7)) < 0.7).astype(np.int32)
    want = np.zeros((3, 6))
    for b in range(3):
        for t in range(7):
            if mask[b, t]:
                v = want[b, ids[b, t]]
                want[b, ids[b, t]] = max(v, w[b, t]) if pooling == "max" else v + w[b, t]
    got = R.term_weight_pool(jnp.asarray(w), jnp.asarray(ids), jnp.asarray(mask), 6,
                             pooling=pooling)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="`vocab_size` must be >= 1"):
        R.term_weight_pool(jnp.asarray(w), jnp.asarray(ids), jnp.asarray(mask), 0)


def test_idf_matches_bm25_formula_and_counts_repeats_once():
    docs = np.array([[1, 1, 2, 0], [2, 3, 0, 0], [4, 2, 2, 2]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    got = np.asarray(R.idf(jnp.asarray(docs), 6, jnp.asarray(mask)))
    df = np.array([sum(v in set(d[m.astype(bool)]) for d, m in zip(docs, mask))
                   for v in range(6)], float)
    np.testing.assert_allclose(got, np.log1p((3 - df + 0.5) / (df + 0.5)), rtol=1e-6)
    assert got[0] == got[5]  # term 0 only appears as padding
    with pytest.raises(TypeError, match="`doc_term_ids` must"):
        R.idf(jnp.zeros((2, 3)), 6)


def test_idf_matches_bm25s_peer():
    pytest.importorskip("bm25s")
    corpus = ["the cat sat", "the dog sat down", "a cat and a dog", "birds fly"]
    tokens = [c.split() for c in corpus]
    vocab = sorted({t for d in tokens for t in d})
    ids = np.full((4, 5), 0)
    mask = np.zeros((4, 5), np.int32)
    for i, d in enumerate(tokens):
        ids[i, :len(d)] = [vocab.index(t) for t in d]
        mask[i, :len(d)] = 1
    got = np.asarray(R.idf(jnp.asarray(ids), len(vocab), jnp.asarray(mask)))
    df = {t: sum(t in d for d in tokens) for t in vocab}
    from bm25s.scoring import _score_idf_lucene

    want = np.array([_score_idf_lucene(df[t], 4) for t in vocab])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_inference_free_query():
    idf = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0])
    ids = jnp.array([[0, 2, 2, 4, 1], [0, 3, 1, 1, 1]])
    mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    got = R.inference_free_query(ids, mask, idf, special_ids=(0,))
    np.testing.assert_array_equal(got, [[0, 0, 2, 0, 4], [0, 1, 0, 3, 0]])
    with pytest.raises(ValueError, match="`special_ids` must be <= 4"):
        R.inference_free_query(ids, mask, idf, special_ids=(9,))


def test_flops_l1_and_l0_masked_variant():
    rng = np.random.default_rng(3)
    w = np.maximum(rng.normal(size=(6, 9)), 0).astype(np.float32)
    w[0] = 0
    w[1, 1:] = 0
    w[1, 0] = 2.0
    np.testing.assert_allclose(R.flops_loss(jnp.asarray(w)),
                               np.sum(np.mean(np.abs(w), 0) ** 2), rtol=1e-6)
    np.testing.assert_allclose(R.l1_loss(jnp.asarray(w)), np.mean(np.abs(w).sum(1)), rtol=1e-6)
    keep = (w != 0).sum(1) > 1
    masked = w * keep[:, None]
    np.testing.assert_allclose(R.flops_loss(jnp.asarray(w), threshold=1),
                               np.sum(np.mean(masked, 0) ** 2), rtol=1e-6)
    assert float(R.flops_loss(jnp.asarray(w), threshold=1)) < float(R.flops_loss(jnp.asarray(w)))
    with pytest.raises(ValueError, match="`threshold` must be >= 0"):
        R.flops_loss(jnp.asarray(w), threshold=-1)


def test_regularizer_weight_quadratic_warmup():
    got = [float(R.regularizer_weight(s, 2.0, 4)) for s in range(7)]
    np.testing.assert_allclose(got, [0, 0.125, 0.5, 1.125, 2, 2, 2])
    assert float(jax.jit(lambda s: R.regularizer_weight(s, 2.0, 4))(2)) == 0.5
    with pytest.raises(ValueError, match="`warmup_steps` must be >= 1"):
        R.regularizer_weight(0, 1.0, 0)


def test_contrastive_loss_in_batch_negatives():
    rng = np.random.default_rng(4)
    q, d = rng.random((3, 5)), rng.random((5, 5))  # 2 extra hard negatives
    s = q @ d.T / 0.5
    want = np.mean([np.log(np.exp(s[i]).sum()) - s[i, i] for i in range(3)])
    got = R.contrastive_loss(jnp.asarray(q, jnp.float32), jnp.asarray(d, jnp.float32),
                             temperature=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="`docs` must"):
        R.contrastive_loss(jnp.ones((3, 5)), jnp.ones((2, 5)))


def test_max_active_dims_and_fraction_rule():
    x = jnp.array([[0.5, -3.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(R.max_active_dims(x, 2), [[0, -3, 2, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(R.max_active_dims(x, 9), x)
    np.testing.assert_array_equal(R.keep_above_fraction(x, 0.5), [[0, -3, 2, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(R.keep_above_fraction(x, 1.0), jnp.zeros((2, 4)))
    np.testing.assert_array_equal(R.keep_above_fraction(x, 0.0), [[0.5, -3, 2, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="`fraction` must be <= 1"):
        R.keep_above_fraction(x, 1.5)
    with pytest.raises(ValueError, match="`k` must be >= 0"):
        R.max_active_dims(x, -1)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 12))
def test_max_active_dims_keeps_the_k_largest(seed, k):
    x = np.random.default_rng(seed).normal(size=(4, 12)).astype(np.float32)
    got = np.asarray(R.max_active_dims(jnp.asarray(x), k))
    for row, out in zip(x, got):
        kept = np.flatnonzero(out)
        assert len(kept) == k
        np.testing.assert_array_equal(out[kept], row[kept])
        if 0 < k < 12:
            assert np.abs(row[kept]).min() >= np.abs(np.delete(row, kept)).max()


def test_term_weight_head_and_layers():
    from sparsejax import nn

    rng = np.random.default_rng(5)
    states = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    ids, mask = jnp.array([[1, 2, 2, 0], [3, 3, 1, 0]]), jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 1)), jnp.float32), "bias": jnp.ones(1)}
    w = np.maximum(np.asarray(states) @ np.asarray(params["kernel"])[:, 0] + 1.0, 0)
    want = np.zeros((2, 5))
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                want[b, ids[b, t]] = max(want[b, ids[b, t]], w[b, t])
    np.testing.assert_allclose(R.term_weight_head(params, states, ids, mask, 5), want, rtol=1e-5)
    # untrained head: a binary bag of the real tokens
    bag = np.asarray(nn.TermWeightHead(3, 5)(states, ids, mask))
    np.testing.assert_array_equal(bag, [[0, 1, 1, 0, 0], [1, 1, 0, 1, 0]])
    np.testing.assert_array_equal(nn.eqx.TermWeightHead(3, 5)(states, ids, mask), bag)
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        nn.eqx.TermWeightHead(3, 5, pooling="mean")

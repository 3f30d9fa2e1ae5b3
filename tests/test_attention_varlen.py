"""Variable-length batches as block masks (padding_mask, segment_mask) against
jax.nn.dot_product_attention with the equivalent lengths or dense mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.attention import BlockMask, attention, causal_mask, padding_mask, segment_mask
from sparsejax.attention.mask import evaluate_predicate

B, H, L, D, BS = 3, 2, 40, 8, 8


def _qkv(seed=0, lk=L):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (B, H, L, D))
    k = jax.random.normal(ks[1], (B, H, lk, D))
    v = jax.random.normal(ks[2], (B, H, lk, D))
    return q, k, v


def _jax_dpa(q, k, v, **kw):
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B, H, L, D] <-> [B, L, H, D]
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v), implementation="xla", **kw))


def _brute_map(dense, bq, bk):
    """Block kinds of a dense mask (from_dense is tested against loops in test_attention_mask)."""
    return np.asarray(BlockMask.from_dense(np.asarray(dense), bq, bk).block_map)


@pytest.mark.parametrize("static", [True, False])
def test_padding_mask_matches_jax_kv_lengths(static):
    q, k, v = _qkv(0)
    lengths = np.array([40, 17, 3], np.int32)
    kvl = lengths if static else jnp.asarray(lengths)
    mask = padding_mask(kvl, L, block_q=BS, block_kv=BS)
    assert mask.is_static == static
    # exact block map, no dense mask inside the mask
    want = np.arange(L)[None, None, None, :] < lengths[:, None, None, None]
    want = np.ascontiguousarray(np.broadcast_to(want, (B, 1, L, L)))
    np.testing.assert_array_equal(np.asarray(mask.block_map), _brute_map(want, BS, BS))
    assert max(x.size for x in jax.tree_util.tree_leaves(mask.predicate)) == B
    got = attention(q, k, v, mask, causal=True, backend="xla")
    ref = _jax_dpa(q, k, v, is_causal=True, key_value_seq_lengths=jnp.asarray(lengths))
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)


def test_padding_mask_query_lengths_and_jit():
    q, k, v = _qkv(1)
    ql, kvl = jnp.array([40, 20, 9]), jnp.array([33, 20, 9])

    @jax.jit
    def run(q, k, v, ql, kvl):
        mask = padding_mask(kvl, L, q_lengths=ql, block_q=BS, block_kv=BS)
        return attention(q, k, v, mask, backend="xla")

    got = run(q, k, v, ql, kvl)
    ref = _jax_dpa(q, k, v, query_seq_lengths=ql, key_value_seq_lengths=kvl)
    rows = np.arange(L)[None, None, :, None] < np.asarray(ql)[:, None, None, None]
    np.testing.assert_allclose(np.where(rows, got, 0), np.where(rows, ref, 0), atol=2e-5)
    np.testing.assert_array_equal(np.where(rows, 0, got), 0)  # padded queries output zeros


def test_segment_mask_matches_dense_reference():
    q, k, v = _qkv(2)
    ids = np.zeros((B, L), np.int32)
    ids[0, 13:] = 1
    ids[0, 30:] = 2
    ids[1, :] = np.repeat(np.arange(5), 8)
    ids[2, 21:] = 7  # padding as its own segment
    for static in (True, False):
        seg = ids if static else jnp.asarray(ids)
        mask = segment_mask(seg, block_q=BS, block_kv=BS) & causal_mask(L, block_q=BS, block_kv=BS)
        dense = (ids[:, None, :, None] == ids[:, None, None, :]) & np.tril(np.ones((L, L), bool))
        np.testing.assert_array_equal(np.asarray(mask.to_dense()), dense)
        got = attention(q, k, v, mask, backend="xla")
        ref = _jax_dpa(q, k, v, mask=jnp.asarray(dense))
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=2e-5)
    plain = segment_mask(ids, block_q=BS, block_kv=BS)
    same = ids[:, None, :, None] == ids[:, None, None, :]
    np.testing.assert_array_equal(plain.block_map, _brute_map(same, BS, BS))
    assert float(plain.density) < 0.6  # cross-segment blocks are skipped
    pred = evaluate_predicate(plain.predicate, B, 1, L, L)
    np.testing.assert_array_equal(np.asarray(pred), same)


def test_segment_mask_cross_lengths():
    q_ids = np.array([[0, 0, 1, 1, 1]])
    kv_ids = np.array([[0, 1, 1, 1, 1, 1, 2]])
    m = segment_mask(q_ids, kv_ids, block_q=2, block_kv=3)
    want = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
    np.testing.assert_array_equal(np.asarray(m.to_dense()), want)
    np.testing.assert_array_equal(m.block_map, _brute_map(want, 2, 3))


def test_errors():
    with pytest.raises(TypeError, match="kv_lengths"):
        padding_mask(np.array([1.5, 2.0]), 8)
    with pytest.raises(ValueError, match="q_lengths"):
        padding_mask(np.array([1, 2]), 8, q_lengths=np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="segment_ids"):
        segment_mask(np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="kv_segment_ids"):
        segment_mask(np.zeros((2, 8), np.int32), np.zeros((3, 8), np.int32))


def test_dynamic_varlen_maps_eager_equal_jit_and_static():
    """jax ids/lengths build the block map in one jitted program; eager, under jit and from
    NumPy (the static path) give the same map."""
    lens, qlens = np.array([5, 40, 17]), np.array([40, 9, 33])
    ids = np.repeat(np.arange(4), [7, 13, 1, 19])[None].repeat(2, 0)
    ids[1] = np.sort(ids[1] * 3 % 5)
    for build, args in (
        (lambda a, b: padding_mask(a, 40, 36, q_lengths=b, block_q=8, block_kv=16).block_map,
         (lens, qlens)),
        (lambda a, b: segment_mask(a, b, block_q=8, block_kv=16).block_map, (ids, ids[:, :36])),
    ):
        static = build(*args)
        assert isinstance(static, np.ndarray)
        jargs = [jnp.asarray(a) for a in args]
        np.testing.assert_array_equal(np.asarray(build(*jargs)), static)
        np.testing.assert_array_equal(np.asarray(jax.jit(build)(*jargs)), static)

"""Tests for the block mask type and the static attention patterns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.attention import (
    BlockMask,
    causal_mask,
    chunked_causal_mask,
    full_mask,
    global_band_mask,
    sink_window_mask,
    sliding_window_mask,
    stack_heads,
)
from sparsejax.attention.mask import EMPTY, FULL, PARTIAL, FunctionPredicate, evaluate_predicate


def brute_block_map(dense, bq, bk):
    """Classify blocks of a dense [B, H, Lq, Lk] mask over valid tokens, with plain loops."""
    b, h, lq, lk = dense.shape
    nq, nk = -(-lq // bq), -(-lk // bk)
    out = np.zeros((b, h, nq, nk), np.int8)
    for i in range(nq):
        for j in range(nk):
            tile = dense[:, :, i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
            out[:, :, i, j] = np.where(
                tile.all(axis=(2, 3)), FULL, np.where(tile.any(axis=(2, 3)), PARTIAL, EMPTY)
            )
    return out


def assert_consistent(mask):
    """The predicate agrees with the block map: to_dense (block map + predicate) == predicate."""
    bm, hm = mask.block_map.shape[:2]
    pred = np.asarray(evaluate_predicate(mask.predicate, bm, hm, mask.seq_q, mask.seq_kv))
    np.testing.assert_array_equal(np.asarray(mask.to_dense()), pred)


masks_shapes = st.tuples(
    st.sampled_from([1, 2]),  # batch
    st.sampled_from([1, 3]),  # heads
    st.sampled_from([1, 16, 37]),  # seq_q (few shapes: keeps jit caches warm)
    st.sampled_from([3, 16, 29]),  # seq_kv
    st.sampled_from([1, 8, 16]),  # block_q
    st.sampled_from([5, 8]),  # block_kv
    st.floats(0.0, 1.0),  # density
    st.integers(0, 2**16),  # seed
)


@settings(max_examples=15, deadline=None)
@given(masks_shapes)
def test_from_dense_roundtrip_and_block_map(args):
    b, h, lq, lk, bq, bk, density, seed = args
    dense = np.random.default_rng(seed).random((b, h, lq, lk)) < density
    m = BlockMask.from_dense(dense, bq, bk)
    assert m.is_static
    np.testing.assert_array_equal(np.asarray(m.to_dense()), dense)
    np.testing.assert_array_equal(m.block_map, brute_block_map(dense, bq, bk))
    assert m.max_kv_blocks == int((m.block_map != EMPTY).sum(-1).max())
    np.testing.assert_allclose(float(m.token_density), dense.mean())
    np.testing.assert_allclose(float(m.density), (m.block_map != EMPTY).mean())


@settings(max_examples=15, deadline=None)
@given(masks_shapes, st.integers(0, 2**16))
def test_or_and_match_dense_logic(args, seed2):
    b, h, lq, lk, bq, bk, density, seed = args
    rng = np.random.default_rng(seed)
    d1 = rng.random((b, h, lq, lk)) < density
    d2 = np.random.default_rng(seed2).random((1, h, lq, lk)) < 0.5
    m1, m2 = BlockMask.from_dense(d1, bq, bk), BlockMask.from_dense(d2, bq, bk)
    c = causal_mask(lq, lk, block_q=bq, block_kv=bk)
    tril = np.tril(np.ones((lq, lk), bool))
    for got, want in [
        (m1 | m2, d1 | d2),
        (m1 & m2, d1 & d2),
        (m1 | c, d1 | tril),
        (m1 & c, d1 & tril),
        ((m1 & c) | m2, (d1 & tril) | d2),
    ]:
        np.testing.assert_array_equal(np.asarray(got.to_dense()), np.broadcast_to(want, got.shape))
        assert_consistent(got)


@settings(max_examples=15, deadline=None)
@given(masks_shapes)
def test_from_blocks(args):
    b, h, lq, lk, bq, bk, density, seed = args
    rng = np.random.default_rng(seed)
    nq, nk = -(-lq // bq), -(-lk // bk)
    blocks = rng.random((b, h, nq, nk)) < density
    expand = np.repeat(np.repeat(blocks, bq, 2), bk, 3)[:, :, :lq, :lk]
    m = BlockMask.from_blocks(blocks, bq, bk, lq, lk)
    np.testing.assert_array_equal(np.asarray(m.to_dense()), expand)
    assert set(np.unique(m.block_map)) <= {EMPTY, FULL}
    tok = rng.random((1, h, lq, lk)) < 0.5
    m2 = BlockMask.from_blocks(blocks, bq, bk, lq, lk, token_mask=tok)
    np.testing.assert_array_equal(np.asarray(m2.to_dense()), expand & tok)
    np.testing.assert_array_equal(m2.block_map, brute_block_map(expand & tok, bq, bk))
    # a lazy token predicate inside kept blocks
    pred = FunctionPredicate(lambda b_, h_, q, kv: (q + kv) % 3 == 0)
    m3 = BlockMask.from_blocks(blocks, bq, bk, lq, lk, token_mask=pred)
    qq, kk = np.mgrid[:lq, :lk]
    np.testing.assert_array_equal(np.asarray(m3.to_dense()), expand & ((qq + kk) % 3 == 0))
    # composition keeps exact semantics with block-level masks
    np.testing.assert_array_equal(
        np.asarray((m | m2).to_dense()), np.broadcast_to(expand | (expand & tok), (b, h, lq, lk))
    )


def test_info_lists_kept_blocks_in_order():
    bmap = np.array([[[[0, 2, 1, 0], [0, 0, 0, 0], [2, 2, 2, 1]]]], np.int8)
    m = BlockMask.from_blocks(bmap != 0, 4, 4, 12, 16)
    m = BlockMask.create(
        bmap, m.predicate, seq_q=12, seq_kv=16, block_q=4, block_kv=4
    )
    info = m.info()
    assert m.max_kv_blocks == 4
    np.testing.assert_array_equal(info.counts[0, 0], [2, 0, 4])
    np.testing.assert_array_equal(info.kv_indices[0, 0], [[1, 2, 2, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(
        info.block_kinds[0, 0], [[FULL, PARTIAL, EMPTY, EMPTY], [0, 0, 0, 0], [2, 2, 2, 1]]
    )
    assert m.info() is m.info()  # static: computed once


@settings(max_examples=15, deadline=None)
@given(masks_shapes)
def test_info_dynamic_matches_static(args):
    b, h, lq, lk, bq, bk, density, seed = args
    dense = np.random.default_rng(seed).random((b, h, lq, lk)) < density
    static = BlockMask.from_dense(dense, bq, bk)
    width = max(static.max_kv_blocks, 1)

    @jax.jit
    def build(x):
        m = BlockMask.from_dense(x, bq, bk)
        assert not m.is_static and m.max_kv_blocks == m.num_kv_blocks
        return m.info()

    dyn = build(jnp.asarray(dense))
    s = static.info()
    np.testing.assert_array_equal(np.asarray(dyn.counts), s.counts)
    np.testing.assert_array_equal(np.asarray(dyn.kv_indices)[..., :width], s.kv_indices)
    np.testing.assert_array_equal(np.asarray(dyn.block_kinds)[..., :width], s.block_kinds)
    assert (np.asarray(dyn.block_kinds)[..., width:] == EMPTY).all()
    # brute force: for each row, the kept indices ascending
    for idx in np.ndindex(*s.counts.shape):
        kept = np.nonzero(static.block_map[idx] != EMPTY)[0]
        np.testing.assert_array_equal(s.kv_indices[idx][: len(kept)], kept)


def test_dynamic_mask_is_a_pytree_through_jit():
    dense = jnp.asarray(np.random.default_rng(0).random((1, 2, 20, 24)) < 0.3)
    m = jax.jit(lambda x: BlockMask.from_dense(x, 8, 8))(dense)
    assert not m.is_static
    with pytest.raises(TypeError, match="not hashable"):
        hash(m)
    out = jax.jit(lambda mm: mm.to_dense())(m)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(dense))
    np.testing.assert_array_equal(np.asarray(m.to_dense()), np.asarray(dense))  # eager
    eager = BlockMask.from_dense(dense, 8, 8)  # eager jax: the same block map as under jit
    np.testing.assert_array_equal(np.asarray(eager.block_map), np.asarray(m.block_map))
    np.testing.assert_array_equal(eager.block_map, BlockMask.from_dense(np.asarray(dense), 8, 8).block_map)
    sel = jnp.asarray(np.random.default_rng(1).random((1, 2, 3, 3)) < 0.5)
    for tok in (None, FunctionPredicate(lambda b, h, q, kv: (q + kv) % 2 == 0)):
        e = BlockMask.from_blocks(sel, 8, 8, 20, 24, tok)
        j = jax.jit(lambda s_, t_=tok: BlockMask.from_blocks(s_, 8, 8, 20, 24, t_))(sel)
        np.testing.assert_array_equal(np.asarray(e.block_map), np.asarray(j.block_map))
        np.testing.assert_array_equal(np.asarray(e.to_dense()), np.asarray(j.to_dense()))
    both = m & causal_mask(20, 24, block_q=8, block_kv=8)  # dynamic & static, eager vs jit
    want = np.asarray(dense) & np.tril(np.ones((20, 24), bool))
    np.testing.assert_array_equal(np.asarray(both.to_dense()), np.broadcast_to(want, (1, 2, 20, 24)))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda mm: mm.to_dense())(both)),
                                  np.asarray(both.to_dense()))
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == 2  # block map + dense token mask


def test_static_hash_and_eq():
    a = causal_mask(100, block_q=16, block_kv=32)
    b = causal_mask(100, block_q=16, block_kv=32)
    assert a == b and hash(a) == hash(b)
    assert a != causal_mask(100, block_q=16, block_kv=16)
    assert a != sliding_window_mask(100, window=(9, 0), block_q=16, block_kv=32)
    assert len({a, b}) == 1


def _ij(lq, lk):
    return np.mgrid[:lq, :lk]


@pytest.mark.parametrize("lq,lk,bq,bk", [(100, 100, 16, 32), (77, 93, 8, 16), (50, 30, 64, 64)])
def test_static_patterns_match_formulas(lq, lk, bq, bk):
    i, j = _ij(lq, lk)
    geo = dict(block_q=bq, block_kv=bk)
    cases = [
        (full_mask(lq, lk, **geo), np.ones((lq, lk), bool)),
        (causal_mask(lq, lk, **geo), j <= i),
        (causal_mask(lq, lk, offset=lk - lq, **geo), j <= i + lk - lq),
        (sliding_window_mask(lq, lk, window=(8, 0), **geo), (j <= i) & (i - j < 9)),
        (sliding_window_mask(lq, lk, window=(4, 4), **geo), np.abs(i - j) < 5),
        (sliding_window_mask(lq, lk, window=(3, 11), **geo), (i - 3 <= j) & (j <= i + 11)),
        (sliding_window_mask(lq, lk, window=(0, 6), offset=2, **geo), (i + 2 <= j) & (j <= i + 8)),
        (sliding_window_mask(lq, lk, window=(None, 2), **geo), j <= i + 2),
        (sliding_window_mask(lq, lk, window=(5, None), **geo), j >= i - 5),
        (sink_window_mask(lq, lk, sink=4, window=13, **geo), (j <= i) & ((j < 4) | (i - j < 13))),
        (chunked_causal_mask(lq, lk, chunk=20, **geo), (j <= i) & (i // 20 == j // 20)),
        (
            global_band_mask(lq, lk, band=3, num_global=5, **geo),
            (np.abs(i - j) <= 3) | (j < 5) | (i < 5),
        ),
        (
            global_band_mask(lq, lk, band=3, num_global=5, causal=True, **geo),
            ((np.abs(i - j) <= 3) | (j < 5) | (i < 5)) & (j <= i),
        ),
    ]
    for m, want in cases:
        assert m.is_static
        np.testing.assert_array_equal(np.asarray(m.to_dense())[0, 0], want)
        assert_consistent(m)
        # exact classification: the block map equals the brute-force one
        brute = brute_block_map(want[None, None], bq, bk)
        np.testing.assert_array_equal(m.block_map, brute)


def test_sliding_window_density_scales():
    m = sliding_window_mask(4096, window=(255, 0), block_q=128, block_kv=128)
    assert m.max_kv_blocks == 3
    assert float(m.density) < 0.1


def test_stack_heads():
    a = causal_mask(40, block_q=8, block_kv=8)
    b = sliding_window_mask(40, window=(5, 0), block_q=8, block_kv=8)
    m = stack_heads([a, b])
    assert m.block_map.shape == (1, 2, 5, 5)
    dense = np.asarray(m.to_dense())
    np.testing.assert_array_equal(dense[0, 0], np.asarray(a.to_dense())[0, 0])
    np.testing.assert_array_equal(dense[0, 1], np.asarray(b.to_dense())[0, 0])
    assert_consistent(m)


def test_broadcast_to():
    m = causal_mask(20, block_q=8, block_kv=8).broadcast_to(2, 3)
    assert m.block_map.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(np.asarray(m.to_dense())[1, 2], np.tril(np.ones((20, 20), bool)))
    with pytest.raises(ValueError, match="cannot broadcast"):
        m.broadcast_to(4, 3)


def test_errors():
    with pytest.raises(ValueError, match="`block_q` must be >= 1"):
        BlockMask.from_dense(np.ones((4, 4), bool), 0, 2)
    with pytest.raises(TypeError, match="`block_kv` must be a Python int"):
        BlockMask.from_dense(np.ones((4, 4), bool), 2, 2.5)
    with pytest.raises(TypeError, match="token_mask must be a bool array"):
        BlockMask.from_dense(np.ones((4, 4)), 2, 2)
    with pytest.raises(ValueError, match="token_mask must have 2 or 4 dims"):
        BlockMask.from_dense(np.ones((4, 4, 4), bool), 2, 2)
    with pytest.raises(TypeError, match="block_bool must be a bool array"):
        BlockMask.from_blocks(np.ones((1, 1, 2, 2)), 2, 2, 4, 4)
    with pytest.raises(ValueError, match="block grid"):
        BlockMask.from_blocks(np.ones((1, 1, 2, 2), bool), 2, 2, 4, 8)
    with pytest.raises(ValueError, match="block_map must have 4 dims"):
        BlockMask.create(
            np.ones((2, 2), np.int8), full_mask(4).predicate, seq_q=4, seq_kv=4, block_q=2,
            block_kv=2,
        )
    with pytest.raises(TypeError, match="predicate must be a TokenPredicate"):
        BlockMask.create(
            np.ones((1, 1, 2, 2), np.int8), None, seq_q=4, seq_kv=4, block_q=2, block_kv=2
        )
    with pytest.raises(ValueError, match="cannot combine masks with different"):
        causal_mask(8, block_q=2, block_kv=2) | causal_mask(8, block_q=4, block_kv=2)
    with pytest.raises(ValueError, match="cannot combine masks with heads dims 2 and 3"):
        causal_mask(8).broadcast_to(1, 2) & causal_mask(8).broadcast_to(1, 3)
    with pytest.raises(ValueError, match=r"`window\[0\]` must be >= 0"):
        sliding_window_mask(8, window=(-1, 0))
    with pytest.raises(TypeError, match=r"\(left, right\) tuple"):
        sliding_window_mask(8, window=4)
    with pytest.raises(TypeError, match="`sink` must be a Python int"):
        sink_window_mask(8, sink=1.5, window=2)
    with pytest.raises(ValueError, match="`chunk` must be >= 1"):
        chunked_causal_mask(8, chunk=0)
    with pytest.raises(ValueError, match="`band` must be >= 0"):
        global_band_mask(8, band=-1, num_global=1)
    with pytest.raises(ValueError, match="`seq_q` must be >= 1"):
        causal_mask(0)
    with pytest.raises(ValueError, match="non-empty"):
        stack_heads([])
    with pytest.raises(ValueError, match="head dim 1"):
        stack_heads([causal_mask(8).broadcast_to(1, 2)])

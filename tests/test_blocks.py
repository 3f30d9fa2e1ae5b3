"""The shared block index (`sparsejax._blocks`) against a plain-Python reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax._blocks import (
    EMPTY,
    FULL,
    PARTIAL,
    BlockIndex,
    pack_block_map,
    pack_blocks,
    pack_indices,
    slot_mask,
)


def _ref_pack(keep: np.ndarray, width: int, pad: str):
    """Row by row: kept positions ascending, first `width` of them, padded."""
    lead = keep.shape[:-1]
    idx = np.zeros(lead + (width,), np.int32)
    counts = np.zeros(lead, np.int32)
    for pos in np.ndindex(*lead):
        kept = np.nonzero(keep[pos])[0][:width]
        counts[pos] = kept.size
        fill = (kept[-1] if kept.size else 0) if pad == "last" else 0
        idx[pos] = np.concatenate([kept, np.full(width - kept.size, fill)]).astype(np.int32)
    return idx, counts


@pytest.mark.parametrize("pad", ["last", "zero"])
@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_pack_indices_matches_reference_numpy_and_jax(pad, width):
    keep = np.random.default_rng(width).random((2, 3, 5)) < 0.5
    keep[0, 0] = False  # an empty row
    keep[1, 2] = True  # a full row
    ref_idx, ref_counts = _ref_pack(keep, width, pad)
    idx, counts = pack_indices(keep, width, pad=pad)
    assert isinstance(idx, np.ndarray) and isinstance(counts, np.ndarray)  # static stays NumPy
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(counts, ref_counts)
    jidx, jcounts = jax.jit(lambda k: pack_indices(k, width, pad=pad))(jnp.asarray(keep))
    np.testing.assert_array_equal(jidx, ref_idx)
    np.testing.assert_array_equal(jcounts, ref_counts)
    eidx, ecounts = pack_indices(jnp.asarray(keep), width, pad=pad)  # eager jax: one program
    assert isinstance(eidx, jax.Array)
    np.testing.assert_array_equal(eidx, ref_idx)
    np.testing.assert_array_equal(ecounts, ref_counts)
    np.testing.assert_array_equal(slot_mask(counts, width), np.arange(width) < ref_counts[..., None])


def test_pack_indices_default_width_and_errors():
    keep = np.array([[True, False, True], [False, False, False]])
    idx, counts = pack_indices(keep)
    assert idx.shape == (2, 2) and counts.tolist() == [2, 0]
    assert pack_indices(np.zeros((2, 3), bool))[0].shape == (2, 1)  # at least one slot
    assert pack_indices(keep, 0)[0].shape == (2, 0)
    with pytest.raises(TypeError, match="`keep` must be a bool"):
        pack_indices(np.ones((2, 3)), 2)
    with pytest.raises(ValueError, match="`pad`"):
        pack_indices(keep, 2, pad="edge")
    with pytest.raises(ValueError, match="width"):
        jax.jit(lambda k: pack_indices(k))(jnp.asarray(keep))
    with pytest.raises(ValueError, match="width"):
        pack_indices(keep, -1)


def test_pack_blocks_kinds_and_inverse():
    block_map = np.array([[[0, 2, 1, 0], [0, 0, 0, 0], [2, 2, 2, 1]]], np.int8)
    info = pack_block_map(block_map, 4)
    np.testing.assert_array_equal(info.indices[0], [[1, 2, 2, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(info.counts[0], [2, 0, 4])
    np.testing.assert_array_equal(
        info.kinds[0], [[FULL, PARTIAL, EMPTY, EMPTY], [0, 0, 0, 0], [2, 2, 2, 1]])
    assert info.kv_indices is info.indices and info.block_kinds is info.kinds
    np.testing.assert_array_equal(info.to_block_map(4), block_map)
    np.testing.assert_array_equal(info.to_keep(4), block_map != EMPTY)
    # the same through jit, as a pytree
    out = jax.jit(lambda m: pack_block_map(m, 4))(jnp.asarray(block_map))
    assert isinstance(out, BlockIndex)
    for a, b in zip(out, info):
        np.testing.assert_array_equal(a, b)
    eager = pack_block_map(jnp.asarray(block_map))  # eager jax, width from the data
    assert isinstance(eager.kinds, jax.Array) and eager.width == 4
    for a, b in zip(eager, info):
        np.testing.assert_array_equal(a, b)
    plain = pack_blocks(block_map != EMPTY)
    assert plain.kinds is None and plain.width == 4
    np.testing.assert_array_equal(plain.to_block_map(4), np.where(block_map != EMPTY, FULL, EMPTY))
    with pytest.raises(ValueError, match="`kinds` must have"):
        pack_blocks(block_map != EMPTY, kinds=block_map[0])
    with pytest.raises(ValueError, match="block grid"):
        pack_blocks(np.ones((3,), bool))


# ---------------------------------------------------------------------------------------------
# one mask drives an attention and a block-sparse matmul
# ---------------------------------------------------------------------------------------------


def _np_attention(q, k, v, keep):
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)


def test_block_mask_drives_attention_and_block_sparse_matmul():
    from sparsejax import ops
    from sparsejax.attention import BlockMask, attention

    seq, blk = 64, 16
    rng = np.random.default_rng(0)
    keep_blocks = rng.random((4, 4)) < 0.5
    keep_blocks[np.arange(4), np.arange(4)] = True  # every query row keeps a block
    mask = BlockMask.from_blocks(keep_blocks[None, None], blk, blk, seq, seq)
    q, k, v = (rng.standard_normal((1, 2, seq, 8)).astype(np.float32) for _ in range(3))
    token_keep = np.kron(keep_blocks, np.ones((blk, blk))).astype(bool)
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, backend="xla")
    np.testing.assert_allclose(got, _np_attention(q, k, v, token_keep), rtol=1e-5, atol=1e-5)

    w = rng.standard_normal((seq, seq)).astype(np.float32)
    b = rng.standard_normal((seq, 5)).astype(np.float32)
    a = ops.block_sparse_from_mask(jnp.asarray(w), mask)
    np.testing.assert_array_equal(a.indices, mask.info().indices[0, 0])  # the same block index
    np.testing.assert_array_equal(a.counts, mask.info().counts[0, 0])
    np.testing.assert_array_equal(a.block_mask(), keep_blocks)
    y = ops.bsr_matmul(a, jnp.asarray(b), backend="xla")
    np.testing.assert_allclose(y, (w * token_keep) @ b, rtol=1e-5, atol=1e-4)

    back = ops.block_mask_from_sparse(a)
    assert back.is_static and back.block_map.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(back.block_map[0, 0], np.where(keep_blocks, FULL, EMPTY))
    np.testing.assert_array_equal(back.to_dense()[0, 0], token_keep)
    dyn = jax.jit(lambda a: ops.block_mask_from_sparse(a).block_map)(a)
    np.testing.assert_array_equal(dyn, back.block_map)
    with pytest.raises(ValueError, match="mask's shape"):
        ops.block_sparse_from_mask(jnp.ones((32, 64)), mask)
    with pytest.raises(TypeError, match="BlockMask"):
        ops.block_sparse_from_mask(jnp.ones((64, 64)), keep_blocks)


# ---------------------------------------------------------------------------------------------
# one dispatcher: platform choice, interpret default, fallback only on NotSupportedError
# ---------------------------------------------------------------------------------------------


def test_dispatcher_platforms_and_interpret(monkeypatch):
    from sparsejax import _backend

    assert _backend.resolve_backend("auto") == "xla"  # CPU host
    assert _backend.resolve_interpret(None) is True
    for where, want in (("gpu", "pallas_gpu"), ("cuda", "pallas_gpu"), ("rocm", "pallas_gpu"),
                        ("tpu", "pallas_tpu")):
        monkeypatch.setattr(_backend, "platform", lambda where=where: where)
        assert _backend.resolve_backend("auto") == want
        assert _backend.resolve_interpret(None) is False
        assert _backend.resolve_backend("auto", allowed=("auto", "reference", "xla")) == "xla"
    assert _backend.resolve_interpret(True) is True and _backend.resolve_backend("xla") == "xla"
    with pytest.raises(ValueError, match="`backend` must be one of"):
        _backend.resolve_backend("cuda")


def test_auto_falls_back_only_on_not_supported(monkeypatch):
    from sparsejax import _backend, ops
    from sparsejax.attention import attention, causal_mask
    from sparsejax.formats import BlockSparse

    monkeypatch.setattr(_backend, "platform", lambda: "gpu")  # auto -> pallas_gpu, compiled
    x = jax.random.normal(jax.random.PRNGKey(0), (48, 48))
    a = BlockSparse.from_dense(x, (24, 24), np.array([[True, False], [True, True]]))
    b = jnp.ones((48, 3))
    want = np.asarray(a.to_dense()) @ np.asarray(b)
    np.testing.assert_allclose(ops.bsr_matmul(a, b), want, rtol=1e-5, atol=1e-4)  # fell back
    with pytest.raises(_backend.UnsupportedShapeError, match="power of two"):
        ops.bsr_matmul(a, b, backend="pallas_gpu")
    with pytest.raises(ValueError, match="K = a.shape"):  # bad input is not "not supported"
        ops.bsr_matmul(a, jnp.ones((40, 3)))

    q = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 24, 8))
    mask = causal_mask(24, block_q=8, block_kv=8)  # 8 is below Triton's 16
    ref = attention(q, q, q, mask, backend="reference")
    np.testing.assert_allclose(attention(q, q, q, mask), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(_backend.UnsupportedShapeError, match="`block_q` must be a power of two >= 16.*; got 8"):
        attention(q, q, q, mask, backend="pallas_gpu")
    assert issubclass(_backend.UnsupportedDtypeError, TypeError)

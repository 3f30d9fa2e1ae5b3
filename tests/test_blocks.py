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
    plain = pack_blocks(block_map != EMPTY)
    assert plain.kinds is None and plain.width == 4
    np.testing.assert_array_equal(plain.to_block_map(4), np.where(block_map != EMPTY, FULL, EMPTY))
    with pytest.raises(ValueError, match="`kinds` must have"):
        pack_blocks(block_map != EMPTY, kinds=block_map[0])
    with pytest.raises(ValueError, match="block grid"):
        pack_blocks(np.ones((3,), bool))

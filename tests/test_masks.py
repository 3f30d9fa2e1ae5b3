"""Masks against numpy references: exact counts, tie-breaks, N:M, block, channel, jit/vmap/dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sparsejax as sj
from sparsejax import masks

SETTINGS = settings(max_examples=20, deadline=None)


def ref_count(size, sparsity):
    k = np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity)))
    return int(min(max(k, 1), size))


def ref_topk(scores, k):
    """Plain numpy: stable sort by descending score, NaN last, ties by lower index."""
    flat = np.asarray(scores, np.float64).reshape(-1)
    key = np.where(np.isnan(flat), -np.inf, flat)
    nan_last = np.isnan(flat).astype(int)
    order = np.lexsort((np.arange(flat.size), -key, nan_last))
    # lexsort: last key is primary -> NaN flag, then -score, then index
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(np.shape(scores))


def ref_nm(scores, n, m, axis):
    x = np.moveaxis(np.asarray(scores, np.float64), axis, -1)
    groups = x.reshape(-1, m)
    out = np.zeros_like(groups, bool)
    for g in range(groups.shape[0]):
        order = np.lexsort((np.arange(m), -groups[g]))
        out[g, order[:n]] = True
    return np.moveaxis(out.reshape(x.shape), -1, axis)


# A fixed set of shapes (one to three dims, single entries, ragged sides) with random values: each
# new shape recompiles every eager op, and the three properties below share these compiles.
SHAPES = st.sampled_from([(1,), (2,), (9,), (1, 1), (4, 1), (3, 5), (9, 8), (1, 1, 1),
                          (2, 3, 4), (3, 1, 7)])
floats = hnp.arrays(np.float32, SHAPES, elements=st.floats(-4, 4, width=32))
ties = hnp.arrays(np.float32, SHAPES, elements=st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0]))


@SETTINGS
@given(x=st.one_of(floats, ties), s=st.floats(0, 1))
def test_unstructured_matches_reference(x, s):
    mask = np.asarray(masks.unstructured(jnp.asarray(x), s))
    k = ref_count(x.size, s)
    assert mask.sum() == k
    np.testing.assert_array_equal(mask, ref_topk(np.where(x == 0, 0, x), k))


@SETTINGS
@given(x=floats, s=st.floats(0, 1))
def test_unstructured_jit_traced_sparsity_equals_eager(x, s):
    eager = masks.unstructured(jnp.asarray(x), s)
    jitted = jax.jit(masks.unstructured)(jnp.asarray(x), jnp.float32(s))
    np.testing.assert_array_equal(eager, jitted)


@SETTINGS
@given(x=floats, s=st.floats(0, 1))
def test_magnitude_idempotent(x, s):
    x = np.where(x == 0, 1e-3, x)  # kept weights stay nonzero so re-pruning sees the same order
    m1 = masks.magnitude_mask(jnp.asarray(x), s)
    m2 = masks.magnitude_mask(jnp.where(m1, x, 0), s)
    np.testing.assert_array_equal(m1, m2)


def test_kept_count_rule_and_extremes():
    assert int(masks.kept_count(10, 0.0)) == 10
    assert int(masks.kept_count(10, 1.0)) == 1  # max(1, .)
    assert int(masks.kept_count(10, 0.25)) == 8  # 7.5 rounds half to even
    assert int(masks.kept_count(10, 0.35)) == ref_count(10, 0.35)
    x = jnp.arange(12.0).reshape(3, 4)
    assert int(masks.unstructured(x, 1.0).sum()) == 1
    assert bool(masks.unstructured(x, 1.0)[2, 3])  # the maximum
    assert int(masks.unstructured(x, 0.0).sum()) == 12


def test_nan_and_signed_zero_ranking():
    x = jnp.asarray([np.nan, -np.inf, -0.0, 0.0, 1.0, np.inf], jnp.float32)
    np.testing.assert_array_equal(masks.topk(x, 3), [0, 0, 1, 0, 1, 1])  # -0.0 ties 0.0: lower index
    np.testing.assert_array_equal(masks.topk(x, 5), [0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(masks.topk(x, 6), [1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(masks.topk(x, 0), [0] * 6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtypes(dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 48)).astype(dtype)
    m = masks.unstructured(x, 0.7)
    assert m.dtype == jnp.bool_ and m.shape == x.shape
    assert int(m.sum()) == ref_count(x.size, 0.7)
    np.testing.assert_array_equal(m, ref_topk(np.asarray(x.astype(jnp.float32)), int(m.sum())))
    nm = masks.nm(x, 2, 4, axis=0)
    np.testing.assert_array_equal(nm, ref_nm(np.asarray(x.astype(jnp.float32)), 2, 4, 0))


def test_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(40, 30)))
        assert x.dtype == jnp.float64
        # values that collide in float32 but differ in float64 are ranked by their float64 value
        x = x.at[0, 0].set(1.0 + 1e-12).at[0, 1].set(1.0)
        m = masks.unstructured(x, 0.5)
        np.testing.assert_array_equal(m, ref_topk(np.asarray(x), ref_count(x.size, 0.5)))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_unstructured_per_axis(axis):
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 20))
    m = np.asarray(masks.unstructured(x, 0.6, axis=axis))
    xm = np.moveaxis(np.asarray(x), axis, -1)
    mm = np.moveaxis(m, axis, -1)
    k = ref_count(xm.shape[-1], 0.6)
    for row, mrow in zip(xm.reshape(-1, xm.shape[-1]), mm.reshape(-1, xm.shape[-1])):
        np.testing.assert_array_equal(mrow, ref_topk(row, k))


@SETTINGS
@given(data=st.data(), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8), (0, 4), (4, 4)]))
def test_nm_property(data, nm):
    n, m = nm
    rows = data.draw(st.sampled_from([1, 3])) * m  # one group or several along the axis
    cols = data.draw(st.sampled_from([1, 5]))
    axis = data.draw(st.sampled_from([0, -2]))
    x = data.draw(hnp.arrays(np.float32, (rows, cols),
                             elements=st.sampled_from([0.0, 1.0, 2.0, -3.0, 0.5])))
    mask = np.asarray(masks.nm(jnp.asarray(x), n, m, axis=axis))
    groups = mask.reshape(rows // m, m, cols).sum(1)
    assert (groups == n).all()  # exactly n kept in every group along axis 0
    np.testing.assert_array_equal(mask, ref_nm(x, n, m, 0))
    assert bool(masks.satisfies_nm(mask, n, m, axis=0))


def test_nm_large_group_uses_sort_path():
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 128))
    m = masks.nm(x, 16, 64, axis=-1)
    np.testing.assert_array_equal(m, ref_nm(np.asarray(x), 16, 64, -1))


def test_nm_axis_for_flax_kernel():
    kernel = jax.random.normal(jax.random.PRNGKey(3), (64, 32))  # [in, out]
    m = masks.nm(kernel, 2, 4, axis=0)
    assert bool(masks.satisfies_nm(m, 2, 4, axis=0))
    assert not bool(masks.satisfies_nm(m, 2, 4, axis=-1))


def test_nm_jit_vmap():
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 16, 8))
    batched = jax.vmap(lambda a: masks.nm(a, 2, 4, axis=0))(x)
    for i in range(5):
        np.testing.assert_array_equal(batched[i], masks.nm(x[i], 2, 4, axis=0))
    np.testing.assert_array_equal(jax.jit(lambda a: masks.nm(a, 2, 4, 1))(x), masks.nm(x, 2, 4, 1))


def test_unstructured_vmap_with_batched_sparsity():
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 10, 10))
    s = jnp.asarray([0.1, 0.5, 0.9])
    out = jax.vmap(masks.unstructured)(x, s)
    for i in range(3):
        np.testing.assert_array_equal(out[i], masks.unstructured(x[i], float(s[i])))
        assert int(out[i].sum()) == ref_count(100, float(s[i]))


@SETTINGS
@given(br=st.sampled_from([1, 2, 4]), bc=st.sampled_from([1, 3]), nr=st.sampled_from([1, 3, 4]),
       nc=st.sampled_from([1, 2, 4]), s=st.floats(0, 1),
       reduce=st.sampled_from(["mean", "sum", "max", "l2"]))
def test_block_property(br, bc, nr, nc, s, reduce):
    x = np.random.default_rng(nr * 7 + nc).normal(size=(br * nr, bc * nc)).astype(np.float32)
    mask = np.asarray(masks.block(jnp.asarray(np.abs(x)), (br, bc), s, reduce=reduce))
    tiles = mask.reshape(nr, br, nc, bc)
    assert (tiles == tiles[:, :1, :, :1]).all()  # constant on each tile
    tile_keep = tiles[:, 0, :, 0]
    assert tile_keep.sum() == ref_count(nr * nc, s)
    pooled = {"mean": np.mean, "sum": np.sum, "max": np.max,
              "l2": lambda a, axis: np.sqrt(np.sum(a * a, axis=axis))}[reduce](
        np.abs(x).reshape(nr, br, nc, bc), axis=(1, 3))
    np.testing.assert_array_equal(tile_keep, ref_topk(pooled, ref_count(nr * nc, s)))


@pytest.mark.parametrize("shape, block, reduce", [((7, 10), (4, 4), "mean"), ((5, 6), (2, 4), "max"),
                                                  ((3, 9, 5), (4, 2), "l2"), ((9, 3), (4, 3), "sum")])
def test_block_partial_edge_tiles_pool_over_their_entries(shape, block, reduce):
    x = np.abs(np.random.default_rng(3).normal(size=shape)).astype(np.float32)
    mask = np.asarray(masks.block(jnp.asarray(x), block, 0.5, reduce=reduce))
    full = (1,) * (len(shape) - len(block)) + block
    grids = [range(0, d, b) for d, b in zip(shape, full)]
    pool = {"mean": np.mean, "sum": np.sum, "max": np.max, "l2": lambda a: np.sqrt(np.sum(a * a))}[reduce]
    tiles = [tuple(slice(g[i], g[i] + b) for g, i, b in zip(grids, idx, full))
             for idx in np.ndindex(*map(len, grids))]
    pooled = np.array([pool(x[t]) for t in tiles], np.float32)
    keep = ref_topk(pooled, ref_count(len(tiles), 0.5))
    for t, k in zip(tiles, keep):
        assert (mask[t] == k).all()  # constant on each (possibly partial) tile, by the reference


def test_block_leading_dims_and_all_dropped():
    x = jnp.ones((2, 8, 8))
    m = masks.block(x, (4, 4), 1.0)  # one tile of 8 kept (max(1, .))
    assert int(m.sum()) == 16
    assert m.shape == x.shape


def test_channel():
    x = jax.random.normal(jax.random.PRNGKey(6), (6, 10))
    m = np.asarray(masks.channel(jnp.abs(x), 0.5, axis=-1))
    assert (m == m[:1]).all() and m[0].sum() == 5
    np.testing.assert_array_equal(m[0], ref_topk(np.abs(np.asarray(x)).mean(0), 5))
    m0 = np.asarray(masks.channel(jnp.abs(x), 0.5, axis=0, reduce="l2"))
    assert (m0 == m0[:, :1]).all() and m0[:, 0].sum() == 3


def test_random_mask_exact_count():
    m = masks.random_mask(jax.random.PRNGKey(0), (17, 13), 0.8)
    assert m.shape == (17, 13) and int(m.sum()) == ref_count(17 * 13, 0.8)
    m2 = masks.random_mask(jax.random.PRNGKey(1), (17, 13), 0.8)
    assert not np.array_equal(m, m2)


def test_empty_arrays():
    assert masks.unstructured(jnp.zeros((0, 3)), 0.5).shape == (0, 3)
    assert masks.topk(jnp.zeros((0,)), 0).shape == (0,)


@pytest.mark.parametrize("call, err, match", [
    (lambda: masks.unstructured(jnp.ones(4), 1.5), ValueError, r"`sparsity` must be in \[0, 1\]; got 1.5"),
    (lambda: masks.unstructured(jnp.ones(4), -0.1), ValueError, "`sparsity` must be in"),
    (lambda: masks.unstructured(jnp.ones(4, jnp.int32), 0.5), TypeError, "`scores` must be a floating"),
    (lambda: masks.unstructured(jnp.ones(4), jnp.ones(2)), ValueError, "must be a scalar"),
    (lambda: masks.nm(jnp.ones((8, 4)), 3, 2, axis=0), ValueError, r"`n` must be in \[0, m=2\]"),
    (lambda: masks.nm(jnp.ones((8, 4)), -1, 4, axis=0), ValueError, "`n` must be in"),
    (lambda: masks.nm(jnp.ones((8, 4)), 2, 4), ValueError, "`axis` must be given for pattern .nm.: the axis along which .* the reduction axis"),
    (lambda: masks.satisfies_nm(jnp.ones((8, 4)), 2, 4), ValueError, "`axis` must be given"),
    (lambda: masks.nm(jnp.ones((6, 4)), 2, 4, axis=0), ValueError, r"`scores.shape\[0\]` must be divisible by `m`=4; got 6"),
    (lambda: masks.nm(jnp.ones((8, 4)), 2.0, 4, axis=0), TypeError, "`n` must be a Python int"),
    (lambda: masks.nm(jnp.ones((8, 4)), 2, 4, axis=2), ValueError, "`axis` must be in"),
    (lambda: masks.block(jnp.ones((6, 4)), (0, 4), 0.5), ValueError, "`block_shape` must be a tuple of ints >= 1"),
    (lambda: masks.block(jnp.ones((8, 4)), (4, 4, 4), 0.5), ValueError, "`block_shape` must be a tuple of 1 to 2 ints"),
    (lambda: masks.block(jnp.ones((8, 4)), (4, 4), 0.5, reduce="median"), ValueError, "`reduce` must be one of"),
    (lambda: masks.topk(jnp.ones(4), 5), ValueError, r"`k` must be in \[0, 4\]"),
    (lambda: masks.nm(jnp.ones((8, 4), jnp.int8), 2, 4), TypeError, "floating-point"),
])
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_traced_out_of_range_sparsity_is_clipped():
    x = jnp.arange(10.0)
    assert int(jax.jit(masks.unstructured)(x, 2.0).sum()) == 1
    assert int(jax.jit(masks.unstructured)(x, -1.0).sum()) == 10


def test_shorthand_matches_composition():
    w = jax.random.normal(jax.random.PRNGKey(7), (16, 16))
    np.testing.assert_array_equal(masks.magnitude_mask(w, 0.3), masks.unstructured(sj.scores.magnitude(w), 0.3))


@pytest.mark.parametrize("n", [7, (1 << 12) + 1, 1 << 14, (1 << 14) + 1, 40000,
                               2 * masks._CHUNK + 777])
def test_topk_sort_and_radix_paths_agree_with_stable_argsort(n):
    """Short arrays are ranked by a sort, mid-sized ones by a bitwise search of the threshold, long
    ones by radix select: all keep the k largest with
    ties to the lower index (heavily tied integer scores), as numpy's stable argsort. The last
    size spans two whole histogram chunks and a partial one, so the tied entries cut by position
    fall in every kind of chunk as ``k`` varies."""
    x = np.random.default_rng(n).integers(0, 50, size=n).astype(np.float32)
    for k in (0, 1, n // 3, n):
        ref = np.zeros(n, bool)
        ref[np.argsort(-x, kind="stable")[:k]] = True
        np.testing.assert_array_equal(np.asarray(masks.topk(jnp.asarray(x), k)), ref)



@pytest.mark.parametrize("n", [2 * masks._CHUNK, 2 * masks._CHUNK + 777])
def test_topk_tie_cut_in_every_slice(n):
    """All scores tied: the mask is the first ``k`` positions, so the tie cut lands where ``k``
    says: in the first chunk, in a middle chunk, in the part of the last histogram slice that
    overlaps the chunk before it (a ragged size), and in the last slice's own entries."""
    x = jnp.zeros(n, jnp.float32)
    for k in (3, masks._CHUNK + 5, masks._CHUNK + 800, n - 100):
        got = np.asarray(masks.topk(x, k))
        assert got.sum() == k and got[:k].all(), k


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_topk_bitwise_threshold_equals_sort_threshold(dtype, monkeypatch):
    """The bitwise search of the k-th largest key (mid-sized arrays) keeps exactly what the sort
    keeps, with NaN, +-inf, -0.0 / 0.0 and ties, for k at both ends and in between (64-bit keys
    for float64)."""
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(11)
        x = rng.integers(-40, 40, size=6000).astype(np.float64) / 8  # ties
        x[::2] = rng.normal(size=3000)  # every bit of the keys
        x[rng.choice(6000, 60, replace=False)] = np.nan
        x[:3], x[3:6], x[6:9] = np.inf, -np.inf, -0.0
        x = x.astype(dtype)
        tie = np.asarray(0.1, dtype)  # 150 ties at a value whose key has its lowest bit set
        if not tie.view(np.uint64 if dtype == jnp.float64 else np.uint32) & 1:
            tie = np.nextafter(tie, np.asarray(1, dtype))
        x[11:311:2] = tie
        split = int(np.sum(x > tie)) + 75  # k cuts through the tied entries
        x = jnp.asarray(x)
        ks = jnp.asarray([0, 1, 7, split, 2999, 5990, 6000], jnp.int32)
        fast = jax.jit(jax.vmap(masks._topk_flat, (None, 0)))(x, ks)
        monkeypatch.setattr(masks, "_BISECT_ABOVE", 1 << 30)
        sort = jax.jit(jax.vmap(masks._topk_flat, (None, 0)))(x, ks)
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(sort))
        np.testing.assert_array_equal(np.asarray(fast).sum(1), np.asarray(ks))


@pytest.mark.parametrize("reduce", ["mean", "sum", "max", "l2"])
def test_block_whole_tiles_pool_like_numpy_3d(reduce):
    """The two-step tile pooling (leading tile axes, then the last) on a 3-D array with whole
    tiles, against numpy pooling over all tile axes at once."""
    x = np.abs(np.random.default_rng(5).normal(size=(4, 8, 12))).astype(np.float32)
    mask = np.asarray(masks.block(jnp.asarray(x), (2, 4, 3), 0.4, reduce=reduce))
    tiles = x.reshape(2, 2, 2, 4, 4, 3)
    pool = {"mean": np.mean, "sum": np.sum, "max": np.max,
            "l2": lambda a, axis: np.sqrt(np.sum(a * a, axis=axis))}[reduce]
    pooled = pool(tiles, axis=(1, 3, 5))
    keep = ref_topk(pooled, ref_count(pooled.size, 0.4))
    np.testing.assert_array_equal(mask, np.broadcast_to(keep[:, None, :, None, :, None],
                                                        tiles.shape).reshape(x.shape))

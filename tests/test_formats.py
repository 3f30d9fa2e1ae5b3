"""Tests for sparsejax.formats: NMSparse and BlockSparse against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.formats import BlockSparse, NMSparse

SETTINGS = dict(max_examples=10, deadline=None)
JIT_SETTINGS = dict(max_examples=6, deadline=None)  # each example traces under jit: keep few


# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------


def np_nm_mask(x: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keep the n largest |x| of every m along axis; ties by lower index (stable sort)."""
    xt = np.moveaxis(np.abs(x.astype(np.float32)), axis, -1)
    g = xt.reshape(*xt.shape[:-1], -1, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(xt.shape), -1, axis)


def expand(block_mask: np.ndarray, block_shape) -> np.ndarray:
    return np.kron(np.asarray(block_mask, np.int32), np.ones(block_shape, np.int32)).astype(bool)


def check_bsr_layout(a: BlockSparse, block_mask: np.ndarray) -> None:
    """The documented layout: sorted indices, padded slots repeat the last index, zero data."""
    idx, counts, data = np.asarray(a.indices), np.asarray(a.counts), np.asarray(a.data)
    assert a.indices.dtype == jnp.int32 and a.counts.dtype == jnp.int32
    np.testing.assert_array_equal(counts, block_mask.sum(1))
    for r in range(block_mask.shape[0]):
        c = counts[r]
        np.testing.assert_array_equal(idx[r, :c], np.flatnonzero(block_mask[r]))
        pad = idx[r, c - 1] if c > 0 else 0
        np.testing.assert_array_equal(idx[r, c:], pad)
        assert not data[r, c:].any()


# ---------------------------------------------------------------------------------------------
# NMSparse
# ---------------------------------------------------------------------------------------------


# compiled once per static configuration and shared by every example
NM_FROM_DENSE_JIT = jax.jit(NMSparse.from_dense, static_argnums=(1, 2, 3))
BSR_FROM_DENSE_JIT = jax.jit(BlockSparse.from_dense, static_argnums=(1, 3))
BSR_TRANSPOSE_JIT = jax.jit(BlockSparse.transpose)

# (shape, axis, n, m): a few fixed static configurations, so each compiled function is traced
# once per configuration and reused across examples (only the values vary).
NM_CONFIGS = [
    ((8,), 0, 2, 4),
    ((3, 8), -1, 1, 4),
    ((8, 3), 0, 4, 4),
    ((2, 3, 16), 2, 3, 8),
    ((4, 1), 0, 0, 4),
    ((3, 1), -2, 1, 1),
]


@st.composite
def nm_case(draw):
    shape, axis, n, m = draw(st.sampled_from(NM_CONFIGS))
    seed = draw(st.integers(0, 2**16))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape) if ties else rng.standard_normal(shape)
    return x.astype(np.float32), n, m, axis


@settings(**SETTINGS)
@given(nm_case())
def test_nm_roundtrip_keeps_largest_n_per_group(case):
    x, n, m, axis = case
    w = NMSparse.from_dense(jnp.asarray(x), n, m, axis)
    mask = np_nm_mask(x, n, m, axis)
    np.testing.assert_array_equal(np.asarray(w.to_dense()), x * mask)
    np.testing.assert_array_equal(np.asarray(w.mask()), mask)
    # exactly n stored per group along `axis`
    per_group = np.moveaxis(np.asarray(w.mask()), axis, -1).reshape(-1, m).sum(-1)
    assert (per_group == n).all()
    assert w.indices.dtype == jnp.uint8
    assert w.values.shape[axis] == x.shape[axis] * n // m
    assert w.shape == x.shape


@settings(**JIT_SETTINGS)
@given(nm_case())
def test_nm_jit_matches_eager_and_explicit_mask(case):
    x, n, m, axis = case
    eager = NMSparse.from_dense(jnp.asarray(x), n, m, axis)
    jitted = NM_FROM_DENSE_JIT(jnp.asarray(x), n, m, axis)
    np.testing.assert_array_equal(np.asarray(eager.values), np.asarray(jitted.values))
    np.testing.assert_array_equal(np.asarray(eager.indices), np.asarray(jitted.indices))
    mask = np_nm_mask(-x, n, m, axis) & (np.abs(x) > 0.5)  # a different, sparser valid mask
    w = NMSparse.from_dense(jnp.asarray(x), n, m, axis, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(w.to_dense()), x * mask)


def test_nm_flax_kernel_groups_along_axis0():
    # Flax Dense kernel [in, out]: 2:4 groups run down each column (the reduction axis).
    x = jnp.asarray(np.arange(1, 25, dtype=np.float32).reshape(8, 3))
    w = NMSparse.from_dense(x, 2, 4, axis=0)  # axis=0 default
    expected = np.zeros((8, 3), np.float32)
    expected[[2, 3, 6, 7]] = np.asarray(x)[[2, 3, 6, 7]]
    np.testing.assert_array_equal(np.asarray(w.to_dense()), expected)
    np.testing.assert_array_equal(np.asarray(w.indices), np.array([[2] * 3, [3] * 3] * 2))
    assert w.axis == -2 and w.values.shape == (4, 3)


def test_nm_tie_break_and_short_group():
    x = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 5.0, 0.0])
    w = NMSparse.from_dense(x, 2, 4, axis=0)
    np.testing.assert_array_equal(np.asarray(w.to_dense()), [1, 1, 0, 0, 0, 0, 5, 0])
    # a mask with one kept entry in the second group: filled with a zero value
    mask = jnp.array([0, 1, 1, 0, 0, 0, 1, 0], bool)
    w = NMSparse.from_dense(x, 2, 4, axis=0, mask=mask)
    np.testing.assert_array_equal(np.asarray(w.to_dense()), [0, 1, 1, 0, 0, 0, 5, 0])
    assert w.values.shape == (4,)


def test_nm_vmap_bf16_and_nbytes():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 8)).astype(jnp.bfloat16)
    w = jax.vmap(lambda x: NMSparse.from_dense(x, 2, 4, axis=0))(x)
    assert w.values.shape == (3, 8, 8) and w.dtype == jnp.bfloat16 and w.shape == (3, 16, 8)
    for i in range(3):
        mask = np_nm_mask(np.asarray(x[i], np.float32), 2, 4, 0)
        np.testing.assert_array_equal(np.asarray(w.to_dense()[i]), np.asarray(x[i]) * mask)
    w32 = NMSparse.from_dense(jnp.ones((16, 8)), 2, 4, axis=0)
    assert w32.nbytes == 8 * 8 * 4 + 8 * 8  # f32 values + one uint8 per kept value
    assert w32.packed_nbytes == 8 * 8 * 4 + 8 * 8 * 2 // 8  # 2-bit indices
    assert w32.nbytes < 16 * 8 * 4


def test_nm_pytree_static_aux():
    w = NMSparse.from_dense(jnp.ones((8, 2)), 2, 4, axis=0)
    leaves, treedef = jax.tree.flatten(w)
    assert len(leaves) == 2
    w2 = jax.tree.unflatten(treedef, leaves)
    assert (w2.n, w2.m, w2.axis, w2.length) == (2, 4, -2, 8)
    doubled = jax.tree.map(lambda v: v * 2 if v.dtype == jnp.float32 else v, w)
    np.testing.assert_array_equal(np.asarray(doubled.to_dense()), 2 * np.asarray(w.to_dense()))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(n=5, m=4, axis=0), ValueError, r"`n` must be in \[0, m=4\].*got 5"),
        (dict(n=-1, m=4, axis=0), ValueError, r"`n` must be in \[0, m=4\].*got -1"),
        (dict(n=2.0, m=4, axis=0), TypeError, r"`?n`? must be a Python int"),
        (dict(n=2, m=0, axis=0), ValueError, r"`m` must be >= 1; got 0"),
        (dict(n=2, m=3, axis=0), ValueError, r"x.shape\[axis\]` = 8.*divisible by m=3"),
        (dict(n=2, m=4, axis=2), ValueError, r"`?axis`? must be in \[-2, 1\]"),
        (dict(n=2, m=4, axis=None), ValueError, r"`axis` must be given"),
    ],
)
def test_nm_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        NMSparse.from_dense(jnp.ones((8, 4)), **kwargs)


def test_nm_errors_dtype_and_mask():
    with pytest.raises(TypeError, match=r"`?x`? must be a floating-point array.*int32"):
        NMSparse.from_dense(jnp.ones((8, 4), jnp.int32), 2, 4, axis=0)
    with pytest.raises(TypeError, match="`mask` must be a bool array"):
        NMSparse.from_dense(jnp.ones((8, 4)), 2, 4, axis=0, mask=jnp.ones((8, 4)))
    with pytest.raises(ValueError, match=r"`mask` must have x's shape \(8, 4\)"):
        NMSparse.from_dense(jnp.ones((8, 4)), 2, 4, axis=0, mask=jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match="`mask` keeps 3 entries.*at most n=2"):
        NMSparse.from_dense(jnp.ones((8, 4)), 2, 4, axis=0, mask=jnp.ones((8, 4), bool).at[3:].set(False))


# ---------------------------------------------------------------------------------------------
# BlockSparse
# ---------------------------------------------------------------------------------------------


# (block_shape, block grid): fixed static configurations, as for N:M.
BSR_CONFIGS = [((1, 2), (1, 1)), ((3, 4), (4, 3)), ((1, 4), (4, 1)), ((3, 2), (1, 3))]


@st.composite
def bsr_case(draw):
    (bm, bn), (r, c) = draw(st.sampled_from(BSR_CONFIGS))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((r * bm, c * bn)).astype(np.float32)
    block_mask = rng.random((r, c)) < density
    return x, (bm, bn), block_mask


@settings(**SETTINGS)
@given(bsr_case())
def test_bsr_roundtrip_and_layout(case):
    x, bs, block_mask = case
    r, c = block_mask.shape  # static slot counts fixed per configuration: one trace each
    a = BlockSparse.from_dense(jnp.asarray(x), bs, jnp.asarray(block_mask), max_blocks_per_row=c)
    np.testing.assert_array_equal(np.asarray(a.to_dense()), x * expand(block_mask, bs))
    check_bsr_layout(a, block_mask)
    np.testing.assert_array_equal(np.asarray(a.block_mask()), block_mask)
    np.testing.assert_allclose(float(a.density), block_mask.mean())
    t = a.transpose(max_blocks_per_row=r)
    assert t.shape == x.shape[::-1] and t.block_shape == bs[::-1]
    np.testing.assert_array_equal(np.asarray(t.to_dense()), (x * expand(block_mask, bs)).T)
    check_bsr_layout(t, block_mask.T)


@settings(**SETTINGS)
@given(bsr_case())
def test_bsr_element_mask_and_none(case):
    x, bs, block_mask = case
    rng = np.random.default_rng(0)
    elem = expand(block_mask, bs) & (rng.random(x.shape) < 0.6)
    a = BlockSparse.from_dense(jnp.asarray(x), bs, jnp.asarray(elem))
    np.testing.assert_array_equal(np.asarray(a.to_dense()), x * elem)
    kept = elem.reshape(x.shape[0] // bs[0], bs[0], -1, bs[1]).any((1, 3))
    check_bsr_layout(a, kept)
    # mask=None keeps exactly the blocks holding a nonzero
    b = BlockSparse.from_dense(jnp.asarray(x * elem), bs)
    check_bsr_layout(b, kept)
    assert b.max_blocks_per_row == max(1, kept.sum(1).max())  # default slot count: exact
    np.testing.assert_array_equal(np.asarray(b.to_dense()), x * elem)


@settings(**JIT_SETTINGS)
@given(bsr_case())
def test_bsr_jit_matches_eager(case):
    x, bs, block_mask = case
    s = block_mask.shape[1]  # one static slot count per configuration: one trace each
    eager = BlockSparse.from_dense(jnp.asarray(x), bs, jnp.asarray(block_mask),
                                   max_blocks_per_row=s)
    jitted = BSR_FROM_DENSE_JIT(jnp.asarray(x), bs, jnp.asarray(block_mask), s)
    for u, v in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    t = BSR_TRANSPOSE_JIT(eager)  # traced: R slots, same dense result
    np.testing.assert_array_equal(np.asarray(t.to_dense()), np.asarray(eager.to_dense()).T)


def test_bsr_explicit_slots_pad_layout():
    x = jnp.arange(1.0, 33.0).reshape(4, 8)
    mask = jnp.array([[False, True, False, True], [False, False, False, False]])
    a = BlockSparse.from_dense(x, (2, 2), mask, max_blocks_per_row=4)
    np.testing.assert_array_equal(np.asarray(a.indices), [[1, 3, 3, 3], [0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(a.counts), [2, 0])
    assert a.data.shape == (2, 4, 2, 2)
    np.testing.assert_array_equal(np.asarray(a.data[0, 0]), [[3, 4], [11, 12]])
    assert a.nbytes == 2 * 4 * 2 * 2 * 4 + 2 * 4 * 4 + 2 * 4


def test_bsr_all_masked_vmap_bf16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8)).astype(jnp.bfloat16)
    none = BlockSparse.from_dense(x[0], (4, 4), jnp.zeros((2, 2), bool))
    assert none.max_blocks_per_row == 1 and none.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(none.counts), [0, 0])
    np.testing.assert_array_equal(np.asarray(none.indices), [[0], [0]])
    assert not np.asarray(none.to_dense()).any() and float(none.density) == 0.0
    masks = jnp.array([[[True, False], [False, False]], [[True, True], [False, True]]])
    batched = jax.vmap(lambda x, m: BlockSparse.from_dense(x, (4, 4), m, max_blocks_per_row=2))(
        x, masks)
    assert batched.data.shape == (2, 2, 2, 4, 4)
    dense = np.asarray(batched.to_dense(), np.float32)  # leading batch axis handled
    for i in range(2):
        want = np.asarray(x[i], np.float32) * expand(np.asarray(masks[i]), (4, 4))
        np.testing.assert_array_equal(dense[i], want)


def test_bsr_traced_needs_static_slots():
    with pytest.raises(ValueError, match="`max_blocks_per_row` must be given"):
        jax.jit(lambda x: BlockSparse.from_dense(x, (2, 2)))(jnp.ones((4, 4)))


@pytest.mark.parametrize(
    "x, kwargs, err, match",
    [
        (np.ones((6, 8)), dict(block_shape=(4, 4)), ValueError, r"\(6, 8\) must be divisible"),
        (np.ones((8,)), dict(block_shape=(4, 4)), ValueError, "must be a 2-D matrix"),
        (np.ones((8, 8), np.int32), dict(block_shape=(4, 4)), TypeError, "floating-point.*int32"),
        (np.ones((8, 8)), dict(block_shape=(4,)), ValueError, "a tuple of 2 ints"),
        (np.ones((8, 8)), dict(block_shape=(0, 4)), ValueError, r"`block_shape` must be a tuple of ints >= 1"),
        (np.ones((8, 8)), dict(block_shape=(4, 4), mask=np.ones((2, 2))), TypeError, "bool"),
        (np.ones((8, 8)), dict(block_shape=(4, 4), mask=np.ones((3, 2), bool)), ValueError,
         r"block-level \(2, 2\) or element-level \(8, 8\)"),
        (np.ones((8, 8)), dict(block_shape=(4, 4), max_blocks_per_row=1), ValueError,
         "`max_blocks_per_row`=1 is smaller than the 2"),
        (np.ones((8, 8)), dict(block_shape=(4, 4), max_blocks_per_row=0), ValueError, ">= 1"),
    ],
)
def test_bsr_errors(x, kwargs, err, match):
    with pytest.raises(err, match=match):
        BlockSparse.from_dense(jnp.asarray(x), **kwargs)


# ---------------------------------------------------------------------------------------------
# replace, gradients without allow_int, formats as a leaf module
# ---------------------------------------------------------------------------------------------


def test_nm_replace_and_gradient_of_values_without_allow_int():
    from sparsejax import ops

    kernel = jax.random.normal(jax.random.PRNGKey(0), (16, 8))  # Flax [in, out]
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    w = NMSparse.from_dense(kernel, 2, 4, axis=0)
    w2 = w.replace(values=2 * w.values)
    assert (w2.n, w2.m, w2.axis, w2.length) == (w.n, w.m, w.axis, w.length)
    np.testing.assert_allclose(w2.to_dense(), 2 * np.asarray(w.to_dense()))
    with pytest.raises(TypeError, match="`replace` takes fields"):
        w.replace(data=w.values)

    def loss(values):  # the documented recipe: differentiate the values, not the pytree
        return jnp.sum(jnp.tanh(ops.dense_nm_matmul(x, w.replace(values=values))))

    got = jax.grad(loss)(w.values)
    keep = np.asarray(w.mask())
    dense_grad = jax.grad(lambda k: jnp.sum(jnp.tanh(x @ (k * keep))))(kernel)
    want = NMSparse.from_dense(dense_grad, 2, 4, axis=0, mask=jnp.asarray(keep)).values
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_formats_is_a_leaf_module():
    import ast
    import inspect

    import sparsejax.formats as formats

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(formats))):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not any(m.startswith(("sparsejax.ops", "sparsejax.attention")) for m in imported)
    a = BlockSparse.from_dense(jnp.eye(4), (2, 2))
    np.testing.assert_allclose(a @ jnp.ones((4, 2)), np.ones((4, 2)))  # `@` registered by ops
    np.testing.assert_allclose(jnp.ones((2, 4)) @ a, np.ones((2, 4)))

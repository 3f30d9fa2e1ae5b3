"""Pallas TPU / GPU block-sparse kernels against plain numpy references (interpret mode on CPU).

For the empty, empty-row and rectangular-block cases the TPU kernels run under
`pltpu.InterpretParams()`, the Mosaic TPU simulator: it fills uninitialised buffers with NaN (so
an output block the kernel forgets to write, e.g. for an empty row, shows up), raises on
out-of-bounds reads (so a bad index map fails) and permutes the "parallel" grid dimensions; the
other TPU cases use the cheaper generic ``interpret=True``, as do the GPU (Triton) kernels. The
``test_*_lower*`` tests additionally run the real Pallas -> Mosaic / Triton lowering for TPU / CUDA
at 128x128 (TPU) / 64x32 (GPU) blocks: no device needed, device-side compilation not exercised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

from sparsejax.formats import BlockSparse, NMSparse
from sparsejax.ops import pallas_gpu, pallas_tpu

TPU_INTERPRET = pltpu.InterpretParams()

# backend -> (module, interpret, bsr_matmul kwargs, dense_bsr_matmul kwargs, sddmm kwargs).
# "tpu_sim" is the Mosaic TPU simulator (slow to compile: used where unwritten blocks could hide),
# "tpu" the same kernels under the generic interpreter.
BACKENDS = {
    "tpu_sim": (pallas_tpu, TPU_INTERPRET, {"block_n": 32}, {"block_p": 32}, {"block_d": 16}),
    "tpu": (pallas_tpu, True, {"block_n": 32}, {"block_p": 32}, {"block_d": 16}),
    "gpu": (pallas_gpu, True, {"block_n": 32}, {"block_p": 32}, {"block_d": 16}),
}

# name -> (shape, block_shape, density, forced empty block rows, exact number of kept blocks)
CASES = {
    "empty": ((64, 64), (16, 16), 0.0, (), None),
    "one_block": ((64, 64), (16, 16), None, (), 1),
    "half_with_empty_rows": ((64, 64), (16, 16), 0.5, (0, 2), None),
    "full": ((64, 64), (16, 16), 1.0, (), None),
    "rect_blocks": ((64, 48), (32, 16), 0.6, (), None),
}
PAIRS = [
    *[("tpu_sim", c) for c in ("empty", "half_with_empty_rows", "rect_blocks")],
    *[("tpu", c) for c in ("one_block", "full")],
    *[("gpu", c) for c in CASES],
]
MODULES = ["tpu", "gpu"]


def _make_bsr(
    seed: int,
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    density: float | None,
    empty_rows: tuple[int, ...] = (),
    n_blocks: int | None = None,
    dtype=jnp.float32,
) -> tuple[BlockSparse, np.ndarray]:
    """A random BlockSparse in the agreed layout, built by hand, and its dense float64 matrix."""
    rng = np.random.default_rng(seed)
    (m, k), (bm, bn) = shape, block_shape
    nbr, nbc = -(-m // bm), -(-k // bn)
    if n_blocks is not None:
        mask = np.zeros(nbr * nbc, bool)
        mask[rng.choice(nbr * nbc, n_blocks, replace=False)] = True
        mask = mask.reshape(nbr, nbc)
    else:
        mask = rng.random((nbr, nbc)) < density
    mask[list(empty_rows)] = False
    counts = mask.sum(1).astype(np.int32)
    maxb = max(1, int(counts.max()))
    data = np.zeros((nbr, maxb, bm, bn), np.float32)
    indices = np.zeros((nbr, maxb), np.int32)
    dense = np.zeros((nbr * bm, nbc * bn), np.float32)
    for i in range(nbr):
        cols = np.flatnonzero(mask[i])
        for s, c in enumerate(cols):
            blk = rng.standard_normal((bm, bn)).astype(np.float32)
            blk[max(0, m - i * bm) :, :] = 0.0  # entries past the logical shape are zero
            blk[:, max(0, k - c * bn) :] = 0.0
            data[i, s] = blk
            indices[i, s] = c
            dense[i * bm : (i + 1) * bm, c * bn : (c + 1) * bn] = blk
        if len(cols):
            indices[i, len(cols) :] = cols[-1]
    data_j = jnp.asarray(data, dtype)
    dense = np.asarray(jnp.asarray(dense, dtype).astype(jnp.float32), np.float64)[:m, :k]
    a = BlockSparse(
        data=data_j,
        indices=jnp.asarray(indices),
        counts=jnp.asarray(counts),
        shape=(m, k),
        block_shape=(bm, bn),
    )
    return a, dense


def test_hand_built_layout_matches_from_dense():
    # The tests' builder follows the agreed layout exactly as sparsejax.formats produces it.
    a, dense = _make_bsr(37, (64, 96), (16, 32), 0.5, (1,))
    nbr, maxb = a.indices.shape
    block_mask = np.zeros((nbr, 3), bool)
    for i in range(nbr):
        block_mask[i, np.asarray(a.indices[i, : a.counts[i]])] = True
    b = BlockSparse.from_dense(
        jnp.asarray(dense, jnp.float32),
        (16, 32),
        mask=jnp.asarray(block_mask),
        max_blocks_per_row=maxb,
    )
    np.testing.assert_array_equal(b.indices, a.indices)
    np.testing.assert_array_equal(b.counts, a.counts)
    np.testing.assert_array_equal(b.data, a.data)
    assert (b.shape, b.block_shape) == (a.shape, a.block_shape)


def _pad_slots(a: BlockSparse, maxb: int) -> BlockSparse:
    """The same matrix with ``maxb`` slots per row (extra slots padded as the layout says)."""
    extra = maxb - a.data.shape[1]
    return BlockSparse(
        data=jnp.pad(a.data, ((0, 0), (0, extra), (0, 0), (0, 0))),
        indices=jnp.pad(a.indices, ((0, 0), (0, extra)), mode="edge"),
        counts=a.counts,
        shape=a.shape,
        block_shape=a.block_shape,
    )


def _normal(seed: int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def _f64(x: jax.Array) -> np.ndarray:
    return np.asarray(x.astype(jnp.float32), np.float64)


def _sddmm_reference(a: np.ndarray, b: np.ndarray, like: BlockSparse) -> np.ndarray:
    """Blocks of ``a @ b`` at like's kept slots, zero in padded slots (plain numpy loops)."""
    nbr, maxb, bm, bn = like.data.shape
    full = a @ b
    full = np.pad(full, ((0, nbr * bm - full.shape[0]), (0, -full.shape[1] % bn)))
    out = np.zeros((nbr, maxb, bm, bn))
    idx, cnt = np.asarray(like.indices), np.asarray(like.counts)
    for i in range(nbr):
        for s in range(cnt[i]):
            c = idx[i, s]
            out[i, s] = full[i * bm : (i + 1) * bm, c * bn : (c + 1) * bn]
    return out


def _assert_close(out: jax.Array, ref: np.ndarray, dtype) -> None:
    got = _f64(out)
    assert np.all(np.isfinite(got)), "kernel left NaN/inf (an output block was not written)"
    if jnp.dtype(dtype) == jnp.bfloat16:
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2 * scale)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------
# correctness in interpret mode
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,case", PAIRS)
def test_bsr_matmul(backend, case):
    mod, interpret, kw, _, _ = BACKENDS[backend]
    shape, block, density, empty_rows, n_blocks = CASES[case]
    a, dense = _make_bsr(0, shape, block, density, empty_rows, n_blocks)
    b = _normal(1, (shape[1], 48))  # N=48: two column tiles of 32, the last one padded
    out = jax.jit(lambda a, b: mod.bsr_matmul(a, b, interpret=interpret, **kw))(a, b)
    assert out.shape == (shape[0], 48) and out.dtype == jnp.float32
    _assert_close(out, dense @ _f64(b), jnp.float32)


@pytest.mark.parametrize("backend,case", PAIRS)
def test_dense_bsr_matmul(backend, case):
    mod, interpret, _, kw, _ = BACKENDS[backend]
    shape, block, density, empty_rows, n_blocks = CASES[case]
    a, dense = _make_bsr(2, shape, block, density, empty_rows, n_blocks)
    x = _normal(3, (40, shape[0]))  # P=40: two row tiles of 32, the last one padded
    out = jax.jit(lambda x, a: mod.dense_bsr_matmul(x, a, interpret=interpret, **kw))(x, a)
    assert out.shape == (40, shape[1]) and out.dtype == jnp.float32
    _assert_close(out, _f64(x) @ dense, jnp.float32)


@pytest.mark.parametrize("backend,case", PAIRS)
def test_sddmm(backend, case):
    mod, interpret, _, _, kw = BACKENDS[backend]
    shape, block, density, empty_rows, n_blocks = CASES[case]
    like, _ = _make_bsr(4, shape, block, density, empty_rows, n_blocks)
    a = _normal(5, (shape[0], 40))  # D=40: reduction in tiles of 16, the last one padded
    b = _normal(6, (40, shape[1]))
    out = jax.jit(lambda a, b, like: mod.sddmm(a, b, like, interpret=interpret, **kw))(a, b, like)
    assert isinstance(out, BlockSparse)
    assert out.shape == like.shape and out.block_shape == like.block_shape
    assert out.data.shape == like.data.shape and out.data.dtype == jnp.float32
    np.testing.assert_array_equal(out.indices, like.indices)
    np.testing.assert_array_equal(out.counts, like.counts)
    _assert_close(out.data, _sddmm_reference(_f64(a), _f64(b), like), jnp.float32)


@pytest.mark.parametrize("backend", MODULES)
def test_bf16_inputs_accumulate_in_f32(backend):
    mod, interpret, kw_n, kw_p, kw_d = BACKENDS[backend]
    a, dense = _make_bsr(7, (64, 64), (16, 16), 0.5, (1,), dtype=jnp.bfloat16)
    b = _normal(8, (64, 32), jnp.bfloat16)
    x = _normal(9, (32, 64), jnp.bfloat16)
    u, v = _normal(10, (64, 64), jnp.bfloat16), _normal(11, (64, 64), jnp.bfloat16)

    @jax.jit
    def run(a, b, x, u, v):
        return (
            mod.bsr_matmul(a, b, interpret=interpret, **kw_n),
            mod.dense_bsr_matmul(x, a, interpret=interpret, **kw_p),
            mod.sddmm(u, v, a, interpret=interpret, **kw_d).data,
        )

    y, z, s = run(a, b, x, u, v)
    assert y.dtype == z.dtype == s.dtype == jnp.bfloat16
    _assert_close(y, dense @ _f64(b), jnp.bfloat16)
    _assert_close(z, _f64(x) @ dense, jnp.bfloat16)
    _assert_close(s, _sddmm_reference(_f64(u), _f64(v), a), jnp.bfloat16)
    # A long reduction (64 terms of magnitude ~1) accumulated in bf16 would be off by far more.
    assert np.abs(_f64(y) - dense @ _f64(b)).max() < 0.1


@pytest.mark.parametrize("backend", MODULES)
def test_vmap_over_dense_operand(backend):
    # `pltpu.InterpretParams()` in jax 0.10.2 mishandles a vmapped grid whose scalar-prefetch
    # operands are unbatched (dimension_semantics is not extended); the generic interpreter and
    # the real Mosaic lowering (see test_tpu_kernels_lower_for_tpu_under_vmap) handle it.
    mod, interpret, kw, _, _ = BACKENDS[backend]
    a, dense = _make_bsr(12, (64, 64), (16, 16), 0.5, (3,))
    bs = _normal(13, (3, 64, 32))
    out = jax.jit(jax.vmap(lambda b: mod.bsr_matmul(a, b, interpret=interpret, **kw)))(bs)
    ref = np.einsum("mk,bkn->bmn", dense, _f64(bs))
    _assert_close(out, ref, jnp.float32)


@pytest.mark.parametrize("backend", MODULES)
def test_vmap_over_block_sparse_and_dense(backend):
    mod, interpret, kw, _, _ = BACKENDS[backend]
    a0, d0 = _make_bsr(14, (64, 64), (16, 16), None, (), 6)
    a1, d1 = _make_bsr(15, (64, 64), (16, 16), None, (0,), 6)
    maxb = max(a0.data.shape[1], a1.data.shape[1])
    a0, a1 = _pad_slots(a0, maxb), _pad_slots(a1, maxb)
    stacked = jax.tree.map(lambda u, v: jnp.stack([u, v]), a0, a1)
    bs = _normal(16, (2, 64, 32))
    out = jax.jit(jax.vmap(lambda a, b: mod.bsr_matmul(a, b, interpret=interpret, **kw)))(
        stacked, bs
    )
    _assert_close(out, np.stack([d0 @ _f64(bs[0]), d1 @ _f64(bs[1])]), jnp.float32)


@pytest.mark.parametrize("backend", MODULES)
def test_no_kept_slots_returns_zeros(backend):
    # max_blocks_per_row == 0: nothing to launch, exact zeros of the right shape and dtype.
    mod = BACKENDS[backend][0]
    a = BlockSparse(
        data=jnp.zeros((4, 0, 16, 16)),
        indices=jnp.zeros((4, 0), jnp.int32),
        counts=jnp.zeros((4,), jnp.int32),
        shape=(64, 48),
        block_shape=(16, 16),
    )
    y = mod.bsr_matmul(a, jnp.ones((48, 32)), interpret=True)
    z = mod.dense_bsr_matmul(jnp.ones((16, 64)), a, interpret=True)
    s = mod.sddmm(jnp.ones((64, 8)), jnp.ones((8, 48)), a, interpret=True)
    assert y.shape == (64, 32) and not np.any(np.asarray(y))
    assert z.shape == (16, 48) and not np.any(np.asarray(z))
    assert s.data.shape == (4, 0, 16, 16)


@pytest.mark.parametrize("backend", ["pallas_tpu", "pallas_gpu"])
def test_through_public_api_with_gradients(backend):
    # from_dense -> sparsejax.ops.bsr_matmul (custom_vjp composing all three kernels) vs reference.
    from sparsejax import ops

    rng = np.random.default_rng(23)
    block_mask = rng.random((4, 4)) < 0.5
    block_mask[1] = False
    a = BlockSparse.from_dense(_normal(24, (64, 64)), (16, 16), mask=jnp.asarray(block_mask))
    b = _normal(25, (64, 32))

    def loss(data, b, backend, interpret):
        y = ops.bsr_matmul(a.replace(data=data), b, backend=backend, interpret=interpret)
        return jnp.sum(jnp.sin(y))

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    val, (ga, gb) = jax.jit(grad, static_argnums=(2, 3))(a.data, b, backend, True)
    val_r, (ga_r, gb_r) = grad(a.data, b, "reference", False)
    np.testing.assert_allclose(val, val_r, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gb, gb_r, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ga, ga_r, rtol=1e-5, atol=1e-4)
    assert np.any(np.asarray(ga))  # a non-trivial kept-block gradient


@pytest.mark.parametrize("backend", MODULES)
def test_on_device(backend):
    # Runs the compiled kernels (interpret=False) only on a host of the matching platform.
    platform = {"tpu": "tpu", "gpu": "gpu"}[backend]
    if jax.default_backend() != platform:
        pytest.skip(f"needs a {platform.upper()}; this host runs {jax.default_backend()}")
    mod = BACKENDS[backend][0]
    # Loose tolerance for f32 too: device f32 matmuls may use bf16 passes (TPU) or TF32 (GPU).
    tol = jnp.bfloat16
    for dtype in (jnp.float32, jnp.bfloat16):
        a, dense = _make_bsr(27, (512, 384), (128, 128), 0.5, (1,), dtype=dtype)
        b, x = _normal(28, (384, 256), dtype), _normal(29, (128, 512), dtype)
        u, v = _normal(30, (512, 256), dtype), _normal(31, (256, 384), dtype)
        _assert_close(jax.jit(mod.bsr_matmul)(a, b), dense @ _f64(b), tol)
        _assert_close(jax.jit(mod.dense_bsr_matmul)(x, a), _f64(x) @ dense, tol)
        s = jax.jit(lambda u, v, a: mod.sddmm(u, v, a).data)(u, v, a)
        _assert_close(s, _sddmm_reference(_f64(u), _f64(v), a), tol)


def test_on_device_gpu_public_api_gradients_and_nm():
    # Compiled on a GPU only (benchmarks/device_check.py runs it): the custom_vjp backward of the
    # public ops through the Triton kernels, and the N:M kernel, against float64 references.
    if jax.default_backend() not in ("gpu", "cuda", "rocm"):
        pytest.skip(f"needs a GPU; this host runs {jax.default_backend()}")
    from sparsejax import ops

    a, dense = _make_bsr(41, (512, 384), (128, 128), 0.5, (2,))
    b = _normal(42, (384, 256))
    g = _normal(43, (512, 256))

    def loss(data, b):
        y = ops.bsr_matmul(a.replace(data=data), b, backend="pallas_gpu", interpret=False)
        return jnp.sum(y * g)

    da, db = jax.jit(jax.grad(loss, (0, 1)))(a.data, b)
    ga = _f64(g)
    _assert_close(db, dense.T @ ga, jnp.bfloat16)
    _assert_close(da, _sddmm_reference(ga, _f64(b).T, a), jnp.bfloat16)
    for dtype in (jnp.float32, jnp.bfloat16):
        w = NMSparse.from_dense(_normal(44, (256, 512), dtype), 2, 4, axis=1)
        x = _normal(45, (512, 128), dtype)
        got = jax.jit(lambda w, x: pallas_gpu.nm_matmul(w, x))(w, x)
        _assert_close(got, _f64(w.to_dense()) @ _f64(x), jnp.bfloat16)


# ------------------------------------------------------------------------------------------
# N:M (GPU only)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,m,dtype",
    [(2, 4, jnp.float32), (1, 8, jnp.float32), (2, 4, jnp.bfloat16)],
)
def test_nm_matmul_gpu(n, m, dtype):
    w = _normal(32, (48, 96), dtype)  # M=48, K=96: both padded to the 32-tiles below
    ws = NMSparse.from_dense(w, n, m, axis=1)
    x = _normal(33, (96, 40), dtype)
    out = jax.jit(
        lambda ws, x: pallas_gpu.nm_matmul(
            ws, x, block_m=32, block_n=32, block_k=32, interpret=True
        )
    )(ws, x)
    assert out.shape == (48, 40) and out.dtype == dtype
    _assert_close(out, _f64(ws.to_dense()) @ _f64(x), dtype)


def _nm_zeros(shape: tuple[int, int], n: int, m: int, axis: int) -> NMSparse:
    """An all-zero NMSparse built directly from its fields (cheap: no from_dense)."""
    cshape = list(shape)
    cshape[axis] = cshape[axis] // m * n
    return NMSparse(jnp.zeros(cshape), jnp.zeros(cshape, jnp.uint8), n, m, axis - 2, shape[axis])


def test_nm_matmul_gpu_errors():
    ws = _nm_zeros((32, 48), 2, 4, axis=1)
    with pytest.raises(TypeError, match="w must be a sparsejax.formats.NMSparse"):
        pallas_gpu.nm_matmul(jnp.ones((32, 48)), jnp.ones((48, 8)), interpret=True)
    with pytest.raises(ValueError, match=r"x.shape\[0\]=32 must equal K=48"):
        pallas_gpu.nm_matmul(ws, jnp.ones((32, 8)), interpret=True)
    with pytest.raises(ValueError, match="w.axis=-2: nm_matmul needs w"):
        pallas_gpu.nm_matmul(_nm_zeros((48, 32), 2, 4, axis=0), jnp.ones((32, 8)), interpret=True)
    with pytest.raises(ValueError, match="must be a multiple of m=3"):
        pallas_gpu.nm_matmul(_nm_zeros((16, 48), 1, 3, axis=1), jnp.ones((48, 8)), interpret=True)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16.*; got dtype int32"):
        pallas_gpu.nm_matmul(ws, jnp.ones((48, 8), jnp.int32), interpret=True)


# ------------------------------------------------------------------------------------------
# real lowering (no device): Pallas -> Mosaic TPU, Pallas -> Triton
# ------------------------------------------------------------------------------------------


def _lower(fn, *args, platform: str) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_kernels_lower_for_tpu(dtype):
    a, _ = _make_bsr(17, (512, 384), (128, 128), 0.5, (1,), dtype=dtype)
    b, x = jnp.ones((384, 1024), dtype), jnp.ones((256, 512), dtype)
    u, v = jnp.ones((512, 1024), dtype), jnp.ones((1024, 384), dtype)
    for fn, args in [
        (pallas_tpu.bsr_matmul, (a, b)),
        (pallas_tpu.dense_bsr_matmul, (x, a)),
        (lambda u, v, a: pallas_tpu.sddmm(u, v, a).data, (u, v, a)),
    ]:
        assert "tpu_custom_call" in _lower(fn, *args, platform="tpu")


def test_tpu_kernels_lower_for_tpu_under_vmap():
    a, _ = _make_bsr(18, (256, 256), (128, 128), 0.5)
    bs = jnp.ones((2, 256, 512), jnp.bfloat16)
    txt = _lower(jax.vmap(lambda b: pallas_tpu.bsr_matmul(a, b)), bs, platform="tpu")
    assert "tpu_custom_call" in txt
    # batched scalar-prefetch metadata: a stack of two BlockSparse with their own structure
    a1 = _pad_slots(_make_bsr(38, (256, 256), (128, 128), 1.0)[0], a.data.shape[1])
    a0 = _pad_slots(a, a1.data.shape[1])
    stacked = jax.tree.map(lambda u, v: jnp.stack([u, v]), a0, a1)
    for fn, args in [
        (jax.vmap(pallas_tpu.bsr_matmul), (stacked, bs.astype(jnp.float32))),
        (jax.vmap(pallas_tpu.dense_bsr_matmul), (bs.astype(jnp.float32)[:, :, :256], stacked)),
    ]:
        assert "tpu_custom_call" in _lower(fn, *args, platform="tpu")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gpu_kernels_lower_to_triton(dtype):
    a, _ = _make_bsr(19, (256, 288), (64, 32), 0.3, (0,), dtype=dtype)
    b, x = jnp.ones((288, 1000), dtype), jnp.ones((100, 256), dtype)
    u, v = jnp.ones((256, 96), dtype), jnp.ones((96, 288), dtype)
    for fn, args in [
        (pallas_gpu.bsr_matmul, (a, b)),
        (pallas_gpu.dense_bsr_matmul, (x, a)),
        (lambda u, v, a: pallas_gpu.sddmm(u, v, a).data, (u, v, a)),
        (pallas_gpu.nm_matmul, (NMSparse.from_dense(u, 2, 4, axis=1), jnp.ones((96, 200), dtype))),
    ]:
        assert "xla.gpu.triton" in _lower(fn, *args, platform="cuda")


# ------------------------------------------------------------------------------------------
# metadata helper and input validation
# ------------------------------------------------------------------------------------------


_block_columns = jax.jit(pallas_gpu._block_columns, static_argnums=2)


@settings(max_examples=25, deadline=None)
@given(
    nbr=st.sampled_from([1, 3, 5]),
    nbc=st.sampled_from([2, 6]),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_block_columns_lists_exactly_the_kept_blocks(nbr, nbc, density, seed):
    a, _ = _make_bsr(seed, (nbr * 16, nbc * 16), (16, 16), density)
    a = _pad_slots(a, nbc)  # one compiled shape per (nbr, nbc)
    rows, slots, col_counts = _block_columns(a.indices, a.counts, nbc)
    rows, slots, col_counts = np.asarray(rows), np.asarray(slots), np.asarray(col_counts)
    idx, cnt = np.asarray(a.indices), np.asarray(a.counts)
    expected = {(i, int(idx[i, s]), s) for i in range(nbr) for s in range(cnt[i])}
    got = set()
    for c in range(nbc):
        listed = [int(r) for r in rows[c, : col_counts[c]]]
        assert listed == sorted(listed)  # ascending block rows, each once
        assert len(set(listed)) == len(listed)
        got |= {(int(rows[c, t]), c, int(slots[c, t])) for t in range(col_counts[c])}
    assert got == expected
    assert int(col_counts.sum()) == int(cnt.sum())


@pytest.mark.parametrize("backend", MODULES)
def test_errors(backend):
    mod = BACKENDS[backend][0]
    a, _ = _make_bsr(20, (64, 64), (16, 16), 0.5)
    with pytest.raises(TypeError, match="`a` must be a sparsejax.formats.BlockSparse"):
        mod.bsr_matmul(jnp.ones((64, 64)), jnp.ones((64, 8)), interpret=True)
    with pytest.raises(ValueError, match=r"`b` must be an array of rank 2; got shape \(64,\)"):
        mod.bsr_matmul(a, jnp.ones((64,)), interpret=True)
    with pytest.raises(ValueError, match=r"b.shape\[0\]=32 must equal a.shape\[1\]=64"):
        mod.bsr_matmul(a, jnp.ones((32, 8)), interpret=True)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16.*; got dtype int32"):
        mod.bsr_matmul(a, jnp.ones((64, 8), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match=r"`?block_n`? must be >= 1[,;] got 0"):
        mod.bsr_matmul(a, jnp.ones((64, 8)), block_n=0, interpret=True)
    with pytest.raises(TypeError, match=r"`?block_p`? must be a Python int[,;] got 8.0"):
        mod.dense_bsr_matmul(jnp.ones((8, 64)), a, block_p=8.0, interpret=True)
    with pytest.raises(ValueError, match=r"x.shape\[1\]=32 must equal a.shape\[0\]=64"):
        mod.dense_bsr_matmul(jnp.ones((8, 32)), a, interpret=True)
    with pytest.raises(TypeError, match="`like` must be a sparsejax.formats.BlockSparse"):
        mod.sddmm(jnp.ones((64, 8)), jnp.ones((8, 64)), None, interpret=True)
    with pytest.raises(ValueError, match=r"a.shape\[1\]=8 must equal b.shape\[0\]=4"):
        mod.sddmm(jnp.ones((64, 8)), jnp.ones((4, 64)), a, interpret=True)
    with pytest.raises(ValueError, match=r"a @ b has shape \(32, 64\) but like.shape is"):
        mod.sddmm(jnp.ones((32, 8)), jnp.ones((8, 64)), a, interpret=True)
    bad = a.replace(data=a.data[None])
    with pytest.raises(ValueError, match="`a.data` must be of rank 4"):
        mod.bsr_matmul(bad, jnp.ones((64, 8)), interpret=True)


def test_gpu_rejects_non_power_of_two_blocks():
    a, _ = _make_bsr(21, (48, 48), (24, 24), 0.5)
    with pytest.raises(ValueError, match=r"`a.block_shape\[0\]` must be a power of two >= 16.*; got 24"):
        pallas_gpu.bsr_matmul(a, jnp.ones((48, 16)), interpret=True)
    b16, _ = _make_bsr(22, (64, 64), (16, 16), 0.5)
    with pytest.raises(ValueError, match="`block_p` must be a power of two >= 16.*; got 24"):
        pallas_gpu.dense_bsr_matmul(jnp.ones((8, 64)), b16, block_p=24, interpret=True)

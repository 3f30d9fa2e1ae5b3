"""Every attention backend against the dense reference with the equivalent token mask."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.attention import (
    BlockMask,
    attention,
    causal_mask,
    chunked_causal_mask,
    global_band_mask,
    sink_window_mask,
    sliding_window_mask,
    stack_heads,
)
from sparsejax.attention import xla as xla_path
from sparsejax.attention._tiles import kernel_blocks
from sparsejax.attention.xla import _buckets, _part_masking, _split_counts


def qkv(batch, heads, kv_heads, lq, lk, d, dtype=jnp.float32, seed=0):
    # NumPy draws: jax.random.normal compiles a program per new shape (~0.1 s each, 26 here)
    rng = np.random.default_rng(seed)
    shapes = ((batch, heads, lq, d), (batch, kv_heads, lk, d), (batch, kv_heads, lk, d))
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in shapes)


def plain_softmax_attention(q, k, v, dense, scale):
    """Independent oracle in NumPy float64 (GQA by repetition; empty rows -> 0)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
    dense = np.broadcast_to(np.asarray(dense), s.shape)
    s = np.where(dense, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    den = p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, v) / np.where(den > 0, den, 1)


def random_mask(shape, bq, bk, density, seed=1, empty_rows=()):
    dense = np.random.default_rng(seed).random(shape) < density
    for r in empty_rows:
        dense[..., r, :] = False
    return BlockMask.from_dense(dense, bq, bk)


def run(backend, q, k, v, mask, **kw):
    fn = jax.jit(functools.partial(attention, mask=mask, backend=backend, **kw))
    return fn(q, k, v)


# -- the xla path: broad coverage (cheap) --------------------------------------------------------

XLA_CASES = {
    "random": lambda: random_mask((2, 4, 50, 70), 16, 8, 0.1, empty_rows=(3, 17)),
    "random_head_broadcast": lambda: random_mask((1, 1, 50, 70), 8, 16, 0.2),
    "random_batch_only": lambda: random_mask((2, 1, 50, 70), 16, 16, 0.3),
    "causal": lambda: causal_mask(50, 70, block_q=16, block_kv=8),
    "causal_offset": lambda: causal_mask(50, 70, offset=20, block_q=8, block_kv=8),
    "sliding_window": lambda: sliding_window_mask(50, 70, window=(10, 0), block_q=8, block_kv=16),
    "sink_window": lambda: sink_window_mask(50, 70, sink=3, window=9, block_q=8, block_kv=8),
    "chunked_causal": lambda: chunked_causal_mask(50, 70, chunk=12, block_q=16, block_kv=8),
    "global_band": lambda: global_band_mask(50, 70, band=4, num_global=3, block_q=8, block_kv=8),
    "stacked_heads": lambda: stack_heads(
        [causal_mask(50, 70, block_q=8, block_kv=8)] * 2
        + [sliding_window_mask(50, 70, window=(4, 0), block_q=8, block_kv=8)] * 2
    ),
    "composed": lambda: causal_mask(50, 70, block_q=16, block_kv=8)
    & random_mask((1, 4, 50, 70), 16, 8, 0.5),
}


@pytest.mark.parametrize("name", sorted(XLA_CASES))
def test_xla_matches_reference_f32(name):
    mask = XLA_CASES[name]()
    kv_heads = (4, 2, 1)[sorted(XLA_CASES).index(name) % 3]  # MHA, GQA and MQA across the cases
    q, k, v = qkv(2, 4, kv_heads, 50, 70, 16)
    ref = run("reference", q, k, v, mask)
    got = run("xla", q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
    oracle = plain_softmax_attention(q, k, v, mask.to_dense(), 1 / 4)
    np.testing.assert_allclose(np.asarray(ref), oracle, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_xla_chunked_rows_and_value_dim(shared):
    """Rows processed 2 (3) per step (a scan plus a remainder step), the output buffer carried
    through the steps; Dv != D (a zero-filled buffer instead of the queries); query blocks that keep
    nothing (not in any bucket) come out as zeros."""
    shape = (1, 1, 56, 40) if shared else (2, 2, 56, 40)  # 7 query blocks of 8
    mask = random_mask(shape, 8, 8, 0.3, empty_rows=tuple(range(8, 24)))  # blocks 1, 2 empty
    ((_, _, i_r, parts),) = _buckets(kernel_blocks(mask), 1)
    chunk = 2 if shared else 3
    assert len(i_r) == (5 if shared else 20) and len(i_r) % chunk  # 5 rows per (batch, head)
    width = sum(p[0].shape[1] for p in parts)
    per_row = (4 if shared else 1) * 8 * width * 8 * 4  # as the path sizes a step
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (2, 2, 56, 8))
    k = jax.random.normal(ks[1], (2, 2, 40, 8))
    for dv in (8, 12):
        v = jax.random.normal(ks[2], (2, 2, 40, dv))
        got = jax.jit(lambda q, k, v: xla_path.attention(q, k, v, mask, 0.5, max_buckets=1,
                                                         chunk_bytes=chunk * per_row))(q, k, v)
        want = plain_softmax_attention(q, k, v, mask.to_dense(), 0.5)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
        assert not np.any(np.asarray(got)[:, :, 8:24])


def test_empty_rows_are_zero_and_grads_finite():
    mask = random_mask((1, 1, 40, 40), 8, 8, 0.15, empty_rows=tuple(range(8, 20)))
    q, k, v = qkv(1, 2, 2, 40, 40, 8)
    for backend in ("reference", "xla"):
        out = run(backend, q, k, v, mask)
        assert not np.isnan(np.asarray(out)).any()
        np.testing.assert_array_equal(np.asarray(out)[:, :, 8:20], 0.0)
        loss = lambda q, k, v, be=backend: attention(q, k, v, mask, backend=be).sum()
        grads = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)
        for g in grads:
            assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_array_equal(np.asarray(grads[0])[:, :, 8:20], 0.0)


def test_fully_masked_everything_is_zero():
    mask = BlockMask.from_dense(np.zeros((1, 1, 20, 30), bool), 8, 8)
    q, k, v = qkv(1, 2, 1, 20, 30, 8)
    for backend in ("reference", "xla"):
        np.testing.assert_array_equal(np.asarray(run(backend, q, k, v, mask)), 0.0)


def test_density_one_equals_dense_attention():
    q, k, v = qkv(2, 4, 2, 64, 48, 16)
    want = jax.jit(jax.nn.dot_product_attention)(
        q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    ).transpose(0, 2, 1, 3)
    for backend in ("reference", "xla"):
        got = jax.jit(functools.partial(attention, backend=backend))(q, k, v)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    causal_want = jax.nn.dot_product_attention(
        q.transpose(0, 2, 1, 3)[:, :48], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
        is_causal=True,
    ).transpose(0, 2, 1, 3)
    got = jax.jit(functools.partial(attention, causal=True, backend="xla"))(q[:, :, :48], k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(causal_want), atol=1e-5, rtol=1e-5)


def test_causal_flag_intersects_mask():
    mask = sliding_window_mask(40, window=(5, 5), block_q=8, block_kv=8)
    q, k, v = qkv(1, 2, 2, 40, 40, 8)
    a = run("xla", q, k, v, mask, causal=True)
    b = run("xla", q, k, v, sliding_window_mask(40, window=(5, 0), block_q=8, block_kv=8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bf16_inputs():
    mask = sink_window_mask(64, sink=4, window=16, block_q=16, block_kv=16)
    q, k, v = qkv(1, 4, 2, 64, 64, 32, dtype=jnp.bfloat16)
    ref = run("reference", q, k, v, mask)
    got = run("xla", q, k, v, mask)
    assert got.dtype == jnp.bfloat16
    oracle = plain_softmax_attention(q, k, v, mask.to_dense(), 32**-0.5)
    np.testing.assert_allclose(np.asarray(got, np.float32), oracle, atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(ref, np.float32), oracle, atol=2e-2, rtol=2e-2)


def assert_xla_grads_match_reference(q, k, v, mask, w):
    """Gradients of ``sum(attention(q, k, v) * w)`` w.r.t. q, k, v: xla equals reference."""

    def loss(backend, q, k, v):
        return jnp.sum(attention(q, k, v, mask, backend=backend) * w)

    g_ref = jax.jit(jax.grad(functools.partial(loss, "reference"), (0, 1, 2)))(q, k, v)
    g_xla = jax.jit(jax.grad(functools.partial(loss, "xla"), (0, 1, 2)))(q, k, v)
    for a, b in zip(g_xla, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["random", "sink_window", "stacked_heads", "causal"])
def test_xla_gradients_match_reference(name):
    mask = XLA_CASES[name]()
    q, k, v = qkv(2, 4, 2, 50, 70, 16, seed=3)
    w = jax.random.normal(jax.random.key(9), (2, 4, 50, 16))
    assert_xla_grads_match_reference(q, k, v, mask, w)


def test_xla_full_block_masks():
    """A block-level mask (every kept block full): the bucket of the eight rows keeping all
    blocks takes the unmasked path, the merged bucket of 1-3 blocks masks only its padding slots;
    both equal the float64 oracle in value and the reference backend in gradient."""
    rng = np.random.default_rng(4)
    counts = (0, 1, 2, 3) + (10,) * 8
    blocks = np.zeros((1, 1, 12, 10), bool)
    for i, n in enumerate(counts):
        blocks[0, 0, i, rng.choice(10, n, replace=False)] = True
    mask = BlockMask.from_blocks(blocks, 4, 4, 48, 40)
    parts = [p for *_, ps in _buckets(kernel_blocks(mask), 8) for p in ps]
    assert {_part_masking(kinds, False, True) for _, kinds in parts} == {None, "slots"}
    q, k, v = qkv(1, 4, 2, 48, 40, 8, seed=5)
    w = jax.random.normal(jax.random.key(2), (1, 4, 48, 8))
    np.testing.assert_allclose(
        np.asarray(run("xla", q, k, v, mask)),
        plain_softmax_attention(q, k, v, mask.to_dense(), 8**-0.5), atol=1e-5, rtol=1e-5)
    assert_xla_grads_match_reference(q, k, v, mask, w)


def test_dynamic_mask_under_jit():
    """A mask computed from q and k inside jit (threshold on pooled scores) works end to end."""
    q, k, v = qkv(1, 2, 2, 48, 48, 8)

    @jax.jit
    def f(q, k, v):
        pooled_q = q.reshape(1, 2, 6, 8, 8).mean(3)
        pooled_k = k.reshape(1, 2, 6, 8, 8).mean(3)
        scores = jnp.einsum("bhid,bhjd->bhij", pooled_q, pooled_k)
        top = jax.lax.top_k(scores, 2)[1]
        blocks = jnp.any(jax.nn.one_hot(top, 6, dtype=bool), axis=-2)
        m = BlockMask.from_blocks(blocks, 8, 8, 48, 48, max_kv_blocks=2)
        return attention(q, k, v, m, backend="xla"), m.to_dense()

    out, dense = f(q, k, v)
    np.testing.assert_allclose(
        np.asarray(out), plain_softmax_attention(q, k, v, dense, 8**-0.5), atol=1e-5, rtol=1e-5
    )


def test_split_counts_minimises_padding():
    counts = np.array([1, 1, 2, 9, 9, 10, 0])
    assert _split_counts(counts, 1) == [(1, 10)]
    assert _split_counts(counts, 2) == [(1, 2), (9, 10)]
    # padded work: 4 buckets 32 (optimum), 3 buckets 34 (within 10%), 2 buckets 36
    assert _split_counts(counts, 8) == [(1, 1), (2, 2), (9, 10)]
    assert _split_counts(np.array([1, 50]), 8) == [(1, 1), (50, 50)]
    assert _split_counts(np.zeros(3, int), 4) == []


# -- Pallas kernels in interpret mode (small sizes) ----------------------------------------------

PALLAS_CASES = {
    "random_gqa_ragged": (lambda: random_mask((1, 2, 40, 24), 16, 8, 0.3, empty_rows=(5,)), 2, 1),
    "sink_window": (
        lambda: sink_window_mask(40, 24, sink=2, window=7, block_q=8, block_kv=8), 2, 2
    ),
    "per_head_batch": (lambda: random_mask((2, 2, 24, 32), 8, 16, 0.25), 2, 2),
}


@pytest.mark.parametrize("backend", ["pallas_tpu", "pallas_gpu"])
@pytest.mark.parametrize("name", sorted(PALLAS_CASES))
def test_pallas_matches_reference(backend, name):
    make, heads, kv_heads = PALLAS_CASES[name]
    mask = make()
    batch = mask.block_map.shape[0] if name == "per_head_batch" else 1
    q, k, v = qkv(batch, heads, kv_heads, mask.seq_q, mask.seq_kv, 8)
    ref = run("reference", q, k, v, mask)
    got = run(backend, q, k, v, mask, interpret=True)
    assert not np.isnan(np.asarray(got)).any()
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["pallas_tpu", "pallas_gpu"])
def test_pallas_bf16_and_grad(backend):
    mask = causal_mask(32, block_q=16, block_kv=8)
    q, k, v = qkv(1, 2, 1, 32, 32, 16, dtype=jnp.bfloat16)
    got = run(backend, q, k, v, mask, interpret=True)
    oracle = plain_softmax_attention(q, k, v, mask.to_dense(), 0.25)
    np.testing.assert_allclose(np.asarray(got, np.float32), oracle, atol=2e-2, rtol=2e-2)
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    loss = lambda be, q: attention(q, kf, vf, mask, backend=be, interpret=True).sum()
    g = jax.jit(jax.grad(functools.partial(loss, backend)))(qf)
    g_ref = jax.jit(jax.grad(functools.partial(loss, "reference")))(qf)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_on_device_gpu(dtype):
    """Compiled on a GPU only (benchmarks/device_check.py runs it): forward with a static and a
    dynamic mask, and the backward through custom_vjp, against the float64 oracle."""
    if jax.default_backend() not in ("gpu", "cuda", "rocm"):
        pytest.skip(f"needs a GPU; this host runs {jax.default_backend()}")
    static = causal_mask(512, block_q=64, block_kv=64) | random_mask((1, 1, 512, 512), 64, 64, 0.1)
    q, k, v = qkv(1, 4, 2, 512, 512, 64, dtype=dtype, seed=3)
    # f32 matmuls may run as TF32 on the device: loose tolerances for both dtypes
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == jnp.bfloat16 else dict(atol=1e-2, rtol=1e-2)
    oracle = plain_softmax_attention(q, k, v, static.to_dense(), 0.125)
    got = run("pallas_gpu", q, k, v, static, interpret=False)
    np.testing.assert_allclose(np.asarray(got, np.float32), oracle, **tol)
    dense = jnp.asarray(np.random.default_rng(4).random((1, 4, 512, 512)) < 0.2)
    dyn = jax.jit(lambda q, k, v, d: attention(q, k, v, BlockMask.from_dense(d, 64, 64),
                                               backend="pallas_gpu", interpret=False))
    oracle = plain_softmax_attention(q, k, v, np.asarray(dense), 0.125)
    np.testing.assert_allclose(np.asarray(dyn(q, k, v, dense), np.float32), oracle, **tol)
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    loss = lambda be, q, k, v: jnp.sum(attention(q, k, v, static, backend=be) * jnp.cos(q))
    grads = jax.jit(jax.grad(functools.partial(loss, "pallas_gpu"), (0, 1, 2)))(qf, kf, vf)
    grads_ref = jax.jit(jax.grad(functools.partial(loss, "reference"), (0, 1, 2)))(qf, kf, vf)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-2, rtol=2e-2)


# -- errors ------------------------------------------------------------------------------------


def test_errors():
    q, k, v = qkv(1, 4, 2, 16, 16, 8)
    with pytest.raises(ValueError, match="`?backend`? must be one of"):
        attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="q must have shape"):
        attention(q[0], k, v)
    with pytest.raises(TypeError, match="k must be float32, bfloat16 or float16"):
        attention(q, k.astype(jnp.int32), v)
    with pytest.raises(ValueError, match="must be a multiple of kv heads"):
        attention(q, jnp.concatenate([k, k[:, :1]], 1), jnp.concatenate([v, v[:, :1]], 1))
    with pytest.raises(ValueError, match="same head dim"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="k and v must agree"):
        attention(q, k, v[:, :, :8])
    with pytest.raises(ValueError, match=r"mask has \(seq_q, seq_kv\) = \(8, 8\)"):
        attention(q, k, v, causal_mask(8))
    with pytest.raises(ValueError, match="mask head dim 3"):
        attention(q, k, v, causal_mask(16).broadcast_to(1, 3))
    with pytest.raises(ValueError, match="mask batch dim 2"):
        attention(q, k, v, causal_mask(16).broadcast_to(2, 1))
    with pytest.raises(TypeError, match="mask must be a BlockMask"):
        attention(q, k, v, np.ones((16, 16), bool))
    with pytest.raises(TypeError, match="scale must be a Python float"):
        attention(q, k, v, scale="big")
    with pytest.raises(TypeError, match="causal must be a bool"):
        attention(q, k, v, causal=1)


@pytest.mark.parametrize("backend", ["pallas_tpu", "pallas_gpu"])
def test_pallas_dynamic_mask_and_grad(backend):
    """A mask built under jit (dynamic: jnp block map, padded metadata) through the Pallas path."""
    q, k, v = qkv(1, 2, 1, 24, 24, 8, seed=5)
    dense = jnp.asarray(np.random.default_rng(2).random((1, 2, 24, 24)) < 0.3)

    def loss(backend, q, k, v, dense):
        m = BlockMask.from_dense(dense, 8, 8)
        out = attention(q, k, v, m, backend=backend, interpret=True)
        return jnp.sum(out * jnp.arange(8.0)), out

    f = jax.jit(jax.value_and_grad(functools.partial(loss, backend), (0, 1, 2), has_aux=True))
    r = jax.jit(jax.value_and_grad(functools.partial(loss, "reference"), (0, 1, 2), has_aux=True))
    (_, out), grads = f(q, k, v, dense)
    (_, out_ref), grads_ref = r(q, k, v, dense)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_ref), atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


# -- real lowering without a device: Pallas -> Triton for "cuda" --------------------------------
# (The TPU kernel's lowering queries the TPU generation in jax 0.10.2, so it cannot be lowered
# on a CPU host; benchmarks/device_check.py covers the GPU kernel compiled on a device.)


def test_pallas_gpu_kernel_lowers_to_triton():
    from sparsejax.attention import pallas_gpu

    mask = causal_mask(256, block_q=128, block_kv=128) | random_mask((1, 1, 256, 256), 128, 128, 0.1)
    q, k, v = qkv(1, 2, 1, 256, 256, 128, dtype=jnp.bfloat16)
    fn = lambda q, k, v: pallas_gpu.attention(q, k, v, mask, 0.1, interpret=False)  # noqa: E731
    text = jax.jit(fn).trace(q, k, v).lower(lowering_platforms=("cuda",)).as_text()
    assert "xla.gpu.triton" in text  # the Triton lowering, not Mosaic GPU

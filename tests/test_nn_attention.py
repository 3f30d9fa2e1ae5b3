"""Tests for the Flax NNX and Equinox sparse attention layers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import nn
from sparsejax.attention import BlockMask, attention, sliding_window_mask
from sparsejax.nn import SparseMultiHeadAttention

F, H, KVH, L = 32, 4, 2, 40


def manual(x, wq, wk, wv, wo, mask, causal=False):
    """Projection + reference attention by hand: x [B, L, F]."""
    b, n, _ = x.shape
    d = F // H
    q = (x @ wq).reshape(b, n, H, d).transpose(0, 2, 1, 3)
    k = (x @ wk).reshape(b, n, KVH, d).transpose(0, 2, 1, 3)
    v = (x @ wv).reshape(b, n, KVH, d).transpose(0, 2, 1, 3)
    o = attention(q, k, v, mask, causal=causal, backend="reference")
    return o.transpose(0, 2, 1, 3).reshape(b, n, -1) @ wo


def topk_pattern(q, k):
    """A dynamic pattern: each 8-query block keeps its 2 best 8-key blocks (pooled scores)."""
    b, h, n, d = q.shape
    nb = n // 8
    pq = q.reshape(b, h, nb, 8, d).mean(3)
    g = h // k.shape[1]
    pk = jnp.repeat(k, g, axis=1).reshape(b, h, nb, 8, d).mean(3)
    top = jax.lax.top_k(jnp.einsum("bhid,bhjd->bhij", pq, pk), 2)[1]
    blocks = jnp.any(jax.nn.one_hot(top, nb, dtype=bool), axis=-2)
    return BlockMask.from_blocks(blocks, 8, 8, n, n, max_kv_blocks=2)


def test_nnx_layer_matches_manual_and_trains():
    layer = SparseMultiHeadAttention(F, H, num_kv_heads=KVH, causal=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, L, F))
    mask = sliding_window_mask(L, window=(6, 0), block_q=8, block_kv=8)
    got = layer(x, mask)
    want = manual(
        x, layer.query.kernel[...], layer.key.kernel[...], layer.value.kernel[...],
        layer.out.kernel[...], mask, causal=True,
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)

    @nnx.jit
    def loss_grad(layer, x):
        return nnx.grad(lambda m: jnp.sum(m(x, topk_pattern) ** 2))(layer)

    grads = loss_grad(layer, x)
    g = grads.query.kernel[...]
    assert g.shape == (F, F) and np.isfinite(np.asarray(g)).all() and np.abs(g).sum() > 0


def test_eqx_layer_matches_manual_and_vmaps():
    layer = nn.eqx.SparseMultiHeadAttention(F, H, num_kv_heads=KVH, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, L, F))
    mask = sliding_window_mask(L, window=(6, 6), block_q=8, block_kv=8)
    got = jax.vmap(lambda xi: layer(xi, mask))(x)
    want = manual(
        x, layer.query.weight.T, layer.key_proj.weight.T, layer.value.weight.T,
        layer.out.weight.T, mask,
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(x[0], topk_pattern) ** 2)))(layer)
    assert np.isfinite(np.asarray(grads.key_proj.weight)).all()


def test_dense_default_equals_full_attention():
    layer = SparseMultiHeadAttention(F, H, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, 16, F))
    a = layer(x)
    b = layer(x, BlockMask.from_dense(np.ones((16, 16), bool), 8, 8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="`num_kv_heads` must be a positive divisor"):
        SparseMultiHeadAttention(F, H, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`in_features` must be divisible by num_heads=4"):
        nn.eqx.SparseMultiHeadAttention(30, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`backend` must be one of"):
        SparseMultiHeadAttention(F, H, backend="triton", rngs=nnx.Rngs(0))
    layer = SparseMultiHeadAttention(F, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`x` must be of shape \[batch, seq, features\]"):
        layer(jnp.ones((L, F)))
    with pytest.raises(TypeError, match="`mask` must be None, a BlockMask or a callable"):
        layer(jnp.ones((1, L, F)), np.ones((L, L), bool))
    with pytest.raises(TypeError, match="`mask` must be a pattern returning a BlockMask; got one returning NoneType"):
        layer(jnp.ones((1, L, F)), lambda q, k: None)


@pytest.mark.slow
def test_demo_stage_runs_quick():
    from sparsejax.demo import attention as stage
    from sparsejax.demo.context import make_context

    ctx = make_context(steps=50, finetune_steps=5, quick=True, progress=False)
    out = stage.run(ctx)
    assert set(out["patterns"]) == {"causal", "sliding_window", "sink_window"}
    for r in out["patterns"].values():
        assert 0 < r["density"] <= 1 and r["max_abs_err"] < 1e-4
    assert out["patterns"]["sliding_window"]["density"] < out["patterns"]["causal"]["density"]

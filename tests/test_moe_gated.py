"""Gated experts (w3) in every moe_ffn backend, float64 accumulation, the backend registry,
BlockIndex.transpose, argument blame, and the layer's shared experts and padding mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _moe_reference import loop_reference, np_silu

from sparsejax import _backend, moe
from sparsejax._blocks import BlockIndex, pack_blocks

T, D, F, E = 16, 8, 16, 4


def _problem(dtype=jnp.float32):
    k = jax.random.split(jax.random.key(7), 5)
    x = jax.random.normal(k[0], (T, D), dtype)
    w1 = jax.random.normal(k[1], (E, D, F), dtype) / 3
    w2 = jax.random.normal(k[2], (E, F, D), dtype) / 4
    w3 = jax.random.normal(k[3], (E, D, F), dtype) / 3
    logits = jax.random.normal(k[4], (T, E))
    return x, w1, w2, w3, logits


def test_gated_experts_match_loop_and_grads():
    """Every layout (einsum, ragged, block-sparse; ragged_dot shares ragged's layout and is
    checked against the XLA loop in test_moe.py) equals the float64 loop; gradients of the
    gate and up projections agree with the dense reference's."""
    x, w1, w2, w3, logits = _problem()
    r = moe.top_k_routing(logits, 2, capacity_factor=1.0)
    want_y = loop_reference(x, r, w1, w2, act=np_silu, w3=w3)

    def dense(w1, w3):  # every expert on every token, combined by the dense gates
        h = jax.nn.silu(jnp.einsum("td,edf->tef", x, w1)) * jnp.einsum("td,edf->tef", x, w3)
        return jnp.einsum("te,ted->td", r.gates(), jnp.einsum("tef,efd->ted", h, w2))

    want_g = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.tanh(dense(a, b))), (0, 1)))(w1, w3)
    for backend, kw in (("einsum", {}), ("ragged_xla", dict(tile=8)),
                        ("block_sparse_xla", dict(tile=8))):
        @jax.jit
        def value_and_grads(a, b, backend=backend, kw=kw):  # one compile per backend
            y, vjp = jax.vjp(lambda a, b: moe.moe_ffn(x, r, a, w2, b, activation=jax.nn.silu,
                                                      backend=backend, **kw), a, b)
            return y, vjp(1 - jnp.tanh(y) ** 2)  # the gradient of sum(tanh(y))

        y, grads = value_and_grads(w1, w3)
        np.testing.assert_allclose(y, want_y, atol=2e-5, err_msg=backend)
        for a, b in zip(grads, want_g):
            np.testing.assert_allclose(a, b, atol=3e-5, rtol=1e-4, err_msg=backend)


def test_float64_accumulation_and_block_sparse_under_x64():
    with jax.enable_x64(True):
        x, w1, w2, w3, logits = _problem(jnp.float64)
        r = moe.top_k_routing(logits, 2)
        want = loop_reference(x, r, w1, w2, act=np_silu, w3=w3)
        for b in ("ragged_xla",):
            y = moe.moe_ffn(x, r, w1, w2, w3, activation=jax.nn.silu, backend=b, tile=8)
            assert y.dtype == jnp.float64
            np.testing.assert_allclose(y, want, atol=1e-12, err_msg=b)
        # block_sparse runs under x64 (it crashed); the sparse ops accumulate in float32
        y = moe.moe_ffn(x, r, w1, w2, w3, activation=jax.nn.silu, backend="block_sparse_xla",
                        tile=8)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, want, atol=1e-5)


def test_errors_blame_the_wrong_array():
    x, w1, w2, w3, logits = _problem()
    r = moe.top_k_routing(logits, 2)
    with pytest.raises(ValueError, match="^`w1` must be"):
        moe.moe_ffn(x, r, w1[:, :5], w2)  # wrong d_model in w1 only
    with pytest.raises(ValueError, match="^`w2` must be"):
        moe.moe_ffn(x, r, w1, w2[:, :5])
    with pytest.raises(ValueError, match="^`x` must be"):
        moe.moe_ffn(x[:, :5], r, w1, w2)
    with pytest.raises(ValueError, match="^`w3` must be"):
        moe.moe_ffn(x, r, w1, w2, w3[:, :, :5])
    with pytest.raises(ValueError, match="`backend` must be one of"):
        moe.moe_ffn(x, r, w1, w2, backend="ragged")


def test_registry_one_table(monkeypatch):
    for op in ("bsr_matmul", "sddmm", "nm_matmul", "attention", "gmm", "moe_ffn", "csr_matmul",
               "sparse_input_matmul"):
        assert op in _backend.IMPLEMENTATIONS and _backend.backends(op)[0] == "auto"
    assert _backend.resolve("moe_ffn") == _backend.Resolved("ragged_xla", True)
    assert _backend.resolve("gmm", "xla") == _backend.Resolved("xla", False)
    monkeypatch.setattr(_backend, "platform", lambda: "gpu")
    assert _backend.resolve("moe_ffn").name == "ragged_dot"
    assert _backend.resolve("bsr_matmul").name == "pallas_gpu"
    assert _backend.resolve("nm_matmul").name == "pallas_gpu"
    monkeypatch.setattr(_backend, "platform", lambda: "tpu")
    assert _backend.resolve("nm_matmul").name == "xla"
    assert _backend.resolve("attention").name == "pallas_tpu"
    with pytest.raises(ValueError, match="`backend` must be one of"):
        _backend.resolve("gmm", "pallas_gpu")
    assert not hasattr(moe, "GMM_BACKENDS")


@pytest.mark.parametrize("kinds", [False, True])
def test_block_index_transpose(kinds):
    rng = np.random.default_rng(0)
    keep = rng.random((2, 5, 7)) < 0.4
    km = rng.integers(1, 3, size=keep.shape).astype(np.int8) if kinds else None
    idx = pack_blocks(jnp.asarray(keep), 7, kinds=None if km is None else jnp.asarray(km))
    t, src = idx.transpose(7, 5)
    np.testing.assert_array_equal(t.to_keep(5), keep.swapaxes(-1, -2))
    ind, valid = np.asarray(idx.indices), np.asarray(idx.valid())
    for b in range(2):
        for c in range(7):
            for j in range(int(t.counts[b, c])):
                r, s = int(t.indices[b, c, j]), int(src[b, c, j])
                assert valid[b, r, s] and ind[b, r, s] == c
                if kinds:
                    assert int(t.kinds[b, c, j]) == km[b, r, c]
    np_t, _ = BlockIndex(np.asarray(idx.indices), np.asarray(idx.counts)).transpose(7, 5)
    np.testing.assert_array_equal(np_t.indices, t.indices)


def test_layer_shared_experts_and_padding_mask():
    cfg = moe.MoEConfig(d_model=D, d_ff=F, num_experts=E, k=2, gated=True, activation="silu",
                        num_shared_experts=2, shared_d_ff=8, shared_gate=True,
                        capacity_factor=1.0, backend="einsum")
    params = moe.init_moe(jax.random.key(0), cfg)
    assert params["shared"]["w1"].shape == (D, 16) and params["shared"]["gate"].shape == (D, 1)
    x = jax.random.normal(jax.random.key(1), (T, D))
    mask = jnp.arange(T) < 10
    y, aux = moe.moe_apply(params, x, cfg, mask=mask)
    sh = params["shared"]
    shared = (jax.nn.sigmoid(x @ sh["gate"]) * (jax.nn.silu(x @ sh["w1"]) * (x @ sh["w3"]))
              @ sh["w2"])
    r = moe.top_k_routing(x @ params["router"], 2, capacity_factor=1.0, mask=mask)
    routed = moe.moe_ffn(x, r, params["w1"], params["w2"], params["w3"],
                         activation=jax.nn.silu, backend="einsum")
    np.testing.assert_allclose(y, routed + shared, atol=1e-5)
    np.testing.assert_allclose(y[10:], shared[10:], atol=1e-5)  # padding: shared experts only
    assert int(aux.expert_load.sum()) <= 20
    with pytest.raises(ValueError, match="`mask` must be"):
        moe.moe_apply(params, x, cfg, mask=mask[:5])

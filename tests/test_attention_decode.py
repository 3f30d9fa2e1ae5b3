"""attend_kept: decode attention over the kept KV entries equals dense attention with the
equivalent one-row mask, for every decode selection (Quest, SnapKV, Ada-SnapKV, MoA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.attention import BlockMask, decode, dense_attention
from sparsejax.attention.moa import MoARule

B, H, HKV, L, D = 2, 4, 2, 96, 8


@pytest.fixture(scope="module")
def cache():
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, H, D))
    k = jax.random.normal(ks[1], (B, HKV, L, D))
    v = jax.random.normal(ks[2], (B, HKV, L, D))
    prompt_q = jax.random.normal(ks[3], (B, H, L, D))
    return q, k, v, prompt_q


def _dense(q, k, v, keep):
    """Dense attention of the one query with ``keep`` as a [B|1, H, 1, L] token mask."""
    keep = jnp.asarray(keep)
    if keep.ndim == 2:
        keep = keep[None]
    if keep.shape[1] != H:
        keep = jnp.repeat(keep, H // keep.shape[1], axis=1)
    mask = BlockMask.from_dense(keep[:, :, None, :], 1, 16)
    return dense_attention(q[:, :, None], k, v, mask)[:, :, 0]


def test_quest_keep_per_query_head(cache):
    q, k, v, _ = cache
    keep = decode.quest_keep(q, k, page_size=8, token_budget=32, share_pages=False)
    got = decode.attend_kept(q, k, v, keep, token_budget=32 + 8)
    np.testing.assert_allclose(got, _dense(q, k, v, keep), atol=1e-5, rtol=1e-5)
    # the full cache differs: the selection matters
    assert not np.allclose(got, _dense(q, k, v, jnp.ones_like(keep)), atol=1e-3)


def test_snapkv_and_ada_keep_per_kv_head(cache):
    q, k, v, pq = cache
    for fn in (decode.snapkv_keep, decode.ada_snapkv_keep):
        keep = fn(pq, k, token_budget=24, window=16, kernel_size=5, local_window=8)
        assert keep.shape == (B, HKV, L)
        got = jax.jit(lambda q, k, v, keep: decode.attend_kept(q, k, v, keep, token_budget=L))(
            q, k, v, keep
        )
        np.testing.assert_allclose(got, _dense(q, k, v, keep), atol=1e-5, rtol=1e-5)


def test_moa_keep_broadcasts_over_batch(cache):
    q, k, v, _ = cache
    rule = MoARule(max_new_tokens=0, sink_size=8, minimum_cache_size=0, split_size=8)
    keep = decode.moa_keep([0.0] * H, [0.2, 0.3, 0.5, 1.0], 64, L, rule=rule)
    got = decode.attend_kept(q, k, v, keep)  # token_budget from the concrete mask
    np.testing.assert_allclose(got, _dense(q, k, v, keep), atol=1e-5, rtol=1e-5)


def test_empty_rows_and_capacity_truncation(cache):
    q, k, v, _ = cache
    keep = np.zeros((B, H, L), bool)
    keep[:, 1, 5] = True
    keep[:, 2, :] = True
    out = decode.attend_kept(q, k, v, keep, token_budget=4)
    assert np.all(np.asarray(out[:, 0]) == 0)  # nothing kept: zeros, no NaN
    one = np.asarray(v)[:, 0, 5]
    np.testing.assert_allclose(out[:, 1], one, atol=1e-6)  # a single kept key returns its value
    first4 = np.zeros((B, H, L), bool)
    first4[:, 2, :4] = True
    np.testing.assert_allclose(out[:, 2], _dense(q, k, v, first4)[:, 2], atol=1e-5)
    grad = jax.grad(lambda q: decode.attend_kept(q, k, v, keep, token_budget=4).sum())(q)
    assert np.all(np.isfinite(grad))


def test_keep_to_indices():
    keep = jnp.array([[True, False, True, True], [False, False, False, True]])
    idx, valid = decode.keep_to_indices(keep, 3)
    np.testing.assert_array_equal(idx, [[0, 2, 3], [3, 0, 0]])
    np.testing.assert_array_equal(valid, [[True, True, True], [True, False, False]])
    idx, valid = decode.keep_to_indices(keep, 6)
    assert idx.shape == (2, 6) and int(valid.sum()) == 4
    jidx, jvalid = jax.jit(lambda kp: decode.keep_to_indices(kp, 6))(keep)  # eager == jit
    np.testing.assert_array_equal(jidx, idx)
    np.testing.assert_array_equal(jvalid, valid)
    with pytest.raises(TypeError, match="`keep` must be a bool"):
        decode.keep_to_indices(jnp.ones((2, 4)), 3)


def test_errors(cache):
    q, k, v, _ = cache
    keep = jnp.ones((B, H, L), bool)
    with pytest.raises(ValueError, match="token_budget"):
        jax.jit(lambda keep: decode.attend_kept(q, k, v, keep))(keep)
    with pytest.raises(TypeError, match="keep"):
        decode.attend_kept(q, k, v, keep.astype(jnp.float32))
    with pytest.raises(ValueError, match="keep"):
        decode.attend_kept(q, k, v, jnp.ones((B, 3, L), bool))
    with pytest.raises(ValueError, match="kv_len"):
        decode.attend_kept(q, k, v, jnp.ones((B, H, L - 1), bool))
    with pytest.raises(ValueError, match=r"`q` must be \[B, H, D\]"):
        decode.attend_kept(q[:, :, None], k, v, keep)

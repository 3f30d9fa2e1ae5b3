"""SparseD: block selection against a NumPy restatement of the reference rule, counts, schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.attention import prefill as sparsed


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _block_importance(a, bs):
    """Mean |A| over bs x bs blocks of a zero-padded [rows, keys] matrix."""
    r, c = a.shape
    nr, nc = -(-r // bs), -(-c // bs)
    a = np.pad(np.abs(a), [(0, nr * bs - r), (0, nc * bs - c)])
    return a.reshape(nr, bs, nc, bs).mean((1, 3))[0]


def _topk(x, k):
    out = np.zeros(x.shape, bool)
    out[np.argsort(-x, kind="stable")[:k]] = True
    return out


def _sparsed_ref(q, k, new_generation, bs, rho):
    """SparseD's selection for one (batch, head): q, k [L, D] float64."""
    lq, d = q.shape
    nb = -(-lq // bs)
    last = None
    for idx in range(nb):
        if lq - idx * bs <= new_generation or idx == nb - 1:
            last = idx
            break
    mask = np.zeros((nb, nb), bool)
    for idx in range(nb):
        qb = q[idx * bs : (idx + 1) * bs]
        a = _softmax(qb @ k.T / math.sqrt(d))
        imp = _block_importance(a, bs)
        mask[idx] = _topk(imp, max(1, int(nb * rho) + 1))
    mask[:, last:] = False
    kg = k[last * bs :]
    ng = -(-kg.shape[0] // bs)
    for idx in range(nb):
        qb = q[idx * bs : (idx + 1) * bs]
        a = _softmax(qb @ kg.T / math.sqrt(d))
        imp = _block_importance(a, bs)
        mask[idx, last:] |= _topk(imp, max(1, int(ng * rho) + 1))
    return mask, last


@pytest.mark.parametrize(
    "lq,bs,rho,gen,hkv",
    [(100, 16, 0.3, 30, 2), (96, 32, 0.5, 40, 4), (70, 8, 0.1, 0, 1), (33, 16, 0.3, 200, 4)],
)
def test_selection_matches_reference_rule(lq, bs, rho, gen, hkv):
    rng = np.random.default_rng(lq)
    q = rng.normal(size=(2, 4, lq, 8))
    k = rng.normal(size=(2, hkv, lq, 8))
    got = np.asarray(
        sparsed.sparsed_blocks(
            jnp.asarray(q, jnp.float32),
            jnp.asarray(k, jnp.float32),
            new_generation=gen,
            block_size=bs,
            rho=rho,
        )
    )
    nb = -(-lq // bs)
    assert got.shape == (2, 4, nb, nb)
    for b in range(2):
        for h in range(4):
            ref, last = _sparsed_ref(q[b, h], k[b, h // (4 // hkv)], gen, bs, rho)
            np.testing.assert_array_equal(got[b, h], ref)
    assert last == sparsed.sparsed_generation_start(lq, gen, bs)


def test_kept_block_counts():
    rng = np.random.default_rng(0)
    lq, bs, rho, gen = 256, 16, 0.3, 64
    q = jnp.asarray(rng.normal(size=(1, 2, lq, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 2, lq, 16)), jnp.float32)
    m = np.asarray(sparsed.sparsed_blocks(q, k, new_generation=gen, block_size=bs, rho=rho))
    nb, last = 16, sparsed.sparsed_generation_start(lq, gen, bs)
    assert last == 12
    n_gen = nb - last
    # isolated selection: exactly floor(n_gen * rho) + 1 generation blocks per query block
    assert np.all(m[..., last:].sum(-1) == int(n_gen * rho) + 1)
    # prompt blocks: the top floor(nb * rho) + 1 over all blocks, restricted to the prompt
    prompt = m[..., :last].sum(-1)
    assert np.all(prompt <= int(nb * rho) + 1) and np.all(prompt >= 1)


def test_generation_start():
    assert sparsed.sparsed_generation_start(1000, 256, 128) == 6
    assert sparsed.sparsed_generation_start(1000, 0, 128) == 7
    assert sparsed.sparsed_generation_start(1000, 5000, 128) == 0
    assert sparsed.sparsed_generation_start(1024, 256, 128) == 6


def test_schedule_steps():
    s = sparsed.SparseDSchedule(num_steps=10, skip=0.2)
    assert s.end == 3
    assert [s.is_dense(t) for t in range(10)] == [True] * 4 + [False] * 6
    assert [s.builds_mask(t) for t in range(10)] == [t == 3 for t in range(10)]
    assert [s.reuses_mask(t) for t in range(10)] == [t > 3 for t in range(10)]
    assert sparsed.SparseDSchedule(num_steps=256).end == 52


def test_update_builds_once_and_reuses_under_jit():
    sched = sparsed.SparseDSchedule(num_steps=8, skip=0.25)  # end = 3
    keys = jax.random.split(jax.random.key(0), 8)
    qs = [jax.random.normal(kk, (1, 2, 64, 8)) for kk in keys]
    init = jnp.ones((1, 2, 4, 4), bool)
    step_fn = jax.jit(
        lambda t, q, c: sparsed.sparsed_update(
            sched, t, q, q, c, new_generation=16, block_size=16, rho=0.3
        )
    )
    cache = init
    for t in range(8):
        dense, cache = step_fn(jnp.int32(t), qs[t], cache)
        assert bool(dense) == (t <= 3)
        if t < 3:
            np.testing.assert_array_equal(cache, init)
        if t == 3:
            built = sparsed.sparsed_blocks(
                qs[3], qs[3], new_generation=16, block_size=16, rho=0.3
            )
            np.testing.assert_array_equal(cache, built)
            assert not np.asarray(cache).all()
    np.testing.assert_array_equal(cache, built)  # reused, not recomputed from later steps


def test_mask_wrapper_and_bf16():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(1, 2, 50, 8)), jnp.bfloat16)
    blocks = sparsed.sparsed_blocks(q, q, new_generation=10, block_size=16)
    mask = sparsed.sparsed_mask(q, q, new_generation=10, block_size=16)
    dense = np.asarray(mask.to_dense())
    i, j = np.arange(50)[:, None] // 16, np.arange(50)[None, :] // 16
    np.testing.assert_array_equal(dense, np.asarray(blocks)[:, :, i, j])
    ref = sparsed.sparsed_blocks(
        q.astype(jnp.float32), q.astype(jnp.float32), new_generation=10, block_size=16
    )
    assert (np.asarray(ref) == np.asarray(blocks)).mean() > 0.9


def test_errors():
    q = jnp.ones((1, 4, 32, 8))
    with pytest.raises(ValueError, match="rho"):
        sparsed.sparsed_blocks(q, q, new_generation=4, rho=1.5)
    with pytest.raises(ValueError, match="multiple"):
        sparsed.sparsed_blocks(q, jnp.ones((1, 3, 32, 8)), new_generation=4)
    with pytest.raises(ValueError, match="matching"):
        sparsed.sparsed_blocks(q, jnp.ones((1, 4, 31, 8)), new_generation=4)
    with pytest.raises(TypeError, match="block_size"):
        sparsed.sparsed_blocks(q, q, new_generation=4, block_size=16.0)
    with pytest.raises(ValueError, match="new_generation"):
        sparsed.sparsed_blocks(q, q, new_generation=-1)
    with pytest.raises(ValueError, match="num_steps"):
        sparsed.SparseDSchedule(num_steps=0)
    with pytest.raises(ValueError, match="skip"):
        sparsed.SparseDSchedule(num_steps=10, skip=2.0)

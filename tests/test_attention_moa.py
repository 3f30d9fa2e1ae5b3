"""MoA: span rule, prefill block layout, decode windows, influence profiling and the search."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.attention import decode, moa, prefill
from sparsejax.attention.moa import MoARule

PREFILL = MoARule(max_new_tokens=0)


def _span_ref(alpha, beta, n, new=1024, sink=64, minimum=128, split=64):
    s = int(alpha + beta * (n + new))
    s = min(s, n + new)
    s = max(s, minimum)
    s = -(-s // split) * split
    return s, min(s, sink), s - min(s, sink)


def _layout_ref(sink_blocks, local_blocks, nb):
    """The reference kernel's visiting loop, restated: j in 0..m unless strictly between."""
    out = np.zeros((nb, nb), bool)
    for m in range(nb):
        max_sink = min(sink_blocks - 1, m)
        min_local = max(0, m + 1 - local_blocks)
        for j in range(m + 1):
            if not (max_sink < j < min_local):
                out[m, j] = True
    return out


def test_span_hand_computed():
    span, sink, local = moa.moa_spans(
        [100.0, -500.0, 3000.0, -0.5, 0.0], [0.1, 0.01, 1.0, 0.0, 0.0421], 2048
    )
    # 100 + 0.1 * 3072 = 407.2 -> 407 -> 448; -500 + 30.72 -> -469 -> 128; capped at 3072;
    # int(-0.5) = 0 -> 128; 0.0421 * 3072 = 129.3 -> 129 -> 192.
    np.testing.assert_array_equal(span, [448, 128, 3072, 128, 192])
    np.testing.assert_array_equal(sink, [64, 64, 64, 64, 64])
    np.testing.assert_array_equal(local, span - 64)


def test_span_small_sink_and_no_new_tokens():
    span, sink, local = moa.moa_spans(
        [0.0], [0.5], 100, rule=MoARule(max_new_tokens=0, sink_size=16, minimum_cache_size=0,
                                       split_size=8)
    )
    assert (span[0], sink[0], local[0]) == (56, 16, 40)


@settings(max_examples=30, deadline=None)
@given(st.floats(-5000, 5000), st.floats(0, 1), st.integers(1, 20000), st.integers(0, 2048))
def test_span_matches_rule(alpha, beta, n, new):
    span, sink, local = moa.moa_spans([alpha], [beta], n, rule=MoARule(max_new_tokens=new))
    assert (span[0], sink[0], local[0]) == _span_ref(alpha, beta, n, new)
    assert span[0] % 64 == 0 and span[0] >= 128


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-600, 900), st.floats(0, 1)), min_size=1, max_size=3),
    st.integers(1, 700),
    st.sampled_from([0, 64, 200]),
)
def test_block_layout_matches_kernel_loop(rules, n, new):
    alphas, betas = zip(*rules)
    lay = moa.moa_blocks(alphas, betas, n, rule=MoARule(max_new_tokens=new))
    nb = -(-n // 64)
    assert lay.shape == (len(rules), nb, nb)
    for h, (a, b) in enumerate(rules):
        _, sink, local = _span_ref(a, b, n, new)
        np.testing.assert_array_equal(lay[h], _layout_ref(sink // 64, local // 64, nb))


def test_block_layout_literal():
    # S = 0.25 * 512 = 128 -> sink 1 block, local 1 block: block 0 and the diagonal only.
    lay = moa.moa_blocks([0.0], [0.25], 512, rule=PREFILL)[0]
    expect = np.eye(8, dtype=bool)
    expect[:, 0] = True
    np.testing.assert_array_equal(lay, expect)
    # S = 256: sink 1 block, local 3 blocks.
    lay = moa.moa_blocks([0.0], [0.5], 512, rule=PREFILL)[0]
    assert lay[7].tolist() == [True, False, False, False, False, True, True, True]


@pytest.mark.parametrize("n", [64, 200, 300])
def test_moa_mask_is_layout_and_causal(n):
    alphas, betas = [0.0, 100.0], [0.25, 0.1]
    mask = prefill.moa_mask(alphas, betas, n, rule=PREFILL)
    assert mask.is_static and mask.shape == (1, 2, n, n)
    dense = np.asarray(mask.to_dense())[0]
    lay = moa.moa_blocks(alphas, betas, n, rule=PREFILL)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    expect = lay[:, i // 64, j // 64] & (j <= i)
    np.testing.assert_array_equal(dense, expect)
    np.testing.assert_array_equal(moa.moa_tokens(alphas, betas, n, rule=PREFILL), expect)
    np.testing.assert_allclose(mask.density, lay.mean())


def _circular_cache(kv_len, span, sink):
    """Simulate the static + circular cache: positions held after writing kv_len tokens."""
    slots = [None] * span
    for t in range(kv_len):
        if t < sink:
            slots[t] = t
        else:
            slots[sink + (t - sink) % (span - sink)] = t
    return sorted(s for s in slots if s is not None)


@pytest.mark.parametrize("kv_len", [1, 100, 448, 449, 1000, 3000])
def test_decode_keep_is_sink_plus_circular_window(kv_len):
    alphas, betas = [100.0, 0.0], [0.1, 0.0]
    keep = decode.moa_keep(alphas, betas, 2048, kv_len)
    assert keep.shape == (1, 2, kv_len)
    keep = keep[0]
    span, sink, _ = moa.moa_spans(alphas, betas, 2048)
    for h in range(2):
        expect = _circular_cache(kv_len, int(span[h]), int(sink[h]))
        assert np.nonzero(keep[h])[0].tolist() == expect
        assert keep[h].sum() == min(kv_len, span[h])
    idx, valid = decode.keep_to_indices(keep, int(keep.sum(-1).max()))
    for h in range(2):
        assert idx[h][valid[h]].tolist() == np.nonzero(keep[h])[0].tolist()


def test_influence_formula_and_first_row():
    rng = np.random.default_rng(0)
    logits = np.where(np.tril(np.ones((6, 6), bool)), rng.normal(size=(2, 6, 6)), -np.inf)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    g = rng.normal(size=a.shape)
    e = np.asarray(moa.moa_influence(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32)))
    eps = np.finfo(np.float32).eps
    ref = -a * (g - (g * a).sum(-1, keepdims=True)) / (1 - a + eps)
    ref[..., 0, :] = -(g * a)[..., 0, :]
    np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)


def test_influence_is_exact_drop_effect_for_linear_loss():
    # For L = sum(W * A), dropping key j of row i and renormalising changes L by exactly E[i, j].
    rng = np.random.default_rng(1)
    n = 5
    a = rng.random((n, n)) + 0.1
    a /= a.sum(-1, keepdims=True)
    w = rng.normal(size=(n, n))
    e = np.asarray(moa.moa_influence(jnp.asarray(a), jnp.asarray(w), eps=0.0))
    for i in range(1, n):
        for j in range(n):
            dropped = a.copy()
            dropped[i, j] = 0
            dropped[i] /= dropped[i].sum()
            np.testing.assert_allclose(e[i, j], (w * dropped).sum() - (w * a).sum(), rtol=1e-6)


def _toy_model(n_heads=2, d=8):
    def probs_fn(batch):
        q, k, _, _ = batch
        s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
        n = q.shape[2]
        s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -jnp.inf)
        return jax.nn.softmax(s, axis=-1)

    def loss_fn(a, batch):
        _, _, v, target = batch
        return jnp.sum((jnp.einsum("bhqk,bhkd->bhqd", a, v) - target) ** 2)

    def batch(key, b, n):
        ks = jax.random.split(key, 4)
        return tuple(jax.random.normal(kk, (b, n_heads, n, d)) for kk in ks)

    return probs_fn, loss_fn, batch


def test_profile_pools_abs_influence_per_length():
    probs_fn, loss_fn, make = _toy_model()
    batches = {
        20: [make(jax.random.key(0), 2, 20), make(jax.random.key(1), 1, 20)],
        16: [make(jax.random.key(2), 3, 16)],
    }
    prof = moa.moa_profile(loss_fn, probs_fn, batches, rule=MoARule(block_size=8))
    assert sorted(prof) == [16, 20]
    assert prof[20].shape == (2, 3, 3) and prof[16].shape == (2, 2, 2)
    for n, group in batches.items():
        total, count = 0.0, 0
        for b in group:
            a = np.asarray(probs_fn(b), np.float64)
            g = np.asarray(jax.grad(loss_fn)(probs_fn(b), b), np.float64)
            eps = np.finfo(np.float32).eps
            e = -a * (g - (g * a).sum(-1, keepdims=True)) / (1 - a + eps)
            e[..., 0, :] = -(g * a)[..., 0, :]
            e = np.abs(e) * np.tril(np.ones((n, n)))
            nb = -(-n // 8)
            e = np.pad(e, [(0, 0), (0, 0), (0, nb * 8 - n), (0, nb * 8 - n)])
            total = total + e.reshape(*e.shape[:2], nb, 8, nb, 8).sum((3, 5)).sum(0)
            count += a.shape[0]
        np.testing.assert_allclose(prof[n], total / count, rtol=2e-4, atol=1e-6)
    assert np.all(np.triu(prof[20], 1) == 0)


def test_candidates_reference_grid():
    a, b = moa.moa_candidates([2048, 4096, 8192], [16384])
    grid_a = np.linspace(-2048, 8192, 11)  # (8192 + 2048) // 1024 + 1 = 11 alphas
    grid_b = np.linspace(0, 1, 9)
    expect = [
        (x, y)
        for x in grid_a
        for y in grid_b
        if x + y * 8192 <= 8192 and x + y * 16384 <= 16384 and x + y * 2048 > 0
    ]
    assert len(a) == len(expect)
    assert sorted(zip(a.tolist(), b.tolist())) == sorted(expect)
    key = a + b * 16384
    assert np.all(np.diff(key) >= 0)


def _brute_force(prof, budgets, cands, block=64):
    alphas, betas = cands
    heads = next(iter(prof.values())).shape[0]
    lens = sorted(budgets)
    loss = np.zeros((heads, len(alphas)))
    for n, e in prof.items():
        for c, (a, b) in enumerate(zip(alphas, betas)):
            _, sink, local = _span_ref(a, b, n, 0)
            nb = -(-n // block)
            lay = _layout_ref(sink // block, local // block, nb)
            loss[:, c] += (e * (~lay & np.tril(np.ones((nb, nb), bool)))).sum((1, 2))
    cost = np.zeros((len(lens), len(alphas)), int)
    for i, n in enumerate(lens):
        for c, (a, b) in enumerate(zip(alphas, betas)):
            _, sink, local = _span_ref(a, b, n, 0)
            nb = -(-n // block)
            cost[i, c] = _layout_ref(sink // block, local // block, nb).sum(1).max()
    best = (np.inf, None)
    for choice in itertools.product(range(len(alphas)), repeat=heads):
        ok = all(
            cost[i, list(choice)].sum() <= math.floor(budgets[n] * (-(-n // block)) * heads + 1e-9)
            for i, n in enumerate(lens)
        )
        val = loss[np.arange(heads), list(choice)].sum()
        if ok and val < best[0]:
            best = (val, choice)
    return best


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.3, 0.45, 0.6, 0.8]))
def test_search_exact_matches_brute_force(seed, budget):
    rng = np.random.default_rng(seed)
    heads = 3
    prof = {256: rng.random((heads, 4, 4)) ** 3, 512: rng.random((heads, 8, 8)) ** 3}
    cands = moa.moa_candidates([256, 512], alpha_interval=128)
    sel = rng.choice(len(cands[0]), size=6, replace=False)
    cands = (cands[0][sel], cands[1][sel])
    budgets = {256: budget, 512: budget}
    best_val, _ = _brute_force(prof, budgets, cands)
    try:
        res = moa.moa_search(prof, budget, candidates=cands, solver="exact")
    except ValueError:
        assert best_val == np.inf
        return
    assert res["loss"] == pytest.approx(best_val, rel=1e-9, abs=1e-12)
    for n in (256, 512):
        assert res["density"][n] <= budget + 1e-9
    lag = moa.moa_search(prof, budget, candidates=cands, solver="lagrangian")
    assert lag["loss"] >= best_val - 1e-9
    for n in (256, 512):
        assert lag["density"][n] <= budget + 1e-9


def test_search_budget_at_unprofiled_length_and_default_grid():
    rng = np.random.default_rng(0)
    prof = {1024: rng.random((4, 16, 16)), 2048: rng.random((4, 32, 32))}
    res = moa.moa_search(prof, {1024: 0.5, 2048: 0.5, 4096: 0.3})
    assert set(res["density"]) == {1024, 2048, 4096}
    assert res["density"][4096] <= 0.3 + 1e-9 and res["density"][2048] <= 0.5 + 1e-9
    assert res["alphas"].shape == (4,) and res["betas"].shape == (4,)
    # a looser budget never loses more influence
    loose = moa.moa_search(prof, {1024: 0.9, 2048: 0.9, 4096: 0.9})
    assert loose["loss"] <= res["loss"] + 1e-9


def test_errors():
    with pytest.raises(ValueError, match="shape of alphas"):
        moa.moa_spans([0.0, 1.0], [0.5], 100)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        moa.moa_spans([], [], 100)
    with pytest.raises(TypeError, match="seq_len"):
        moa.moa_spans([0.0], [0.5], 100.0)
    with pytest.raises(ValueError, match="block_size"):
        MoARule(block_size=0)
    with pytest.raises(TypeError, match="rule"):
        moa.moa_blocks([0.0], [0.5], 100, rule={"block_size": 64})
    with pytest.raises(ValueError, match="shape of probs"):
        moa.moa_influence(jnp.ones((2, 2)), jnp.ones((2, 3)))
    prof = {256: np.ones((2, 4, 4))}
    with pytest.raises(ValueError, match="density_budget must be in"):
        moa.moa_search(prof, 1.5, candidates=([0.0], [0.5]))
    with pytest.raises(ValueError, match="solver"):
        moa.moa_search(prof, 0.5, solver="gurobi")
    with pytest.raises(ValueError, match="alpha_interval"):
        moa.moa_search(prof, 0.5)  # reference grid is empty for such short lengths
    with pytest.raises(ValueError, match="infeasible"):
        moa.moa_search(prof, 0.1, candidates=([0.0], [1.0]))
    with pytest.raises(ValueError, match="shape"):
        moa.moa_search({256: np.ones((2, 3, 3))}, 0.5, candidates=([0.0], [0.5]))
    with pytest.raises(ValueError, match="at least one"):
        moa.moa_profile(lambda a, b: a.sum(), lambda b: b, [])

"""sparsejax.oneshot: LayerStats, magnitude, Wanda, SparseGPT, DSnoT and the sequential driver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import masks
from sparsejax.oneshot import (
    LayerStats,
    dsnot_prune,
    layer_order,
    magnitude_prune,
    prune_model,
    reconstruction_error,
    sparsegpt_prune,
    wanda_prune,
)
from sparsejax.oneshot._reference import sparsegpt_loop

# ---------------------------------------------------------------- oracles (plain numpy, float64)


def dsnot_reference(W, mean, var, norms, keep, m=None, max_cycles=50, threshold=0.0, power=1.0,
                    same_sign=True):
    """Row-by-row python loop of the DSnoT cycle as `sparsejax.oneshot.dsnot_prune` documents it
    (without the guard). W, keep: [rows, cols] (one row per output)."""
    W = np.asarray(W, np.float64)
    keep0 = np.asarray(keep, bool)
    keep = keep0.copy()
    metric = W * mean[None, :]
    grow = metric / np.maximum(var, 1e-12)[None, :] ** power
    wanda_s = np.abs(W) * norms[None, :]
    for r in range(W.shape[0]):
        e = metric[r][~keep0[r]].sum()
        sign0 = np.sign(e)
        for _ in range(max_cycles):
            if abs(e) <= threshold:
                break
            cand = [j for j in range(W.shape[1])
                    if not keep[r, j] and not keep0[r, j] and np.sign(metric[r, j]) == np.sign(e)]
            if not cand:
                break
            g = max(cand, key=lambda j: grow[r, j]) if e > 0 else min(cand, key=lambda j: grow[r, j])
            if m is None:
                pc = [j for j in range(W.shape[1]) if keep[r, j] and keep0[r, j]
                      and np.sign(metric[r, j]) == -np.sign(e)]
            else:
                pc = [j for j in range(W.shape[1]) if keep[r, j] and keep0[r, j] and j // m == g // m]
            if not pc:
                break
            p = min(pc, key=lambda j: wanda_s[r, j])
            after = e + metric[r, p] - metric[r, g]
            if same_sign and np.sign(after) != sign0:
                break
            keep[r, g], keep[r, p], e = True, False, after
    return keep


def layer_data(key, n_in=32, n_out=16, tokens=256):
    kx, kw, ks = jax.random.split(key, 3)
    # correlated inputs with a non-zero mean, like real activations
    mix = jax.random.normal(ks, (n_in, n_in)) / np.sqrt(n_in)
    x = jax.random.normal(kx, (tokens, n_in)) @ mix + 0.3 + 0.5 * jax.random.normal(ks, (n_in,))
    w = jax.random.normal(kw, (n_in, n_out))
    return x, w


def recon(x, w, w_pruned):
    return float(jnp.linalg.norm(x @ w - x @ w_pruned))


@pytest.fixture(scope="module")
def data():
    x, w = layer_data(jax.random.key(0), n_in=48, n_out=24, tokens=300)
    return x, w, LayerStats.from_inputs(x)


# ---------------------------------------------------------------- LayerStats


def test_layer_stats_batches_equal_concatenated():
    x = jax.random.normal(jax.random.key(1), (5, 7, 6))
    stats = LayerStats.from_inputs(x[:2]).update(x[2:4]).update(x[4:])
    merged = LayerStats.from_inputs(x[:3]).merge(LayerStats.from_inputs(x[3:]))
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(merged)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="`other` must be a LayerStats over 6 features"):
        stats.merge(LayerStats.zeros(5))
    flat = np.asarray(x, np.float64).reshape(-1, 6)
    assert int(stats.count) == 35
    np.testing.assert_allclose(stats.sum, flat.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.sumsq, (flat ** 2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(stats.gram, flat.T @ flat, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats.mean, flat.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats.var, flat.var(0), rtol=1e-4)
    np.testing.assert_allclose(stats.norms, np.linalg.norm(flat, axis=0), rtol=1e-5)


def test_layer_stats_float32_accumulation_pytree_and_jit():
    x = jax.random.normal(jax.random.key(2), (8, 4)).astype(jnp.bfloat16)
    stats = jax.jit(lambda s, x: s.update(x))(LayerStats.zeros(4), x)
    assert stats.sum.dtype == jnp.float32 and stats.gram.dtype == jnp.float32
    x32 = np.asarray(x, np.float32)
    np.testing.assert_allclose(stats.gram, x32.T @ x32, rtol=1e-5, atol=1e-5)
    no_gram = LayerStats.from_inputs(x, gram=False)
    assert no_gram.gram is None and len(jax.tree.leaves(no_gram)) == 3
    with pytest.raises(ValueError, match="features"):
        stats.update(jnp.ones((3, 5)))
    with pytest.raises(TypeError, match="floating"):
        LayerStats.from_inputs(jnp.ones((3, 4), jnp.int32))


# ---------------------------------------------------------------- magnitude and Wanda


W4 = jnp.array([[0.1, -4.0, 0.5, 2.0],
                [-3.0, 0.2, -0.3, 1.0],
                [0.7, 0.6, 5.0, -0.05],
                [1.5, -0.4, 0.05, 0.9]])  # [in=4, out=4]


def test_magnitude_unstructured_is_layer_wise():
    pruned, mask = magnitude_prune(W4, 0.5, axis=0)
    want = np.abs(np.asarray(W4)) >= 0.7  # the 8 largest of 16: 5 4 3 2 1.5 1 .9 .7
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(pruned, np.where(want, W4, 0))


@pytest.mark.parametrize("in_axis", [0, 1])
def test_magnitude_nm_along_input_axis(in_axis):
    w = W4 if in_axis == 0 else W4.T
    _, mask = magnitude_prune(w, n=1, m=2, axis=in_axis)
    # [in, out] layout: per output column, keep the larger of inputs (0, 1) and of (2, 3)
    want = np.array([[False, True, True, True],
                     [True, False, False, False],
                     [False, True, True, False],
                     [True, False, False, True]])
    np.testing.assert_array_equal(mask, want if in_axis == 0 else want.T)


def test_wanda_per_output_groups_hand_computed():
    x = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0],
                   [0.0, 0.0, 0.0, 1.0]])  # norms [1, 10, 0.1, 1]
    stats = LayerStats.from_inputs(x, gram=False)
    _, mask = wanda_prune(W4, stats, 0.5, axis=0)
    # scores |W| * norms per input row; each output column keeps its 2 best inputs
    score = np.abs(np.asarray(W4)) * np.array([1.0, 10.0, 0.1, 1.0])[:, None]
    want = np.zeros((4, 4), bool)
    for j in range(4):
        want[np.argsort(-score[:, j])[:2], j] = True
    np.testing.assert_array_equal(mask, want)
    assert mask.sum(axis=0).tolist() == [2, 2, 2, 2]
    _, mask_t = wanda_prune(W4.T, stats, 0.5, axis=1)
    np.testing.assert_array_equal(mask_t, want.T)
    _, mask_nm = wanda_prune(W4, stats, n=1, m=2, axis=0)
    np.testing.assert_array_equal(mask_nm, masks.nm(jnp.asarray(score), 1, 2, axis=0))


# ---------------------------------------------------------------- SparseGPT


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(n=2, m=4)])
def test_sparsegpt_matches_float64_reference_loop(pattern):
    # 72 inputs in blocks of 32: full blocks swept in sub-blocks of 16, a padded last block of 8
    x, w = layer_data(jax.random.key(3), n_in=72, n_out=12, tokens=200)
    x = x.at[:, 5].set(0.0)  # a dead input
    with jax.enable_x64(True):
        x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
        gram = x64.T @ x64
        stats = LayerStats(jnp.int32(200), jnp.sum(x64, 0), jnp.sum(x64 ** 2, 0), gram)
        got_w, got_mask = sparsegpt_prune(w64, stats, **pattern, block_size=32, axis=0)
        got_w, got_mask = np.asarray(got_w), np.asarray(got_mask)
    prunen = pattern["m"] - pattern["n"] if "m" in pattern else 0
    ref_w, ref_mask = sparsegpt_loop(np.asarray(w64).T, np.asarray(gram), pattern.get(
        "sparsity", 0.0), prunen, pattern.get("m", 0), blocksize=32)
    np.testing.assert_array_equal(got_mask, ref_mask.T)
    np.testing.assert_allclose(got_w, ref_w.T, atol=1e-6)
    assert not got_mask[5].any()


def test_sparsegpt_float32_beats_wanda_and_magnitude(data):
    x, w, stats = data
    w_sg, mask = sparsegpt_prune(w, stats, 0.5, block_size=16, axis=0)
    w_wa, _ = wanda_prune(w, stats, 0.5, axis=0)
    w_mg, _ = magnitude_prune(w, 0.5, axis=0)
    assert w_sg.dtype == jnp.float32 and float(jnp.mean(mask)) == pytest.approx(0.5, abs=0.01)
    np.testing.assert_array_equal(w_sg == 0, ~mask)
    e_sg, e_wa, e_mg = recon(x, w, w_sg), recon(x, w, w_wa), recon(x, w, w_mg)
    assert e_sg < 0.9 * min(e_wa, e_mg)  # (Wanda vs magnitude varies with the data)
    ref_w, _ = sparsegpt_loop(np.asarray(w).T, np.asarray(stats.gram), 0.5, blocksize=16)
    assert e_sg == pytest.approx(recon(x, w, jnp.asarray(ref_w.T, jnp.float32)), rel=1e-2)
    w_nm, mask_nm = sparsegpt_prune(w, stats, n=2, m=4, block_size=16, axis=0)
    assert bool(masks.satisfies_nm(mask_nm, 2, 4, axis=0))
    assert recon(x, w, w_nm) < recon(x, w, wanda_prune(w, stats, n=2, m=4, axis=0)[0])


def test_sparsegpt_under_jit_and_torch_layout(data):
    x, w, stats = data
    want, want_mask = sparsegpt_prune(w, stats, 0.5, block_size=16, axis=0)
    got, got_mask = jax.jit(lambda w, s: sparsegpt_prune(w.T, s, 0.5, axis=1, block_size=16))(
        w, stats)
    np.testing.assert_array_equal(got_mask.T, want_mask)
    np.testing.assert_allclose(got.T, want, atol=1e-5)


# ---------------------------------------------------------------- DSnoT


@pytest.mark.parametrize("m, same_sign", [(None, True), (None, False), (4, True)])
def test_dsnot_matches_loop_reference_and_keeps_pattern(data, m, same_sign):
    x, w, stats = data
    _, start = wanda_prune(w, stats, 0.5, axis=0) if m is None else wanda_prune(w, stats, n=2, m=4, axis=0)
    _, got = dsnot_prune(w, stats, start, m=m, update_threshold=0.01, guard=False, same_sign=same_sign, axis=0)
    want = dsnot_reference(np.asarray(w).T, np.asarray(stats.mean, np.float64),
                           np.asarray(stats.var, np.float64), np.asarray(stats.norms, np.float64),
                           np.asarray(start).T, m=m, threshold=0.01, same_sign=same_sign)
    np.testing.assert_array_equal(np.asarray(got), want.T)
    assert (np.asarray(got) != np.asarray(start)).any()  # it did swap something
    np.testing.assert_array_equal(got.sum(axis=0), start.sum(axis=0))  # per-output count kept
    if m is not None:
        assert bool(masks.satisfies_nm(got, 2, 4, axis=0))
        assert bool(masks.satisfies_nm(~got, 2, 4, axis=0))


@pytest.mark.parametrize("max_cycles, threshold, most_swaps", [(50, 0.0, 3), (2, 0.0, 2),
                                                               (1, 0.0, 1), (50, 6.0, 2)])
def test_dsnot_unstructured_same_sign_matches_the_loop_on_ties(max_cycles, threshold, most_swaps):
    """The unstructured same-sign cycle runs as fixed orders (`_dsnot_in_order`): the loop's
    picks exactly, on small integers (exact arithmetic) with inputs of equal statistics (every
    score tied with others: the lower index must win, as in the loop), rows swapping up to three
    times, the cycle limit and the threshold."""
    rng = np.random.default_rng(1)
    w = (rng.integers(1, 4, (12, 10)) * rng.choice([-1, 1], (12, 10))).astype(np.float32)
    base = rng.integers(-1, 4, 64).astype(np.float32)
    x = np.stack([rng.permutation(base) for _ in range(12)], 1)  # equal mean, variance, norm
    x[:, 0] = 0.0  # a dead input: zero mean and variance
    stats = LayerStats.from_inputs(jnp.asarray(x))
    start = jnp.asarray((w < 0) | (rng.random(w.shape) < 0.25))  # large same-sign errors
    _, got = dsnot_prune(w, stats, start, max_cycles=max_cycles, update_threshold=threshold,
                         guard=False, axis=0)
    want = dsnot_reference(w.T, np.asarray(stats.mean, np.float64),
                           np.asarray(stats.var, np.float64), np.asarray(stats.norms, np.float64),
                           np.asarray(start).T, max_cycles=max_cycles, threshold=threshold)
    np.testing.assert_array_equal(np.asarray(got), want.T)
    swaps = (np.asarray(got) & ~np.asarray(start)).sum(axis=0)
    assert swaps.max() == most_swaps and (swaps.min() == 0) == (threshold > 0)


def test_dsnot_argmax_order_ranks_floats_as_argmax():
    from sparsejax.oneshot.dsnot import _argmax_order

    x = jnp.array([-jnp.inf, -2.5, -0.0, 0.0, 1e-30, 3.0, jnp.inf, jnp.nan, -1.0, -jnp.nan, 0.0,
                   -1e-30, 3.0], jnp.float32)
    assert np.signbit(np.asarray(x)[9])  # a NaN with the sign bit set ranks as high too
    keys, x = np.asarray(_argmax_order(x)), np.asarray(x)
    rng = np.random.default_rng(0)
    for _ in range(200):  # argmax as jnp.argmax ranks floats: first NaN, else first maximum
        sub = rng.permutation(len(x))[:rng.integers(1, len(x) + 1)]
        assert np.argmax(x[sub]) == np.argmax(keys[sub]), x[sub]
    assert int(jnp.argmax(x)) == np.argmax(x) == np.argmax(keys) == 7


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2 ** 16), sparsity=st.sampled_from([0.3, 0.5, 0.7]),
       start=st.sampled_from(["wanda", "magnitude", "sparsegpt"]))
def test_dsnot_never_increases_reconstruction_error(seed, sparsity, start):
    x, w = layer_data(jax.random.key(seed), n_in=48, n_out=24, tokens=300)  # the fixture's shapes
    stats = LayerStats.from_inputs(x)
    if start == "wanda":
        _, mask = wanda_prune(w, stats, sparsity, axis=0)
    elif start == "magnitude":
        _, mask = magnitude_prune(w, sparsity, axis=0)
    else:
        _, mask = sparsegpt_prune(w, stats, sparsity, block_size=16, axis=0)
    pruned, new = dsnot_prune(w, stats, mask, same_sign=False, axis=0)  # oscillates: the guard must hold
    before = reconstruction_error(w, jnp.where(mask, w, 0.0), stats.gram, axis=0)
    after = reconstruction_error(w, pruned, stats.gram, axis=0)
    assert bool(jnp.all(after <= before * (1 + 1e-6) + 1e-6))
    assert int(new.sum()) == int(mask.sum())
    np.testing.assert_array_equal(new.sum(axis=0), mask.sum(axis=0))


def test_dsnot_guard_reverts_rows_that_got_worse(data):
    x, w, stats = data
    _, start = wanda_prune(w, stats, 0.5, axis=0)
    before = reconstruction_error(w, jnp.where(start, w, 0.0), stats.gram, axis=0)
    free, free_mask = dsnot_prune(w, stats, start, same_sign=False, guard=False, axis=0)
    guarded, guarded_mask = dsnot_prune(w, stats, start, same_sign=False, axis=0)
    worse = np.asarray(reconstruction_error(w, free, stats.gram, axis=0) > before)
    assert worse.any()  # unguarded oscillation hurts outputs
    np.testing.assert_array_equal(guarded_mask[:, worse], start[:, worse])
    np.testing.assert_array_equal(guarded_mask[:, ~worse], free_mask[:, ~worse])


def test_reconstruction_error_matches_direct(data):
    x, w, stats = data
    pruned, _ = wanda_prune(w, stats, 0.5, axis=0)
    got = float(jnp.sum(reconstruction_error(w, pruned, stats.gram, axis=0)))
    assert got == pytest.approx(recon(x, w, pruned) ** 2, rel=1e-4)


# ---------------------------------------------------------------- bad input


def test_clear_errors(data):
    x, w, stats = data
    with pytest.raises(ValueError, match=r"`stats` must be statistics of w.shape\[0\] = 40"):
        wanda_prune(w[:40], stats, 0.5, axis=0)
    with pytest.raises(ValueError, match="not both"):
        magnitude_prune(w, 0.5, n=2, m=4, axis=0)
    with pytest.raises(ValueError, match="or None with both `n` and `m`"):
        wanda_prune(w, stats, axis=0)
    with pytest.raises(ValueError, match="or None with both `n` and `m`"):
        magnitude_prune(w, n=2, axis=0)
    with pytest.raises(ValueError, match=r"`w.shape\[0\]` must be divisible by `m`=5"):
        sparsegpt_prune(w, stats, n=2, m=5, axis=0)
    with pytest.raises(ValueError, match="`block_size` must be divisible by `m`=4"):
        sparsegpt_prune(w, stats, n=2, m=4, block_size=6, axis=0)
    with pytest.raises(TypeError, match="floating"):
        magnitude_prune(jnp.ones((4, 4), jnp.int32), 0.5, axis=0)
    with pytest.raises(ValueError, match="2-D"):
        magnitude_prune(jnp.ones(4), 0.5, axis=0)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(w, 1.5, axis=0)
    with pytest.raises(ValueError, match="gram=False"):
        sparsegpt_prune(w, LayerStats.from_inputs(x, gram=False), 0.5, axis=0)
    with pytest.raises(TypeError, match="LayerStats"):
        wanda_prune(w, {"sum": 1}, 0.5, axis=0)
    few = LayerStats.from_inputs(x[:10])  # 10 tokens, 48 features: a singular Gram
    with pytest.raises(ValueError, match="positive definite after damping"):
        sparsegpt_prune(w, few, 0.5, damp=0.0, axis=0)
    sparsegpt_prune(w, few, 0.5, axis=0)  # damping makes it invertible
    with pytest.raises(TypeError, match="`mask` must be a bool array"):
        dsnot_prune(w, stats, jnp.ones(w.shape), axis=0)
    with pytest.raises(ValueError, match=r"`mask` must be of shape \(48, 24\)"):
        dsnot_prune(w, stats, jnp.ones((3, 3), bool), axis=0)
    with pytest.raises(ValueError, match="`update_threshold` must be >= 0.0; got -1.0."):
        dsnot_prune(w, stats, jnp.ones(w.shape, bool), update_threshold=-1.0, axis=0)


# ---------------------------------------------------------------- the sequential driver


def two_layer_forward(params, x, tap):
    h = jax.nn.relu(tap("l1/kernel", x) @ params["l1"]["kernel"])
    return tap("l2/kernel", h) @ params["l2"]["kernel"]


@pytest.fixture(scope="module")
def two_layer():
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    params = {"l1": {"kernel": jax.random.normal(k1, (8, 16))},
              "l2": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)}}
    batches = [jax.random.normal(k, (6, 8)) + 0.5 for k in jax.random.split(k3, 3)]
    return params, batches


def test_prune_model_calibrates_later_layers_on_pruned_earlier_ones(two_layer):
    params, batches = two_layer
    seen = {}

    def spy(w, stats, *, axis):
        seen[w.shape] = stats
        return wanda_prune(w, stats, 0.5, axis=axis)

    pruned, mask_tree = prune_model(params, two_layer_forward, batches, spy, axis=0)
    x = jnp.concatenate(batches)
    w1_pruned, _ = wanda_prune(params["l1"]["kernel"], LayerStats.from_inputs(x), 0.5, axis=0)
    np.testing.assert_array_equal(pruned["l1"]["kernel"], w1_pruned)
    h_pruned = jax.nn.relu(x @ w1_pruned)
    h_dense = jax.nn.relu(x @ params["l1"]["kernel"])
    got = seen[(16, 4)]
    np.testing.assert_allclose(got.sum, LayerStats.from_inputs(h_pruned).sum, rtol=1e-5)
    np.testing.assert_allclose(got.gram, LayerStats.from_inputs(h_pruned).gram, rtol=1e-4,
                               atol=1e-4)
    assert not np.allclose(got.sum, LayerStats.from_inputs(h_dense).sum, rtol=1e-2)
    w2_want, m2_want = wanda_prune(params["l2"]["kernel"], LayerStats.from_inputs(h_pruned), 0.5, axis=0)
    np.testing.assert_array_equal(pruned["l2"]["kernel"], w2_want)
    np.testing.assert_array_equal(mask_tree["l2"]["kernel"], m2_want)
    assert mask_tree["l2"]["bias"] is None
    np.testing.assert_array_equal(pruned["l2"]["bias"], params["l2"]["bias"])


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_prune_model_named_methods(two_layer, method):
    params, batches = two_layer
    pruned, mask_tree = prune_model(params, two_layer_forward, batches, method, n=2, m=4,
                                    groups=[["l1/kernel", "l2/kernel"]], axis=0)
    for name in ("l1", "l2"):
        assert bool(masks.satisfies_nm(pruned[name]["kernel"], 2, 4, axis=0))
        assert mask_tree[name]["kernel"].dtype == jnp.bool_


def test_prune_model_errors(two_layer):
    params, batches = two_layer
    assert layer_order(two_layer_forward, params, batches[0]) == ["l1/kernel", "l2/kernel"]
    with pytest.raises(TypeError, match="re-iterable sequence"):
        prune_model(params, two_layer_forward, iter(batches), "wanda", sparsity=0.5, axis=0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        prune_model(params, two_layer_forward, batches, "obs", sparsity=0.5, axis=0)
    with pytest.raises(ValueError, match="not a leaf of `params`"):
        prune_model(params, two_layer_forward, batches, "wanda", sparsity=0.5,
                    groups=[["l3/kernel"]], axis=0)
    with pytest.raises(ValueError, match="never passed to `tap`"):
        prune_model(params, lambda p, x, tap: x @ p["l1"]["kernel"], batches, "wanda",
                    sparsity=0.5, groups=[["l1/kernel"]], axis=0)


def test_layer_stats_where_skips_padding():
    x = jax.random.normal(jax.random.key(5), (2, 5, 3))
    where = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    got = LayerStats.from_inputs(x, where)
    real = np.asarray(x)[np.asarray(where)]
    want = LayerStats.from_inputs(jnp.asarray(real))
    assert int(got.count) == 7
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`where` must be of the token shape"):
        LayerStats.from_inputs(x, where[:, :4])


def test_hessian_inverse_factor_is_upper_cholesky_of_the_damped_inverse():
    from sparsejax.oneshot import hessian_inverse_factor

    x = np.random.default_rng(0).normal(size=(400, 300))
    x[:, 7] = 0.0  # a dead input
    gram = x.T @ x
    with jax.enable_x64(True):
        u, dead = hessian_inverse_factor(jnp.asarray(gram), jnp.asarray(0.01))
        u = np.asarray(u)
    h = gram.copy()
    h[7, 7] = 1.0
    h[np.diag_indices(300)] += 0.01 * np.mean(np.diag(h))
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(h)).T, atol=1e-10)
    assert np.asarray(dead).nonzero()[0].tolist() == [7]
    # only the lower triangle is read: junk above the diagonal changes nothing
    junk = gram + np.triu(np.random.default_rng(1).normal(size=gram.shape), 1)
    with jax.enable_x64(True):
        np.testing.assert_array_equal(
            np.asarray(hessian_inverse_factor(jnp.asarray(junk), jnp.asarray(0.01))[0]), u)

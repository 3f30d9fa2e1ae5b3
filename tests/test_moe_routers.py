"""Issue 20: capacity formulas, renormalisation, DeepSeek-V3 / batch-priority routing, padding,
aux-loss-free bias, COMET zero-weight slots, losses; each against a plain transcription."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsejax import moe

# ---------------------------------------------------------------------------------------------
# 1. capacity formulas by name
# ---------------------------------------------------------------------------------------------


@given(t=st.integers(1, 300), e=st.integers(1, 64), k=st.integers(1, 4),
       cf=st.sampled_from([0.5, 1.0, 1.1, 1.25, 1.5, 2.0, 3.7]))
def test_capacity_formulas_equal_their_sources(t, e, k, cf):
    maxtext = int(max(math.ceil(t * k / e) * cf, cf))  # MaxText get_expert_capacity
    flax = int(round(cf * t / e))  # flaxformer (no k)
    assert moe.expert_capacity(t, e, k, cf, formula="maxtext") == max(1, maxtext)
    assert moe.expert_capacity(t, e, k, cf, formula="flaxformer") == max(1, flax)
    assert moe.expert_capacity(t, e, k, cf) == min(t, max(1, math.ceil(cf * t * k / e - 1e-9)))
    assert moe.expert_capacity(t, e, k, cf, min_capacity=4, formula="flaxformer") == max(4, flax)


def test_capacity_formulas_differ_and_route():
    assert [moe.expert_capacity(10, 4, 1, 1.25, formula=f) for f in moe.CAPACITY_FORMULAS] == [
        4, 3, 3]
    r = moe.top_k_routing(jnp.zeros((10, 4)), 1, capacity_factor=1.25,
                          capacity_formula="maxtext")
    assert r.capacity == 3
    with pytest.raises(ValueError, match="`formula` must be one of"):
        moe.expert_capacity(10, 4, 1, 1.0, formula="gshard")


# ---------------------------------------------------------------------------------------------
# 2. renormalisation: before drops (Mixtral), none (Switch), after drops (GShard top-2)
# ---------------------------------------------------------------------------------------------


def gshard_top2_reference(logits, capacity):
    """fairscale/DeepSpeed ``top2gating`` (lingvo/praxis Top2GatingOnLogits without the random
    second-expert policy), float64: masks, capacity by locations, gates normalised after."""
    g = np.exp(logits - logits.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    t, e = g.shape
    i1 = np.argmax(g, 1)
    m1 = np.eye(e)[i1]
    i2 = np.argmax(np.where(m1 > 0, -np.inf, g), 1)
    m2 = np.eye(e)[i2]
    loc1 = np.cumsum(m1, 0) - 1
    loc2 = np.cumsum(m2, 0) - 1 + m1.sum(0, keepdims=True)
    m1 = m1 * (loc1 < capacity)
    m2 = m2 * (loc2 < capacity)
    g1, g2 = (g * m1).sum(1), (g * m2).sum(1)
    denom = np.maximum(g1 + g2, np.finfo(np.float32).eps)
    return np.stack([g1 / denom, g2 / denom], 1), np.stack([i1, i2], 1)


def test_renormalize_after_drops_is_gshard_top2():
    logits = np.random.default_rng(0).normal(size=(20, 4)) * 2
    r = moe.top_k_routing(jnp.asarray(logits, jnp.float32), 2, capacity_factor=0.6,
                          renormalize="after_drops")
    want, idx = gshard_top2_reference(logits, r.capacity)
    np.testing.assert_array_equal(r.expert_index, idx)
    np.testing.assert_allclose(r.combine_weights, want, rtol=1e-5, atol=1e-6)
    one_dropped = np.asarray(r.kept).sum(1) == 1
    assert one_dropped.any()  # the case that distinguishes it: the kept slot gets weight 1
    np.testing.assert_allclose(np.asarray(r.combine_weights)[one_dropped].sum(1), 1.0, rtol=1e-6)
    before = moe.top_k_routing(jnp.asarray(logits, jnp.float32), 2, capacity_factor=0.6)
    assert float(jnp.max(before.combine_weights.sum(1)[one_dropped])) < 1.0


def test_renormalize_choices():
    p = np.asarray(jax.nn.softmax(jnp.array([[2.0, 1.0, 0.0]])))[0]
    r = moe.top_k_routing(jnp.array([[2.0, 1.0, 0.0]]), 2, renormalize=False)
    np.testing.assert_allclose(r.combine_weights[0], p[:2], rtol=1e-6)
    r = moe.top_k_routing(jnp.array([[2.0, 1.0, 0.0]]), 2, renormalize=True)
    np.testing.assert_allclose(r.combine_weights[0], p[:2] / p[:2].sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="`renormalize` must be one of"):
        moe.top_k_routing(jnp.zeros((2, 3)), 2, renormalize="before")


# ---------------------------------------------------------------------------------------------
# DeepSeek-V3 routing, aux-loss-free bias, batch priority, padding
# ---------------------------------------------------------------------------------------------


def deepseek_v3_reference(logits, bias, k, n_group, topk_group, scale, norm):
    """Transcription of transformers' DeepseekV3 gate (``get_topk_indices`` + weights), numpy."""
    scores = 1 / (1 + np.exp(-logits))
    choice = scores + bias
    t, e = choice.shape
    grouped = choice.reshape(t, n_group, e // n_group)
    group_scores = np.sort(grouped, -1)[..., -2:].sum(-1)
    group_idx = np.argsort(-group_scores, -1, kind="stable")[:, :topk_group]
    group_mask = np.zeros((t, n_group))
    np.put_along_axis(group_mask, group_idx, 1, -1)
    score_mask = np.repeat(group_mask, e // n_group, -1)
    tmp = np.where(score_mask > 0, choice, -np.inf)
    idx = np.argsort(-tmp, -1, kind="stable")[:, :k]
    w = np.take_along_axis(scores, idx, -1)
    if norm:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return idx, w * scale


@pytest.mark.parametrize("norm", [True, False])
def test_deepseek_v3_group_limited_sigmoid_routing(norm):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, 16))
    bias = rng.normal(size=16) * 0.6  # some scores + bias < 0: excluded groups must lose
    r = moe.top_k_routing(jnp.asarray(logits, jnp.float32), 3, score="sigmoid",
                          bias=jnp.asarray(bias, jnp.float32), num_groups=4, top_groups=2,
                          routed_scaling_factor=2.5, renormalize=norm)
    idx, w = deepseek_v3_reference(logits, bias, 3, 4, 2, 2.5, norm)
    np.testing.assert_array_equal(np.sort(r.expert_index, 1), np.sort(idx, 1))
    got = np.asarray(r.gates())
    want = np.zeros_like(got)
    np.put_along_axis(want, idx, w, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    groups = np.asarray(r.expert_index) // 4
    assert all(len(set(g)) <= 2 for g in groups)


def test_bias_changes_selection_not_weights():
    logits = jnp.array([[3.0, 0.0, -1.0]])
    r = moe.top_k_routing(logits, 1, bias=jnp.array([0.0, 5.0, 0.0]), renormalize=False)
    assert int(r.expert_index[0, 0]) == 1
    np.testing.assert_allclose(r.combine_weights[0, 0], jax.nn.softmax(logits)[0, 1], rtol=1e-6)
    load = jnp.array([5, 1, 3, 3])
    np.testing.assert_allclose(moe.update_expert_bias(jnp.zeros(4), load, 0.01),
                               [-0.01, 0.01, 0.0, 0.0])
    with pytest.raises(ValueError, match="expert_load"):
        moe.update_expert_bias(jnp.zeros(4), jnp.zeros(3), 0.01)


def flaxformer_batch_priority_reference(logits, capacity):
    """flaxformer top-1 ``TokensChooseMaskedRouter(batch_prioritized_routing=True)``: tokens
    sorted by their top probability (descending, stable), positions assigned in that order."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argmax(p, 1)
    perm = np.argsort(-p.max(1), kind="stable")
    counts = np.zeros(p.shape[1], int)
    kept = np.zeros(len(idx), bool)
    for t in perm:
        kept[t] = counts[idx[t]] < capacity
        counts[idx[t]] += 1
    return idx, kept


def test_batch_prioritized_routing():
    logits = np.random.default_rng(2).normal(size=(24, 3)) * 2
    r = moe.top_k_routing(jnp.asarray(logits, jnp.float32), 1, capacity_factor=0.5,
                          priority="batch")
    idx, kept = flaxformer_batch_priority_reference(logits, r.capacity)
    np.testing.assert_array_equal(r.expert_index[:, 0], idx)
    np.testing.assert_array_equal(r.kept[:, 0], kept)
    token_order = moe.top_k_routing(jnp.asarray(logits, jnp.float32), 1, capacity_factor=0.5)
    assert not np.array_equal(token_order.kept, r.kept)


def test_padding_tokens_take_no_capacity():
    logits = jnp.zeros((6, 2)).at[:, 0].set(5.0)  # every token prefers expert 0
    mask = jnp.array([False, False, True, True, True, True])
    r = moe.top_k_routing(logits, 1, capacity_factor=1.0, mask=mask)  # capacity 3
    np.testing.assert_array_equal(r.kept[:, 0], [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(r.expert_load(), [3, 0])
    assert float(jnp.abs(r.combine_weights[:2]).max()) == 0.0
    with pytest.raises(ValueError, match="`mask` must be"):
        moe.top_k_routing(logits, 1, mask=mask[:3])


def test_jitter_range_and_identity():
    x = jnp.ones((50, 4))
    assert moe.jitter(jax.random.key(0), x, 0.0) is x
    y = np.asarray(moe.jitter(jax.random.key(0), x, 0.1))
    assert 0.9 <= y.min() < 1.0 < y.max() <= 1.1


# ---------------------------------------------------------------------------------------------
# 6. COMET zero-weight slots take no capacity; 5. MoE-X claim removed
# ---------------------------------------------------------------------------------------------


def test_comet_zero_weight_slots_take_no_capacity():
    # E=3, k=2, hard trees (heap numbering: expert 0 = right at the root; experts 1 / 2 = left,
    # then left / right). Tokens 0-2 ("A"): both trees reach expert 0, gate [1, 0, 0], so their
    # second slot (expert 1) has weight 0. Token 3 ("B"): trees reach experts 2 and 1, gate
    # [0, .38, .62]: its real expert-1 slot is a second choice queued behind A's three
    # zero-weight expert-1 slots; with capacity 3 it must still be kept.
    params = {"split_w": jnp.array([[[-10.0, 10.0], [0.0, -10.0]],
                                    [[-10.0, 10.0], [0.0, 10.0]]]),
              "split_b": jnp.zeros((2, 2)), "leaf_w": jnp.zeros((2, 3, 2)),
              "leaf_b": jnp.zeros((2, 3)).at[0, 2].set(0.5)}
    x = jnp.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    g, _ = moe.comet_gates(params, x, gamma=0.1)
    pb = 1 / (1 + np.exp(0.5))
    np.testing.assert_allclose(g, [[1, 0, 0]] * 3 + [[0, pb, 1 - pb]], atol=1e-6)
    r = moe.comet_routing(params, x, gamma=0.1, capacity_factor=1.0)  # capacity ceil(8/3) = 3
    assert r.capacity == 3
    np.testing.assert_array_equal(r.kept, [[1, 0]] * 3 + [[1, 1]])
    np.testing.assert_array_equal(r.expert_load(), [3, 1, 1])
    np.testing.assert_allclose(r.gates(), g, atol=1e-6)


def test_moex_claim_removed():
    assert not hasattr(moe, "moex_logits")
    with pytest.raises(ValueError, match="router"):
        moe.MoEConfig(d_model=4, d_ff=4, num_experts=2, router="moex")


# ---------------------------------------------------------------------------------------------
# 7. losses
# ---------------------------------------------------------------------------------------------


def test_load_balancing_loss_rejects_out_of_range_indices():
    logits = jnp.zeros((4, 3))
    for bad in ([[0], [1], [2], [3]], [[0], [-1], [2], [1]]):
        with pytest.raises(ValueError, match=r"`expert_index` must be in \[0, 3\)"):
            moe.load_balancing_loss(logits, jnp.array(bad))
    with pytest.raises(ValueError, match="integer"):
        moe.load_balancing_loss(logits, jnp.zeros((4, 1)))
    np.testing.assert_allclose(moe.load_balancing_loss(logits, jnp.array([[0], [1], [2], [0]])),
                               1.0, rtol=1e-6)


def test_masked_balance_ignores_padding():
    from sparsejax.moe.losses import _balance

    rng = np.random.default_rng(3)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(8, 4)), jnp.float32))
    idx = jnp.asarray(rng.integers(0, 4, size=(8, 2)))
    mask = jnp.array([True] * 5 + [False] * 3)
    np.testing.assert_allclose(_balance(probs, idx, mask), _balance(probs[:5], idx[:5]),
                               rtol=1e-6)

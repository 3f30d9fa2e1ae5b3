"""Routers, auxiliary losses and the three `moe_ffn` implementations against references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _moe_reference import loop_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import moe

T, D, F, E = 24, 8, 16, 4


@pytest.fixture(scope="module")
def problem():
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (T, D))
    w1 = jax.random.normal(k[1], (E, D, F)) / 3
    w2 = jax.random.normal(k[2], (E, F, D)) / 4
    logits = jax.random.normal(k[3], (T, E))
    return x, w1, w2, logits


def dense_reference(x, gates, w1, w2, act=jax.nn.gelu):
    """Every expert on every token, combined by the dense ``[T, E]`` gates (differentiable)."""
    h = act(jnp.einsum("td,edf->tef", x, w1, precision="highest"))
    y = jnp.einsum("tef,efd->ted", h, w2, precision="highest")
    return jnp.einsum("te,ted->td", gates, y, precision="highest")


IMPLS = [
    ("einsum", {}),
    ("ragged_xla", dict(tile=8)),
    ("ragged_dot", {}),
    ("block_sparse_xla", dict(tile=8)),
    ("block_sparse_reference", dict(block_shape=(4, 8))),
]
ROUTERS = {
    "top2_dropless": lambda lg: moe.top_k_routing(lg, 2),
    "top2_cf0.75": lambda lg: moe.top_k_routing(lg, 2, capacity_factor=0.75, renormalize=False),
    "expert_choice": lambda lg: moe.expert_choice_routing(lg, 1.0),
}


# ---------------------------------------------------------------------------------------------
# routers
# ---------------------------------------------------------------------------------------------


def test_top1_capacity_drops_later_tokens():
    logits = jnp.array([[5.0, 0, 0]] * 5 + [[0, 5.0, 0]])
    r = moe.top_k_routing(logits, 1, capacity_factor=1.0)  # C = ceil(6 / 3) = 2
    assert r.capacity == 2
    np.testing.assert_array_equal(r.expert_index[:, 0], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(r.position[:, 0], [0, 1, 2, 3, 4, 0])
    np.testing.assert_array_equal(r.kept[:, 0], [True, True, False, False, False, True])
    p = jax.nn.softmax(logits[0])[0]
    np.testing.assert_allclose(r.combine_weights[:, 0], [1, 1, 0, 0, 0, 1], rtol=1e-6)  # renorm
    r2 = moe.top_k_routing(logits, 1, capacity_factor=1.0, renormalize=False)
    np.testing.assert_allclose(r2.combine_weights[:2, 0], [p, p], rtol=1e-6)
    np.testing.assert_array_equal(r.expert_load(), [2, 1, 0])
    np.testing.assert_allclose(r.dropped_fraction(), 0.5)


def test_top2_priority_first_choices_before_second_choices():
    logits = jnp.array([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0]])
    r = moe.top_k_routing(logits, 2, capacity_factor=0.5)  # C = ceil(0.5 * 4 * 2 / 2) = 2
    assert r.capacity == 2
    np.testing.assert_array_equal(r.expert_index, [[0, 1], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(r.position, [[0, 1], [0, 3], [1, 2], [2, 3]])
    np.testing.assert_array_equal(r.kept, [[1, 1], [1, 0], [1, 0], [0, 0]])
    np.testing.assert_allclose(r.unrouted_fraction(), 0.25)


def test_ties_pick_lower_expert_and_dropless():
    r = moe.top_k_routing(jnp.zeros((3, 4)), 2)
    np.testing.assert_array_equal(r.expert_index, [[0, 1]] * 3)
    np.testing.assert_allclose(r.combine_weights, 0.5)
    assert r.capacity == 3 and bool(jnp.all(r.kept))


def test_expert_choice_hand_computed():
    logits = jnp.log(jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]))
    r = moe.expert_choice_routing(logits, 1.0)  # C = 4 / 2 = 2
    assert r.capacity == 2 and r.slots == 2
    np.testing.assert_array_equal(r.kept, [[1, 0], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(np.where(r.kept, r.position, -1), [[0, -1], [1, -1],
                                                                       [-1, 0], [-1, 1]])
    np.testing.assert_allclose(r.combine_weights, [[0.9, 0], [0.6, 0], [0, 0.8], [0, 0.7]],
                               rtol=1e-6)
    r = moe.expert_choice_routing(logits, 0.5)  # C = 1: token 1 and 3 unrouted
    np.testing.assert_array_equal(r.kept, [[1, 0], [0, 0], [0, 1], [0, 0]])
    np.testing.assert_allclose(r.unrouted_fraction(), 0.5)


@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from([(1, 1), (12, 5)]), k=st.integers(1, 3),
       cf=st.sampled_from([None, 0.25, 1.0]), seed=st.integers(0, 2**16))
def test_top_k_routing_invariants(shape, k, cf, seed):
    t, e = shape
    k = min(k, e)
    logits = jnp.asarray(np.random.default_rng(seed).normal(size=(t, e)), jnp.float32)
    r = moe.top_k_routing(logits, k, capacity_factor=cf)
    idx, pos, kept = (np.asarray(a) for a in (r.expert_index, r.position, r.kept))
    assert all(len(set(row)) == k for row in idx)  # distinct experts per token
    for ex in range(e):
        p = np.sort(pos[(idx == ex) & kept])
        np.testing.assert_array_equal(p, np.arange(len(p)))  # no gaps
        assert len(p) <= r.capacity
    if cf is None:
        assert kept.all()
    np.testing.assert_allclose(np.asarray(r.gates()).sum(1)[kept.all(1)], 1.0, rtol=1e-5)


@pytest.mark.parametrize("call, err, match", [
    (lambda: moe.top_k_routing(jnp.zeros((4, 3)), 4), ValueError, "`k` must be <= 3"),
    (lambda: moe.top_k_routing(jnp.zeros((4, 3)), 1, capacity_factor=0.0), ValueError,
     "capacity_factor"),
    (lambda: moe.top_k_routing(jnp.zeros((4, 3)), 1, capacity_factor=-1), ValueError,
     "capacity_factor"),
    (lambda: moe.expert_choice_routing(jnp.zeros((4, 3)), 0), ValueError, "capacity_factor"),
    (lambda: moe.top_k_routing(jnp.zeros(4), 1), ValueError, "2-D"),
    (lambda: moe.top_k_routing(jnp.zeros((4, 3), jnp.int32), 1), TypeError, "floating"),
    (lambda: moe.top_k_routing(jnp.zeros((4, 3)), 1.5), TypeError, "int"),
])
def test_router_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def test_load_balancing_loss_formula(problem):
    *_, logits = problem
    r = moe.top_k_routing(logits, 2)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    idx = np.asarray(r.expert_index)
    f = np.array([np.mean([(i in row) for row in idx]) for i in range(E)])
    np.testing.assert_allclose(moe.load_balancing_loss(logits, r.expert_index),
                               E * np.sum(f * p.mean(0)), rtol=1e-5)
    uniform = jnp.zeros((8, 4))
    balanced = jnp.arange(8)[:, None] % 4
    np.testing.assert_allclose(moe.load_balancing_loss(uniform, balanced), 1.0, rtol=1e-6)
    collapsed = jnp.tile(jnp.array([[30.0, 0, 0, 0]]), (8, 1))
    np.testing.assert_allclose(moe.load_balancing_loss(collapsed, jnp.zeros((8, 1), int)), 4.0,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="expert_index"):
        moe.load_balancing_loss(logits, jnp.zeros((T + 1, 1), int))
    with pytest.raises(ValueError, match=r"values in \[0, 8\]"):  # checked eagerly, on the host
        moe.load_balancing_loss(jnp.zeros((3, 4)), jnp.array([[0], [8], [2]]))


def test_routing_statistics_eager_equal_jit(problem):
    """The Routing statistics, dispatch tensors and z-loss are one jitted program each: an eager
    call gives exactly what the same call traced inside a user's jit gives."""
    *_, logits = problem
    r = moe.top_k_routing(logits, 2, capacity_factor=1.0)

    def stats(r, logits):
        return (r.expert_load(), r.dropped_fraction(), r.unrouted_fraction(), r.gates(),
                *moe.dispatch_tensors(r), moe.router_z_loss(logits))

    for a, b in zip(stats(r, logits), jax.jit(stats)(r, logits)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_router_z_loss_formula(problem):
    *_, logits = problem
    lg = np.asarray(logits, np.float64)
    lse = np.log(np.exp(lg).sum(1))
    np.testing.assert_allclose(moe.router_z_loss(logits), np.mean(lse ** 2), rtol=1e-5)
    g = jax.grad(moe.router_z_loss)(logits)
    np.testing.assert_allclose(g, 2 * lse[:, None] * np.asarray(jax.nn.softmax(logits)) / T,
                               rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# gmm
# ---------------------------------------------------------------------------------------------


def test_gmm_xla_matches_ragged_dot():
    tile = 4
    k = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k[0], (37, 6))
    w = jax.random.normal(k[1], (4, 6, 5))
    gs = jnp.array([10, 0, 13, 9])  # an empty group and 5 rows past the sum
    ref = np.zeros((37, 5))
    start = 0
    for g, n in enumerate(np.asarray(gs)):
        ref[start:start + n] = np.asarray(x[start:start + n]) @ np.asarray(w[g])
        start += n
    np.testing.assert_allclose(moe.gmm(x, w, gs, backend="xla", tile=tile), ref, atol=1e-5)
    np.testing.assert_allclose(moe.gmm(x, w, gs, backend="xla", tile=128), ref, atol=1e-5)
    np.testing.assert_allclose(moe.gmm(x, w, gs, backend="ragged_dot"), ref, atol=1e-5)

    def loss(x, w, backend):
        return jnp.sum(jnp.sin(moe.gmm(x, w, gs, backend=backend, tile=tile)))

    ga = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, "xla")
    gb = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(x, w, "ragged_dot")
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gmm_errors():
    with pytest.raises(ValueError, match="backend"):
        moe.gmm(jnp.zeros((4, 2)), jnp.zeros((2, 2, 3)), jnp.array([2, 2]), backend="cuda")
    with pytest.raises(ValueError, match="share K"):
        moe.gmm(jnp.zeros((4, 3)), jnp.zeros((2, 2, 3)), jnp.array([2, 2]))
    with pytest.raises(ValueError, match="group_sizes"):
        moe.gmm(jnp.zeros((4, 2)), jnp.zeros((2, 2, 3)), jnp.array([2, 2, 0]))


# ---------------------------------------------------------------------------------------------
# moe_ffn: three implementations vs the per-token loop, forward and backward
# ---------------------------------------------------------------------------------------------


@functools.cache
def _value_and_grad(impl, kw_items, router):
    kw = dict(kw_items)

    def loss(x, w1, w2, logits):
        r = ROUTERS[router](logits)
        y = moe.moe_ffn(x, r, w1, w2, backend=impl, **kw) if impl else dense_reference(
            x, r.gates(), w1, w2)
        return jnp.sum(jnp.tanh(y) * jnp.cos(x)), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


@pytest.mark.parametrize("impl, kw, router", [
    (*IMPLS[0], "top2_dropless"), (*IMPLS[0], "top2_cf0.75")] + [
    (*IMPLS[1], router) for router in ROUTERS] + [
    (*IMPLS[3], "top2_dropless"), (*IMPLS[4], "top2_cf0.75"), (*IMPLS[4], "expert_choice")])
def test_moe_ffn_matches_loop_forward_and_backward(problem, router, impl, kw):
    x, w1, w2, logits = problem
    (_, y), got = _value_and_grad(impl, tuple(sorted(kw.items())), router)(*problem)
    np.testing.assert_allclose(y, loop_reference(x, ROUTERS[router](logits), w1, w2), atol=2e-5)
    _, ref = _value_and_grad(None, (), router)(*problem)
    for name, a, b in zip(("x", "w1", "w2", "logits"), got, ref):
        np.testing.assert_allclose(a, b, atol=3e-5, rtol=1e-4, err_msg=name)
    assert float(jnp.abs(got[3]).max()) > 0  # the router is trained through the combine weights


def test_dense_reference_equals_loop(problem):
    x, w1, w2, logits = problem
    r = ROUTERS["top2_cf0.75"](logits)
    np.testing.assert_allclose(dense_reference(x, r.gates(), w1, w2),
                               loop_reference(x, r, w1, w2), atol=2e-5)


def test_moe_ffn_bfloat16(problem):
    impl, kw = IMPLS[1]
    x, w1, w2, logits = problem
    r = moe.top_k_routing(logits, 2, capacity_factor=1.25)
    xb, w1b, w2b = (a.astype(jnp.bfloat16) for a in (x, w1, w2))
    y = moe.moe_ffn(xb, r, w1b, w2b, backend=impl, **kw)
    assert y.dtype == jnp.bfloat16
    ref = loop_reference(xb.astype(jnp.float32), r, w1b.astype(jnp.float32),
                         w2b.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=5e-2, rtol=5e-2)


def test_moe_ffn_jit_and_vmap_over_groups(problem):
    x, w1, w2, logits = problem

    @jax.jit
    def layer(x, logits):
        r = moe.top_k_routing(logits, 2, capacity_factor=1.0)
        return moe.moe_ffn(x, r, w1, w2, backend="ragged_xla", tile=8)

    xs, ls = x.reshape(2, T // 2, D), logits.reshape(2, T // 2, E)
    out = jax.vmap(layer)(xs, ls)
    for g in range(2):
        r = moe.top_k_routing(ls[g], 2, capacity_factor=1.0)
        np.testing.assert_allclose(out[g], loop_reference(xs[g], r, w1, w2), atol=2e-5)


def test_block_diagonal_topology(problem):
    *_, logits = problem
    r = moe.top_k_routing(logits, 2)
    topo, dest, row_token = moe.block_diagonal_topology(r, F, (4, 8))
    mask = np.asarray(topo.block_mask())
    owner = np.asarray(row_token)
    for i in range(mask.shape[0]):
        toks = owner[i * 4:(i + 1) * 4]
        if mask[i].any():
            (cols,) = np.nonzero(mask[i])
            e = cols[0] // 2
            np.testing.assert_array_equal(cols, [2 * e, 2 * e + 1])
            experts = {int(np.asarray(r.expert_index)[d // 2, d % 2])
                       for d in np.nonzero(np.isin(np.asarray(dest) // 4, [i]))[0]}
            assert experts <= {e}
        else:
            assert (toks == T).all()


def test_moe_ffn_errors(problem):
    x, w1, w2, logits = problem
    r = moe.top_k_routing(logits, 2)
    r5 = moe.top_k_routing(jnp.zeros((T, 5)), 2)
    with pytest.raises(ValueError, match="num_experts"):
        moe.moe_ffn(x, r5, w1, w2)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        moe.moe_ffn(x, r, w1, w2, backend="dense")
    with pytest.raises(ValueError, match="w2"):
        moe.moe_ffn(x, r, w1, w1)
    with pytest.raises(ValueError, match="d_model"):
        moe.moe_ffn(x[:, :4], r, w1, w2)
    with pytest.raises(ValueError, match="block_shape"):
        moe.moe_ffn(x, r, w1, w2, backend="block_sparse_xla", block_shape=(4, 5))
    with pytest.raises(TypeError, match="Routing"):
        moe.moe_ffn(x, logits, w1, w2)
    with pytest.raises(ValueError, match="tokens"):
        moe.moe_ffn(x[:8], r, w1, w2)


@pytest.mark.slow
@pytest.mark.parametrize("backend, block_shape", [("pallas_tpu", (8, 16)), ("pallas_gpu", (16, 16))])
def test_block_sparse_through_pallas_kernels_interpret(problem, backend, block_shape):
    """The MegaBlocks path on the Pallas kernels (interpret mode on CPU), forward and backward."""
    x, w1, w2, logits = problem
    r = moe.top_k_routing(logits, 2, capacity_factor=1.0)

    def loss(w1, impl, **kw):
        return jnp.sum(moe.moe_ffn(x, r, w1, w2, backend=impl, **kw) ** 2)

    y = moe.moe_ffn(x, r, w1, w2, backend=f"block_sparse_{backend}", block_shape=block_shape)
    np.testing.assert_allclose(y, loop_reference(x, r, w1, w2), atol=2e-5)
    g = jax.grad(loss)(w1, f"block_sparse_{backend}", block_shape=block_shape)
    np.testing.assert_allclose(g, jax.grad(loss)(w1, "einsum"), atol=3e-5, rtol=1e-4)

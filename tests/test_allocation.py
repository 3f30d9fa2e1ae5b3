"""Allocation against by-hand computations, on many pytree kinds."""

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import allocation


def tree():
    return {"a": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones(6)},
            "b": {"kernel": jnp.ones((6, 2)), "bias": jnp.ones(2)}}


def test_erk_by_hand():
    # raw = (4+6)/24 = 5/12 and (6+2)/12 = 2/3; budget 18 = eps * (5/12*24 + 2/3*12) -> eps = 1
    s = allocation.erk(tree(), 0.5)
    assert s["a"]["bias"] is None and s["b"]["bias"] is None
    assert s["a"]["kernel"] == pytest.approx(1 - 5 / 12)
    assert s["b"]["kernel"] == pytest.approx(1 - 2 / 3)


def test_erk_densifies_and_resolves():
    # at 0.2: eps = 28.8 / 18 = 1.6 would give b density 16/15 > 1 -> b dense, eps = 16.8 / 10
    s = allocation.erk(tree(), 0.2)
    assert s["b"]["kernel"] == 0.0
    assert s["a"]["kernel"] == pytest.approx(1 - 1.68 * 5 / 12)
    kept = (1 - s["a"]["kernel"]) * 24 + 12
    assert kept == pytest.approx(0.8 * 36)


def test_erk_power_and_er_on_conv():
    params = {"conv": jnp.ones((3, 3, 4, 8)), "dense": jnp.ones((8, 10))}
    er = allocation.er(params, 0.9)
    raw_conv, raw_dense = 12 / 32, 18 / 80
    eps = 0.1 * (288 + 80) / (raw_conv * 288 + raw_dense * 80)
    assert er["conv"] == pytest.approx(1 - eps * raw_conv)
    erk = allocation.erk(params, 0.9, power=0.5)
    r1, r2 = (18 / 288) ** 0.5, (18 / 80) ** 0.5
    eps = 0.1 * 368 / (r1 * 288 + r2 * 80)
    assert erk["conv"] == pytest.approx(1 - eps * r1)
    assert erk["dense"] == pytest.approx(1 - eps * r2)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_erk_total_kept_matches_budget_after_masking(target):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"l0": jax.random.normal(keys[0], (64, 256)), "l1": jax.random.normal(keys[1], (256, 256)),
              "l2": jax.random.normal(keys[2], (256, 10))}
    masks = sj.compute_masks(params, sparsity=target, allocation="erk")
    kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
    total = sum(x.size for x in jax.tree.leaves(params))
    assert abs(kept - (1 - target) * total) <= len(params)  # per-leaf rounding only


def test_uniform_and_where_glob():
    s = allocation.uniform(tree(), 0.7, where="a/*")  # a glob selects any float leaf it matches
    assert s["a"]["kernel"] == 0.7 and s["a"]["bias"] == 0.7 and s["b"]["kernel"] is None
    s = allocation.uniform(tree(), 0.7, where=["*/kernel"])
    assert s["a"]["kernel"] == s["b"]["kernel"] == 0.7 and s["a"]["bias"] is None
    s = allocation.uniform(tree(), 0.7, where="*'b'*")  # keystr form: ['b']['kernel']
    assert s["b"]["kernel"] == s["b"]["bias"] == 0.7 and s["a"]["kernel"] is None
    s = allocation.uniform(tree(), 0.7, where=lambda path, leaf: leaf.shape == (6, 2))
    assert s["b"]["kernel"] == 0.7 and s["a"]["kernel"] is None


def test_global_topk_matches_one_threshold():
    params = {"x": jnp.arange(1.0, 11.0).reshape(2, 5), "y": jnp.arange(11.0, 15.0).reshape(2, 2)}
    s = allocation.global_topk(params, 0.5)  # keep the 7 largest of 14: 8..14
    assert float(s["x"]) == pytest.approx(1 - 3 / 10)
    assert float(s["y"]) == pytest.approx(0.0)
    masks = sj.compute_masks(params, sparsity=0.5, allocation="global")
    assert int(masks["x"].sum()) == 3 and bool(masks["y"].all())


class Pair(NamedTuple):
    w: jax.Array
    b: jax.Array


@dataclasses.dataclass
class Holder:
    w: jax.Array


jax.tree_util.register_dataclass(Holder, data_fields=["w"], meta_fields=[])


def test_any_pytree_kind():
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 8))
    for params in ([w, jnp.ones(3)], Pair(w, jnp.ones(3)), Holder(w)):
        s = allocation.erk(params, 0.5)
        leaves = jax.tree.leaves(s)
        assert leaves == [pytest.approx(0.5)]
        masks = sj.compute_masks(params, sparsity=0.5)
        assert int(sum(m.sum() for m in jax.tree.leaves(masks))) == 32


def test_equinox_and_nnx():
    mlp = eqx.nn.MLP(8, 4, 16, 2, key=jax.random.PRNGKey(0))
    s = allocation.erk(mlp, 0.8)
    vals = [v for v in jax.tree.leaves(s)]
    assert len(vals) == 3  # the three weight matrices, not biases or the activation functions
    model = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    masks = sj.compute_masks(state, sparsity=0.75)
    nnx.update(model, sj.apply_masks(state, masks))
    assert float(jnp.mean(model.kernel[...] == 0)) == 0.75


def test_errors():
    with pytest.raises(ValueError, match=r"`sparsity` must be in \[0, 1\]; got 1.2"):
        allocation.erk(tree(), 1.2)
    with pytest.raises(TypeError, match="`sparsity` must be concrete for erk/er"):
        jax.jit(lambda p, s: allocation.erk(p, s))(tree(), 0.5)
    with pytest.raises(TypeError, match="`where` must be None, a callable"):
        allocation.uniform(tree(), 0.5, where=3)


def test_global_topk_traced():
    params = {"x": jax.random.normal(jax.random.PRNGKey(0), (10, 10))}
    out = jax.jit(lambda p, s: allocation.global_topk(p, s))(params, 0.3)
    assert float(out["x"]) == pytest.approx(0.3)
    assert np.isfinite(float(out["x"]))


def _rigl_erk_reference(shapes, sparsity, power=1.0):
    """RigL's get_sparsities_erdos_renyi (rigl/sparse_utils.py), transcribed for dict of shapes."""
    dense, valid = set(), False
    while not valid:
        divisor = rhs = 0
        raw = {}
        for name, shape in shapes.items():
            n = np.prod(shape)
            n_zeros = int(np.floor(sparsity * n))
            if name in dense:
                rhs -= n_zeros
            else:
                rhs += n - n_zeros
                raw[name] = (np.sum(shape) / np.prod(shape)) ** power
                divisor += raw[name] * n
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps > 1:
            dense |= {k for k, v in raw.items() if v == top}
        else:
            valid = True
    return {k: 0.0 if k in dense else 1.0 - eps * raw[k] for k in shapes}


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_erk_rigl_rounding_matches_rigl(target):
    shapes = {"l0": (3, 7), "l1": (7, 5), "l2": (5, 3), "conv": (3, 3, 2, 5)}
    params = {k: jnp.ones(v) for k, v in shapes.items()}
    ours = allocation.erk(params, target, rounding="rigl")
    ref = _rigl_erk_reference(shapes, target)
    for k in shapes:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12)
    exact = allocation.erk(params, target)
    # on these small layers the two roundings really differ
    assert max(abs(exact[k] - ours[k]) for k in shapes) > 1e-3
    er_rigl = allocation.er(params, target, rounding="rigl")
    assert set(er_rigl) == set(shapes)


def test_erk_zero_size_leaf_is_dense_and_bad_rounding_raises():
    params = {"empty": jnp.ones((0, 4)), "w": jnp.ones((4, 6)), "v": jnp.ones((6, 2))}
    s = allocation.erk(params, 0.5)
    assert s["empty"] == 0.0
    ref = allocation.erk({"w": params["w"], "v": params["v"]}, 0.5)
    assert s["w"] == pytest.approx(ref["w"]) and s["v"] == pytest.approx(ref["v"])
    assert allocation.er(params, 0.5)["empty"] == 0.0
    masks = sj.compute_masks(params, sparsity=0.5, allocation="erk")
    assert masks["empty"].shape == (0, 4)
    with pytest.raises(ValueError, match="`rounding` must be one of \\('exact', 'rigl'\\); got 'floor'"):
        allocation.erk(params, 0.5, rounding="floor")

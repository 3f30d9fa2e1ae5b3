"""`sparsejax.training.reset_moments`: params-shaped optimizer statistics reset where a mask says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax.training import reset_moments

PARAMS = {"a": {"kernel": jnp.arange(12.0).reshape(3, 4) + 1, "bias": jnp.ones(4)},
          "b": jnp.full((2, 2), 2.0)}
MASKS = {"a": {"kernel": jnp.eye(3, 4, dtype=bool), "bias": None},
         "b": jnp.array([[True, False], [False, False]])}


def _moments(state):
    """Every params-shaped statistic in ``state`` found by hand for the named optax states."""
    out = []
    for node in jax.tree.leaves(state, is_leaf=lambda x: bool({"mu", "trace"} & set(getattr(x, "_fields", ())))):
        for name in ("mu", "nu", "trace"):
            if name in getattr(node, "_fields", ()):
                out.append(getattr(node, name))
    return out


@pytest.mark.parametrize("make", [
    lambda: optax.adam(1e-3),
    lambda: optax.adamw(1e-3, weight_decay=0.1),
    lambda: optax.sgd(0.1, momentum=0.9),
    lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
    lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
])
def test_reset_matches_hand_reset(make):
    opt = make()
    state = opt.init(PARAMS)
    _, state = opt.update(PARAMS, state, PARAMS)
    before = _moments(state)
    assert before, "the test must find moments to check"
    after = _moments(reset_moments(state, PARAMS, MASKS))
    for b, a in zip(before, after):
        for key in ("a", "b"):
            bl = b[key]["kernel"] if key == "a" else b[key]
            al = a[key]["kernel"] if key == "a" else a[key]
            m = MASKS[key]["kernel"] if key == "a" else MASKS[key]
            np.testing.assert_array_equal(al, np.where(m, 0.0, bl))
        np.testing.assert_array_equal(a["a"]["bias"], b["a"]["bias"])  # None mask: untouched
        assert float(jnp.abs(b["a"]["kernel"]).sum()) > 0


def test_reset_under_jit_and_count_untouched():
    opt = optax.adam(1e-3)
    state = opt.init(PARAMS)
    _, state = opt.update(PARAMS, state, PARAMS)
    out = jax.jit(reset_moments)(state, PARAMS, MASKS)
    assert int(out[0].count) == 1
    np.testing.assert_array_equal(out[0].mu["b"], np.where(MASKS["b"], 0.0, state[0].mu["b"]))


def test_unmatched_state_leaf_raises():
    state = optax.adafactor(1e-3, min_dim_size_to_factor=2).init(PARAMS)
    with pytest.raises(ValueError, match="inner_state"):
        reset_moments(state, PARAMS, MASKS)


def test_masks_must_mirror_params():
    state = optax.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match="reset_masks"):
        reset_moments(state, PARAMS, {"a": MASKS["a"]})


def test_reset_moments_params_with_none_leaves():
    """A ``None`` params leaf (e.g. ``eqx.filter`` output) does not shift the masks of the leaves after it."""
    params = {"a": None, "b": jnp.ones((2, 2)), "c": jnp.ones((3,))}
    state = optax.adam(1e-3).init(params)
    state = jax.tree.map(lambda x: x + 1.0 if jnp.ndim(x) else x, state)
    masks = {"a": None, "b": jnp.array([[True, False], [False, False]]), "c": None}
    out = reset_moments(state, params, masks)
    mu = out[0].mu
    np.testing.assert_array_equal(mu["b"], [[0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(mu["c"], [1.0, 1.0, 1.0])

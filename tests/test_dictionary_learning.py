"""Dictionary learning: sklearn's online update, K-SVD sweeps, planted-dictionary recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition._dict_learning import _update_dict

from sparsejax.dictionary import (
    atom_recovery,
    fista,
    init_dictionary,
    ksvd,
    ksvd_atom_updates,
    minibatch_dictionary_learning,
    online_dictionary_init,
    online_dictionary_update,
    sparse_encode,
)


def _planted(n_features=20, n_atoms=24, k=2, n=1500, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_features, n_atoms))
    d /= np.linalg.norm(d, axis=0)
    x = np.zeros((n, n_atoms))
    for row in x:
        row[rng.choice(n_atoms, k, replace=False)] = rng.normal(size=k) * (1 + rng.random(k))
    y = x @ d.T + noise * rng.normal(size=(n, n_features))
    return d, jnp.asarray(y, jnp.float32)


def test_ksvd_recovers_planted_atoms():
    d_true, y = _planted()
    d, codes = ksvd(y, 24, key=jax.random.PRNGKey(0), k=2, n_iter=30)
    frac, best = atom_recovery(d, d_true, 0.9)
    assert frac >= 0.9, np.asarray(best)
    np.testing.assert_allclose(jnp.linalg.norm(d, axis=0), 1, atol=1e-5)
    assert int(jnp.max(jnp.sum(codes != 0, axis=1))) <= 2


def test_online_dictionary_learning_recovers_planted_atoms():
    d_true, y = _planted()
    d, state = minibatch_dictionary_learning(y, 24, key=jax.random.PRNGKey(0), k=2, n_steps=500,
                                             batch_size=256)
    frac, best = atom_recovery(d, d_true, 0.9)
    assert frac >= 0.9, np.asarray(best)
    assert int(state.step) == 500


def test_online_update_matches_sklearn_update_dict():
    rng = np.random.default_rng(1)
    d0 = rng.normal(size=(10, 6))
    d0 /= np.linalg.norm(d0, axis=0)
    a_ref, b_ref = np.zeros((6, 6)), np.zeros((10, 6))
    d_ref = d0.T.copy()  # sklearn: [n_components, n_features]
    with jax.enable_x64(True):
        state = online_dictionary_init(jnp.asarray(d0))
        for step in range(3):
            batch = rng.normal(size=(8, 10))
            codes = rng.normal(size=(8, 6)) * (rng.random((8, 6)) < 0.5)
            codes[0] = 1.0  # every atom used: no random replacement
            state = online_dictionary_update(state, jnp.asarray(batch), jnp.asarray(codes),
                                             jax.random.PRNGKey(step))
            # sklearn's MiniBatchDictionaryLearning._update_inner_stats, then _update_dict
            theta = (step + 1) * 8 if step < 8 - 1 else 8 ** 2 + step + 1 - 8
            beta = (theta + 1 - 8) / (theta + 1)
            a_ref = beta * a_ref + codes.T @ codes / 8
            b_ref = beta * b_ref + batch.T @ codes / 8
            _update_dict(d_ref, batch, codes, a_ref, b_ref, random_state=0)
            np.testing.assert_allclose(state.a, a_ref, atol=1e-12)
            np.testing.assert_allclose(state.b, b_ref, atol=1e-12)
            np.testing.assert_allclose(state.dictionary, d_ref.T, atol=1e-10)


def test_online_update_replaces_unused_atom_and_projects():
    d0 = jnp.eye(4, 3)
    batch = jnp.arange(20.0).reshape(5, 4)
    codes = jnp.zeros((5, 3)).at[:, 0].set(1.0)  # atoms 1 and 2 unused
    st = online_dictionary_update(online_dictionary_init(d0), batch, codes, jax.random.PRNGKey(0),
                                  positive=True)
    assert np.all(np.asarray(jnp.linalg.norm(st.dictionary, axis=0)) <= 1 + 1e-6)
    assert np.all(np.asarray(st.dictionary) >= 0)
    # the unused atoms are now (normalised, noisy) samples of the batch
    atoms = st.dictionary[:, 1:] / jnp.linalg.norm(st.dictionary[:, 1:], axis=0)
    cos = jnp.max(atoms.T @ (batch / jnp.linalg.norm(batch, axis=1, keepdims=True)).T, axis=1)
    assert np.all(np.asarray(cos) > 0.99)


def test_ksvd_sweep_keeps_support_and_does_not_increase_error():
    d_true, y = _planted()  # same shapes as the recovery tests: compiled code is reused
    d = init_dictionary(jax.random.PRNGKey(1), y, 24)
    codes = sparse_encode(d, y, k=2)
    err0 = float(jnp.sum((y - codes @ d.T) ** 2))
    d1, codes1 = ksvd_atom_updates(d, y, codes)
    err1 = float(jnp.sum((y - codes1 @ d1.T) ** 2))
    assert err1 <= err0 * (1 + 1e-5)
    used = np.asarray(jnp.any(codes != 0, axis=0))
    assert np.all(np.asarray(codes1 != 0)[:, used] <= np.asarray(codes != 0)[:, used])
    np.testing.assert_allclose(jnp.linalg.norm(d1, axis=0), 1, atol=1e-5)


def test_lasso_coding_path_runs():
    _, y = _planted(n=200, seed=3)
    d, _ = minibatch_dictionary_learning(y, 12, key=jax.random.PRNGKey(0), method="lasso",
                                         alpha=0.05, n_steps=5, batch_size=64)
    assert d.shape == (20, 12)
    np.testing.assert_allclose(jnp.linalg.norm(d, axis=0), 1, atol=1e-5)
    codes = sparse_encode(d, y[:8], method="lasso", alpha=0.05)
    np.testing.assert_allclose(codes, fista(d, y[:8], 0.05, n_iter=100), atol=1e-6)


def test_atom_recovery_by_hand():
    true = jnp.eye(3)
    learned = jnp.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 0.0], [0, 0, 1.0]]).T[:3, :3]
    frac, best = atom_recovery(learned[:, :2], true)
    assert frac == pytest.approx(2 / 3)
    np.testing.assert_allclose(best, [1, 1, 0], atol=1e-6)


@pytest.mark.parametrize(
    "fn,kwargs,exc,match",
    [
        (ksvd, dict(data=np.ones(5)), ValueError, "2-D"),
        (ksvd, dict(data=np.ones((4, 3), np.int32)), TypeError, "floating"),
        (ksvd, dict(k=None), TypeError, "`k` must be a Python int"),
        (ksvd, dict(k=9), ValueError, "`k` must be <= 6; got 9"),
        (ksvd, dict(method="svd"), ValueError, "`method` must be one of"),
        (ksvd, dict(method="lasso"), ValueError, "alpha"),
        (ksvd, dict(init=np.ones((2, 2))), ValueError, "`init`"),
        (minibatch_dictionary_learning, dict(batch_size=0), ValueError, "batch_size"),
        (minibatch_dictionary_learning, dict(n_atoms=0), ValueError, "n_atoms"),
        (minibatch_dictionary_learning, dict(data=np.ones((0, 3))), ValueError, "at least one"),
    ],
)
def test_bad_input(fn, kwargs, exc, match):
    args = dict(data=np.ones((10, 3), np.float32), n_atoms=6, k=2)
    args.update(kwargs)
    data = jnp.asarray(args.pop("data"))
    if "init" in args:
        args["init"] = jnp.asarray(args["init"])
    with pytest.raises(exc, match=match):
        fn(data, args.pop("n_atoms"), key=jax.random.PRNGKey(0), **args)

"""Orbax checkpointing of a sparse-training state: resuming gives bit-identical params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import training as T

ocp = pytest.importorskip("orbax.checkpoint")


@pytest.mark.slow  # orbax's async machinery: ~10 s of CPU
def test_orbax_resume_is_bit_identical(tmp_path):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"l1": {"kernel": jax.random.normal(k[0], (16, 12)), "bias": jnp.zeros(12)},
              "l2": {"kernel": jax.random.normal(k[1], (12, 4)), "bias": jnp.zeros(4)}}
    x = jax.random.normal(k[2], (32, 16))
    y = jnp.arange(32) % 4
    # SET: random growth exercises the PRNG key kept in the state, adam its moments
    tx = T.sparse_evolutionary(optax.adam(1e-2), 0.7, update_every=2, end_step=7,
                               key=jax.random.key(1))

    def loss_fn(p):
        h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["l2"]["kernel"]
                                                               + p["l2"]["bias"], y).mean()

    @jax.jit
    def step(train_state):
        p, s = train_state["params"], train_state["opt_state"]
        updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
        return {"params": optax.apply_updates(p, updates), "opt_state": s}

    start = {"params": params, "opt_state": tx.init(params)}
    full = start
    for _ in range(8):
        full = step(full)

    half = start
    for _ in range(4):
        half = step(half)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "step4", half)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, half)
    resumed = checkpointer.restore(tmp_path / "step4", abstract)
    assert int(resumed["opt_state"].count) == 4
    for _ in range(4):
        resumed = step(resumed)

    assert jax.tree.structure(resumed) == jax.tree.structure(full)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in zip(
        jax.tree.leaves(T.masks_of(start["opt_state"])), jax.tree.leaves(T.masks_of(full["opt_state"]))))
    assert changed > 0  # the masks did move between the halves' updates
    counts = lambda s: [int(m.sum()) for m in jax.tree.leaves(T.masks_of(s))]
    assert counts(start["opt_state"]) == counts(full["opt_state"])  # SET keeps nnz per leaf
    for name in ("l1", "l2"):
        m = np.asarray(T.masks_of(full["opt_state"])[name]["kernel"])
        assert np.all(np.asarray(full["params"][name]["kernel"])[~m] == 0)

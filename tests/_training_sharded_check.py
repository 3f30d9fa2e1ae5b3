"""Run by tests/test_sharded_checks.py in a subprocess with 8 host CPU devices.

Checks that, with params sharded over a `jax.sharding.Mesh`, the masks come out with their
parameter's sharding, global top-k / ERK allocation work across shards, and one sharded training
step equals the single-device step. Prints "OK" on success.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sparsejax import training as T

assert len(jax.devices()) == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
k = jax.random.split(jax.random.PRNGKey(0), 4)
params = {"l1": {"kernel": jax.random.normal(k[0], (32, 16)), "bias": jnp.zeros(16)},
          "l2": {"kernel": jax.random.normal(k[1], (16, 8)), "bias": jnp.zeros(8)}}
specs = {"l1": {"kernel": P("data", "model"), "bias": P("model")},
         "l2": {"kernel": P("model", None), "bias": P()}}
shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
grads = jax.tree.map(lambda x: jax.random.normal(k[2], x.shape), params)


def run(tx, params, grads, steps=2):
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for t in range(steps):
        g = jax.tree.map(lambda x, t=t: x * (1.0 + t), grads)
        params, state = step(params, state, g)
    return params, state


cases = {
    "prune_global": lambda: T.prune(optax.adam(1e-2), 0.8, allocation="global", update_every=1),
    "rigl_erk": lambda: T.rigl(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
                               0.8, update_every=1, end_step=10, key=jax.random.key(0)),
}
sharded_params = jax.device_put(params, shardings)
sharded_grads = jax.device_put(grads, shardings)
for name, make in cases.items():
    p1, s1 = run(make(), params, grads)
    p8, s8 = run(make(), sharded_params, sharded_grads)
    m1, m8 = T.masks_of(s1), T.masks_of(s8)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m8)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    for path in (("l1", "kernel"), ("l2", "kernel")):
        mask, param = m8[path[0]][path[1]], p8[path[0]][path[1]]
        assert mask.sharding.is_equivalent_to(param.sharding, 2), (name, path, mask.sharding,
                                                                   param.sharding)
        assert param.sharding.is_equivalent_to(shardings[path[0]][path[1]], 2), (name, path)
        assert np.all(np.asarray(param)[~np.asarray(mask)] == 0), name
print("OK")

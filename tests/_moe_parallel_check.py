"""Run by tests/test_moe_parallel.py in a subprocess with 8 host devices (XLA_FLAGS)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sparsejax import moe

assert jax.device_count() == 8, jax.devices()
T, D, F, E = 64, 8, 16, 8
k = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(k[0], (T, D))
w1 = jax.random.normal(k[1], (E, D, F)) / 3
w2 = jax.random.normal(k[2], (E, F, D)) / 4
logits = jax.random.normal(k[3], (T, E))


def check(n, router):
    """Sharded over n devices == single device routing each group of T / n tokens."""
    mesh = Mesh(np.array(jax.devices()[:n]), ("expert",))
    fn = jax.jit(functools.partial(moe.expert_parallel_moe_ffn, mesh=mesh,
                                   axis_name="expert", router=router))
    xs, ls = x.reshape(n, T // n, D), logits.reshape(n, T // n, E)

    def single(w1, w2):
        return jax.vmap(lambda xg, lg: moe.moe_ffn(xg, router(lg), w1, w2, tile=8))(xs, ls)

    np.testing.assert_allclose(np.asarray(fn(x, logits, w1, w2)),
                               np.asarray(single(w1, w2).reshape(T, D)), atol=2e-5)
    gfn = jax.jit(jax.grad(lambda w1, w2: jnp.sum(fn(x, logits, w1, w2) ** 2), (0, 1)))
    gref = jax.jit(jax.grad(lambda w1, w2: jnp.sum(single(w1, w2) ** 2), (0, 1)))
    for a, b in zip(gfn(w1, w2), gref(w1, w2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)


check(8, functools.partial(moe.top_k_routing, k=2, capacity_factor=1.0))
check(8, functools.partial(moe.expert_choice_routing, capacity_factor=1.0))
check(4, functools.partial(moe.top_k_routing, k=1, capacity_factor=1.5))

dropless = functools.partial(moe.top_k_routing, k=2)
mesh = Mesh(np.array(jax.devices()), ("expert",))
y_full = moe.moe_ffn(x, dropless(logits), w1, w2, tile=8)  # dropless: grouping is irrelevant
y = moe.expert_parallel_moe_ffn(x, logits, w1, w2, mesh=mesh, axis_name="expert",
                                router=dropless)
np.testing.assert_allclose(np.asarray(y), np.asarray(y_full), atol=2e-5)
for bad, match in ((dict(w1=w1[:6], w2=w2[:6], logits=logits[:, :6]), "divisible"),
                   (dict(x=x[:60], logits=logits[:60]), "divisible"),
                   (dict(logits=logits[:, :4]), "experts")):
    args = {**dict(x=x, logits=logits, w1=w1, w2=w2), **bad}
    try:
        moe.expert_parallel_moe_ffn(**args, mesh=mesh, axis_name="expert", router=dropless)
    except ValueError as err:
        assert match in str(err), err
    else:
        raise AssertionError(f"no error for {match}")
print("OK")

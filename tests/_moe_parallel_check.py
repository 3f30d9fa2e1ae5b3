"""Run by tests/test_sharded_checks.py in a subprocess with 8 host devices (XLA_FLAGS).

Every sharded layer is compared with the single-device layer (each group of ``T / n`` tokens
routed separately) forward and backward (VJP w.r.t. x, logits and the experts), with one jit
compile per side and configuration.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from sparsejax import moe
from sparsejax.moe.exchange import ragged_all_to_all

assert jax.device_count() == 8, jax.devices()
T, D, F, E = 32, 8, 8, 8
k = jax.random.split(jax.random.key(0), 6)
x = jax.random.normal(k[0], (T, D))
w1 = jax.random.normal(k[1], (E, D, F)) / 3
w2 = jax.random.normal(k[2], (E, F, D)) / 4
w3 = jax.random.normal(k[4], (E, D, F)) / 3
# skewed router: experts 0 and 1 take most tokens (a dropless buffer must not overflow)
logits = jax.random.normal(k[3], (T, E)) + jnp.array([3.0, 2.0, 0, 0, 0, 0, 0, 0])
cot = jax.random.normal(k[5], (T, D))


def mesh_of(n):
    return Mesh(np.array(jax.devices()[:n]), ("expert",))


def value_and_vjp(f, gated):
    """One jit: ``f(x, logits, w1, w2[, w3])`` and its VJP of ``cot``."""
    def run(*args):
        y, vjp = jax.vjp(f, *args)
        return y, vjp(cot)
    args = (x, logits, w1, w2, w3) if gated else (x, logits, w1, w2)
    return jax.jit(run)(*args)


def grouped_reference(n, router, activation, gated):
    def f(x, logits, *ws):
        xs, ls = x.reshape(n, T // n, D), logits.reshape(n, T // n, E)
        y = jax.vmap(lambda xg, lg: moe.moe_ffn(xg, router(lg), *ws, activation=activation,
                                                backend="einsum"))(xs, ls)
        return y.reshape(T, D)
    return value_and_vjp(f, gated)


def check(n, router, gated, exchange="padded", reference=None, **kw):
    """Sharded over n devices == single device routing each group of T / n tokens."""
    act = jax.nn.silu if gated else jax.nn.gelu
    f = functools.partial(moe.expert_parallel_moe_ffn, mesh=mesh_of(n), axis_name="expert",
                          router=router, activation=act, exchange=exchange, tile=8, **kw)
    y, grads = value_and_vjp(lambda x, lg, *ws: f(x, lg, *ws), gated)
    y_ref, g_ref = reference or grouped_reference(n, router, act, gated)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=2e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(y))) > 0.1  # not an all-zero layer
    for name, a, b in zip(("x", "logits", "w1", "w2", "w3"), grads, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4,
                                   err_msg=f"{exchange} n={n} d{name}")
    return y


# capacity-padded GShard exchange, gated (SwiGLU) and two-matrix experts
check(8, functools.partial(moe.top_k_routing, k=2, capacity_factor=1.0), gated=True)
check(8, functools.partial(moe.expert_choice_routing, capacity_factor=1.0), gated=False)
check(4, functools.partial(moe.top_k_routing, k=1, capacity_factor=1.5), gated=True)

# dropless: grouping is irrelevant, so one single-device reference serves every n
dropless = functools.partial(moe.top_k_routing, k=2)
full = value_and_vjp(lambda x, lg, *ws: moe.moe_ffn(x, dropless(lg), *ws, backend="einsum",
                                                    activation=jax.nn.silu), True)
for n in (2, 4, 8):
    check(n, dropless, gated=True, exchange="ragged", reference=full)
# the ragged exchange with capacity drops (kept slots only) and two-matrix experts
check(4, functools.partial(moe.top_k_routing, k=2, capacity_factor=1.0), gated=False,
      exchange="ragged")

# the ragged collective lowers for GPU and TPU (XLA:CPU cannot compile it)
lowered = jax.jit(functools.partial(
    moe.expert_parallel_moe_ffn, mesh=mesh_of(8), axis_name="expert", router=dropless,
    exchange="ragged", collective="ragged_all_to_all")).trace(x, logits, w1, w2)
for platform in ("cuda", "tpu"):
    assert "ragged_all_to_all" in lowered.lower(lowering_platforms=(platform,)).as_text()

# the all_to_all emulation reproduces jax.lax.ragged_all_to_all's documented example
spec = PartitionSpec("expert")
example = jax.jit(jax.shard_map(
    lambda *a: ragged_all_to_all(*(v[0] for v in a), "expert", backend="all_to_all")[None],
    mesh=mesh_of(2), in_specs=(spec,) * 6, out_specs=spec))
out = example(jnp.array([[1, 2, 2], [3, 4, 0]], jnp.float32), jnp.zeros((2, 4), jnp.float32),
              jnp.array([[0, 1], [0, 1]]), jnp.array([[1, 2], [1, 1]]),
              jnp.array([[0, 0], [1, 2]]), jnp.array([[1, 1], [2, 1]]))
np.testing.assert_array_equal(np.asarray(out), [[1, 3, 0, 0], [2, 2, 4, 0]])

mesh = mesh_of(8)
for bad, match in ((dict(w1=w1[:6], w2=w2[:6], logits=logits[:, :6]), "divisible"),
                   (dict(x=x[:28], logits=logits[:28]), "divisible"),
                   (dict(logits=logits[:, :4]), "experts"),
                   (dict(exchange="dense"), "`exchange` must be one of"),
                   (dict(exchange="ragged", collective="nccl"), "`collective` must be one of")):
    args = {**dict(x=x, logits=logits, w1=w1, w2=w2), **bad}
    try:
        moe.expert_parallel_moe_ffn(**args, mesh=mesh, axis_name="expert", router=dropless)
    except ValueError as err:
        assert match in str(err), err
    else:
        raise AssertionError(f"no error for {match}")
print("OK")

"""The multi-process checks of tests/test_multihost.py.

`sharded(names)` runs in every process of a `sparsejax.testing.run_processes` group (params
sharded across processes over a global ``("data", "model")`` mesh); `reference(names)` runs the
same computations in the test process on one device. Both return ``{check: host values}``.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sparsejax import compute_masks
from sparsejax.testing import gather, shard

AUTO = AxisType.Auto  # GSPMD propagation, as `Mesh(...)` (jax.make_mesh defaults to Explicit)
SPECS = {"l1": {"kernel": P("data", "model"), "bias": P("model")},
         "l2": {"kernel": P("model", "data"), "bias": P()},
         "l3": {"kernel": P(None, "data", "model")}}


def problem(ties=False):
    """Small params with a few kernels (identical in every process: one seed)."""
    rng = np.random.default_rng(0)
    params = {"l1": {"kernel": rng.normal(size=(32, 16)), "bias": np.zeros(16)},
              "l2": {"kernel": rng.normal(size=(16, 8)), "bias": np.zeros(8)},
              "l3": {"kernel": rng.normal(size=(2, 8, 8))}}
    if ties:  # many equal scores: the global selection ranks them by position across shards
        params = jax.tree.map(lambda x: np.round(x * 2) / 2, params)
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
    f32 = functools.partial(jax.tree.map, lambda x: np.asarray(x, np.float32))
    return f32(params), f32(grads)


MASK_CASES = {
    "unstructured": dict(pattern="unstructured", sparsity=0.7),
    "nm": dict(pattern="nm", n=2, m=4, axis=-2),
    "block": dict(pattern="block", sparsity=0.5, block_shape=(4, 4)),
    "channel": dict(pattern="channel", sparsity=0.5),
    "erk": dict(pattern="unstructured", sparsity=0.8, allocation="erk"),
    "global": dict(pattern="unstructured", sparsity=0.8, allocation="global"),
    "global_ties": dict(pattern="unstructured", sparsity=0.6, allocation="global", ties=True),
}


GLOBAL_CASES = ("global", "global_ties")
"""The cases whose selection spans every process (the 4-process group reruns only these)."""


def _masks(place, names=tuple(MASK_CASES)):
    cases, trees = {}, {}
    for name, case in ((n, MASK_CASES[n]) for n in names):
        case = dict(case)
        cases[name] = case
        trees[name] = place(problem(case.pop("ties", False))[0], SPECS)
    return jax.jit(lambda trees: {name: compute_masks(trees[name], **case)
                                  for name, case in cases.items()})(trees)


@functools.cache
def _optimizer(name):
    """``(tx, jitted step)`` of the ``"prune"`` or ``"rigl"`` transform, built once per process:
    the prune check and `_opt_state` (the checkpoint) share one compiled step."""
    from sparsejax import training as T

    if name == "prune":
        tx = T.prune(optax.adam(1e-2), 0.8, allocation="global", update_every=1)
    else:
        tx = T.rigl(optax.adam(1e-2), 0.8, update_every=1, end_step=10, key=jax.random.key(0))

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return tx, step


def _train(place, name):
    from sparsejax import training as T

    params, grads = problem()
    params, grads = place(params, SPECS), place(grads, SPECS)
    tx, step = _optimizer(name)
    p, state = params, tx.init(params)
    for t in range(2):
        p, state = step(p, state, jax.tree.map(lambda g, t=t: g * (1.0 + t), grads))
    return {name: {"params": p, "masks": T.masks_of(state)}}


def _ssvi(place):
    from sparsejax import bayes as B
    from sparsejax.training import masks_of

    params, _ = problem()
    params = {k: params[k] for k in ("l1", "l2")}
    post = B.init_posterior(jax.random.key(1), params, 0.6, rho_init=-3.0)
    specs = {k: SPECS[k] for k in params}
    post = post._replace(mu=place(post.mu, specs), rho=place(post.rho, specs),
                         mask=place(post.mask, specs))
    rng = np.random.default_rng(1)
    x = place(rng.normal(size=(16, 32)).astype(np.float32), P("data"))
    opt = B.ssvi(optax.adam(1e-2), end_step=10, update_every=1, update_at_mask_step=True)

    def loss(v, masks, x):
        h = x
        for name in ("l1", "l2"):
            m = masks[name]["kernel"]
            h = jnp.tanh(h @ (v.mu[name]["kernel"] * m) + v.mu[name]["bias"])
        return jnp.sum(h ** 2) + 1e-3 * B.kl_divergence(v._replace(mask=masks))

    @jax.jit
    def step(v, state, x):
        g = jax.grad(loss)(v, masks_of(state)[0], x)
        u, state = opt.update(g, state, v)
        return optax.apply_updates(v, u), state

    v, state = post._replace(mask=None), opt.init(post)
    v, state = step(v, state, x)
    return {"mu": v.mu, "masks": masks_of(state)[0]}


def _oneshot(place):
    from sparsejax.oneshot import prune_model

    params, _ = problem()
    params = {k: params[k] for k in ("l1", "l2")}

    def forward(p, x, tap):
        h = jax.nn.relu(tap("l1/kernel", x) @ p["l1"]["kernel"])
        return tap("l2/kernel", h) @ p["l2"]["kernel"]

    rng = np.random.default_rng(2)
    batches = [place(rng.normal(size=(8, 32)).astype(np.float32), P("data")) for _ in range(2)]
    sharded = place(params, {k: SPECS[k] for k in params})
    pruned, masks = prune_model(sharded, forward, batches, "sparsegpt", sparsity=0.5, axis=0,
                                groups=[["l1/kernel", "l2/kernel"]])
    return {"sparsegpt": {"params": pruned, "masks": masks}}


def _moe(place, n):
    from sparsejax import moe

    T, D, F, E = 32, 8, 16, 8
    rng = np.random.default_rng(3)
    x, logits = rng.normal(size=(T, D)), rng.normal(size=(T, E))
    w1, w2 = rng.normal(size=(E, D, F)) / 3, rng.normal(size=(E, F, D)) / 4
    x, logits, w1, w2 = (np.asarray(a, np.float32) for a in (x, logits, w1, w2))
    router = functools.partial(moe.top_k_routing, k=2, capacity_factor=1.0)
    if place is None:  # one device: each of the n token groups routed on its own
        ys = jax.vmap(lambda xg, lg: moe.moe_ffn(xg, router(lg), w1, w2, tile=8))(
            x.reshape(n, T // n, D), logits.reshape(n, T // n, E))
        return ys.reshape(T, D)
    mesh = jax.make_mesh((n,), ("expert",), devices=jax.devices(), axis_types=(AUTO,))
    spec = functools.partial(NamedSharding, mesh)
    args = [shard(x, spec(P("expert"))), shard(logits, spec(P("expert"))),
            shard(w1, spec(P("expert"))), shard(w2, spec(P("expert")))]
    fn = functools.partial(moe.expert_parallel_moe_ffn, mesh=mesh, axis_name="expert",
                           router=router)
    return jax.jit(fn)(*args)


def _attention(place):
    from sparsejax import attention as A

    rng = np.random.default_rng(4)
    q, k, v = (rng.normal(size=(1, 8, 64, 16)).astype(np.float32) for _ in range(3))
    mask = A.causal_mask(64, 64, block_q=16, block_kv=16)
    spec = P(None, ("data", "model"))  # heads over every device
    q, k, v = (place(a, spec) for a in (q, k, v))
    return jax.jit(lambda q, k, v: A.attention(q, k, v, mask=mask, backend="xla"))(q, k, v)


def _opt_state(place):
    """A sparse optimizer state (prune with global allocation, adam inside) after one step."""
    params, grads = problem()
    params, grads = place(params, SPECS), place(grads, SPECS)
    tx, step = _optimizer("prune")
    return step(params, tx.init(params), grads)[1]


def global_memory():
    """Per-device compiled memory of the global allocation at two model sizes (params sharded
    over the global mesh): ``{size: (local shard bytes, temp bytes)}``."""
    mesh = _mesh()
    sharding = NamedSharding(mesh, P("data", "model"))
    fn = jax.jit(lambda p: compute_masks(p, "unstructured", 0.8, allocation="global"))
    out = {}
    for n in (512, 1024):
        params = {f"l{i}": jax.ShapeDtypeStruct((n, n), jnp.float32, sharding=sharding)
                  for i in range(4)}
        stats = fn.lower(params).compile().memory_analysis()
        out[n] = (4 * n * n * 4 // jax.device_count(), stats.temp_size_in_bytes)
    return out


def _restore_target(mesh):
    """The sparse optimizer state's structure, shapes and dtypes (traced, not compiled: the
    restoring group never runs the step), each leaf sharded like the parameter of its shape over
    ``mesh`` (the shapes are distinct), scalars replicated."""
    params, grads = problem()
    tx, step = _optimizer("prune")
    shapes = jax.eval_shape(lambda p, g: step(p, tx.init(p), g)[1], params, grads)
    specs = jax.tree.leaves(SPECS, is_leaf=lambda s: isinstance(s, P))
    by_shape = {np.shape(x): s for x, s in zip(jax.tree.leaves(params), specs, strict=True)}
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=NamedSharding(mesh, by_shape.get(x.shape, P()))), shapes)


def checkpoint(directory, save):
    """In every process: save the sparse optimizer state with Orbax (``save``; restored onto the
    state's own shardings), or restore it onto this group's shardings (`_restore_target`);
    returns the gathered restored state."""
    import orbax.checkpoint as ocp

    mesh = _mesh()
    checkpointer = ocp.StandardCheckpointer()
    if save:
        state = _opt_state(_placer(mesh))
        checkpointer.save(directory, state)
        checkpointer.wait_until_finished()
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    else:
        target = _restore_target(mesh)
    restored = checkpointer.restore(directory, target)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
    return gather(restored)


CHECKS = {"masks": _masks, "global_masks": functools.partial(_masks, names=GLOBAL_CASES),
          "prune": functools.partial(_train, name="prune"),
          "rigl": functools.partial(_train, name="rigl"), "ssvi": _ssvi, "oneshot": _oneshot,
          "attention": _attention}


def _mesh():
    n = jax.device_count()
    return jax.make_mesh((n // 2, 2), ("data", "model"), devices=jax.devices(),
                         axis_types=(AUTO, AUTO))


def _placer(mesh):
    def place(tree, specs):
        return jax.tree.map(lambda s, x: None if x is None else shard(x, NamedSharding(mesh, s)),
                            specs, tree, is_leaf=lambda s: isinstance(s, P))

    return place


def sharded(names, directory=None, save=True):
    """In every process: each check with its inputs sharded over the global mesh, gathered;
    ``"memory"`` runs `global_memory`; with ``directory``, the Orbax checkpoint is saved there
    (``save``) or restored from it (``"checkpoint"`` in the result)."""
    mesh = _mesh()
    place = _placer(mesh)
    out = {}
    for name in names:
        start = time.perf_counter()
        if name == "memory":
            out[name] = global_memory()
        elif name == "moe":
            out[name] = gather(_moe(place, jax.device_count()))
        else:
            result = CHECKS[name](place)
            out[name] = gather(result)
        if name in ("masks", "global_masks"):  # the global selection never gathers a leaf: masks shard like it
            for path in ("l1", "l3"):
                want = NamedSharding(mesh, SPECS[path]["kernel"])
                got = result["global"][path]["kernel"].sharding
                assert got.is_equivalent_to(want, len(want.spec)), (path, got, want)
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if directory is not None:
        out["checkpoint"] = checkpoint(directory, save)
    return out


def reference(names, devices):
    """The same checks on one device (``devices``: the sharded group's device count)."""
    out = {}
    for name in names:
        if name == "moe":
            out[name] = np.asarray(_moe(None, devices))
        elif name != "checkpoint":
            out[name] = jax.tree.map(np.asarray, CHECKS[name](lambda tree, specs: tree))
    if "checkpoint" in names:
        out["checkpoint"] = jax.tree.map(np.asarray, _opt_state(lambda tree, specs: tree))
    return out

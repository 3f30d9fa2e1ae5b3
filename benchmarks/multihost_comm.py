"""Bytes each transform communicates per step, read from the compiled program's collectives.

Compiles (does not run) each transform with its inputs sharded over a ``("data", "model")`` mesh
of host CPU devices and sums the result sizes of the collectives in the optimized HLO (all-reduce,
all-gather, reduce-scatter, all-to-all, collective-permute): bytes per device per call. The
collectives of a program do not depend on whether the devices sit in one process or several, so
one process with ``--devices`` host devices measures what a multi-host run sends.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/multihost_comm.py
"""

from __future__ import annotations

import argparse
import functools
import re
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from sparsejax import compute_masks

_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collective_bytes(hlo: str) -> dict[str, int]:
    """``{collective: bytes}`` summed over the collectives of an optimized HLO module (each
    collective's result shape, per device; async ``-start``/``-done`` pairs counted once)."""
    out: dict[str, int] = defaultdict(int)
    for line in hlo.splitlines():
        m = re.search(r"= (.*?) (" + "|".join(_OPS) + r")(-start)?\(", line)
        if not m:
            continue
        result = m.group(1)
        if m.group(3):  # an async start returns (operand, result[, ...]): count the result
            shapes = _SHAPE.findall(result)
            shapes = shapes[1:2] if len(shapes) > 1 else shapes
        else:
            shapes = _SHAPE.findall(result)
        out[m.group(2)] += sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d]))
                               for t, dims in shapes)
    return dict(out)


def _model(layers=6, d=384, f=1536):
    """MiniLM-sized kernels (6 layers, 384 hidden, 1536 MLP): 10.6 M parameters."""
    rng = np.random.default_rng(0)
    p = {}
    for i in range(layers):
        for name, shape in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("o", (d, d)),
                            ("up", (d, f)), ("down", (f, d))):
            p[f"layer{i}/{name}"] = rng.normal(size=shape).astype(np.float32)
    return p


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-axis", type=int, default=2)
    parser.add_argument("--only", default="", help="measure only rows containing this text")
    args = parser.parse_args()
    n = jax.device_count()
    mesh = jax.make_mesh((n // args.model_axis, args.model_axis), ("data", "model"),
                         axis_types=(AxisType.Auto, AxisType.Auto))
    sharding = NamedSharding(mesh, P("data", "model"))
    params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
              for k, v in _model().items()}
    total = sum(int(np.prod(v.shape)) * 4 for v in params.values())
    rows = []

    def measure(name, fn, *xs):
        if args.only not in name:
            return
        hlo = jax.jit(fn).lower(*xs).compile().as_text()
        rows.append((name, collective_bytes(hlo)))

    measure("compute_masks unstructured (per leaf)",
            lambda p: compute_masks(p, "unstructured", 0.8), params)
    measure("compute_masks global", lambda p: compute_masks(p, "unstructured", 0.8,
                                                            allocation="global"), params)
    measure("compute_masks nm 2:4", lambda p: compute_masks(p, "nm", n=2, m=4, axis=0), params)

    from sparsejax import training as T

    for name, tx in (("training.prune global (mask step)",
                      T.prune(optax.adam(1e-3), 0.8, allocation="global", update_every=1)),
                     ("training.rigl (mask step)",
                      T.rigl(optax.adam(1e-3), 0.8, update_every=1, end_step=100,
                             key=jax.random.key(0)))):
        def step(p, g, tx=tx):
            u, s = tx.update(g, tx.init(p), p)
            return optax.apply_updates(p, u), s

        measure(name, step, params, params)

    from sparsejax import attention as A

    heads = NamedSharding(mesh, P("data", "model"))
    q = jax.ShapeDtypeStruct((n // args.model_axis, 2 * args.model_axis * 4, 512, 64),
                             jnp.float32, sharding=heads)
    mask = A.causal_mask(512, 512)
    measure("attention, batch x heads sharded (xla)",
            lambda q, k, v: A.attention(q, k, v, mask=mask, backend="xla"), q, q, q)

    from sparsejax import moe

    emesh = jax.make_mesh((n,), ("expert",), axis_types=(AxisType.Auto,))
    ex = NamedSharding(emesh, P("expert"))
    T_, D, F, E = 256 * n, 384, 1536, 2 * n
    router = functools.partial(moe.top_k_routing, k=2, capacity_factor=1.25)
    measure("moe expert_parallel_moe_ffn (top-2, cf 1.25)",
            functools.partial(moe.expert_parallel_moe_ffn, mesh=emesh, axis_name="expert",
                              router=router),
            jax.ShapeDtypeStruct((T_, D), jnp.float32, sharding=ex),
            jax.ShapeDtypeStruct((T_, E), jnp.float32, sharding=ex),
            jax.ShapeDtypeStruct((E, D, F), jnp.float32, sharding=ex),
            jax.ShapeDtypeStruct((E, F, D), jnp.float32, sharding=ex))

    print(f"{n} devices, mesh data={n // args.model_axis} model={args.model_axis}; "
          f"model {total / 2**20:.1f} MiB float32")
    print("| transform | all-reduce | all-gather | reduce-scatter | all-to-all | permute |")
    print("|---|---|---|---|---|---|")
    for name, b in rows:
        cells = [f"{b.get(op, 0) / 2**10:,.0f} KiB" if b.get(op) else "0" for op in _OPS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

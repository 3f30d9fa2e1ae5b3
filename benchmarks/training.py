"""Sparse training: step time of each `sparsejax.training` transform over the plain optax step, the
block-sparse training step through `sparsejax.nn.BlockSparseLinear`, and quality on digits.

Sections, all in one run (``--sections`` picks a subset):

* ``step``: one training step (forward, backward, optimizer) of an MLP (``--mlp-width``, 3 hidden
  layers, batch 256) and of a small transformer block (`sparsejax.nn.SparseMultiHeadAttention` +
  MLP, 256 features, 4 heads, sequence 128, batch 8), plain ``optax.adam`` against each sparse
  transform wrapping it: ``prune`` (uniform and global magnitude), ``rigl`` (ERK), ``sparse_evolutionary``
  (SET), ``static_sparse`` and 2:4 ``sr_ste`` in the loss. Each transform is timed *between* mask
  updates (state count 1) and *at* a mask update (state count = ``update_every``), from fixed inputs.
  Goal (issue 8): <= 1.10x the dense step between mask updates.
* ``block``: two 4096x4096 layers (``--block-width``), batch 256, adam: dense ``nnx.Linear`` against
  `sparsejax.nn.BlockSparseLinear` with 128x128 blocks at 10% block density (forward and backward
  through the block-sparse kernels), plain and wrapped in ``prune(pattern="block")`` between
  mask updates. Goal: <= 0.35x the dense step.
* ``quality``: the demo's methods (dense, gradual magnitude pruning to 90%, RigL 90% ERK, 2:4 SR-STE)
  trained from scratch on scikit-learn's digits for ``--quality-steps`` Adam steps, ``--seeds``
  seeds; mean test accuracy and the gap to dense. The issue's targets: GMP and RigL within 2 points
  of dense, 2:4 SR-STE within 1 point.

* ``jaxpruner`` (only with ``--jaxpruner-python`` and ``--jaxpruner-src``): the same gradual
  magnitude pruning run by google-research/jaxpruner's ``MagnitudePruning`` and by ``prune``, masks
  compared after every step, optimizer-step times side by side (``_jaxpruner_training_runner.py``,
  run under the throwaway Python with the ``jax.tree_map`` shim; this interpreter's site-packages
  are appended to its path for jax/optax/flax, as ``benchmarks/masks.py`` does with its venv).

Timings are interleaved (dense, sparse, dense, ...) and each ratio is the median of per-pair ratios,
so load changes on a shared machine hit both alike; the machine is shared and noisy all the same.
Run from the repository root: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
benchmarks/training.py [--out results/training.json]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so that `python benchmarks/training.py` imports this checkout
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _timing import paired  # noqa: E402
from flax import nnx  # noqa: E402

import sparsejax as sj  # noqa: E402
from sparsejax import training as T  # noqa: E402


def paired_ms(dense_fn, sparse_fn, repeats: int) -> dict:
    """Interleaved timing of two zero-argument functions: medians and the median per-pair ratio."""
    td, ts, ratio = paired(dense_fn, (), sparse_fn, (), repeats)
    return {"dense_ms": 1e3 * td, "sparse_ms": 1e3 * ts, "ratio": ratio}


def nm_masks(params):
    return sj.compute_masks(params, "nm", n=2, m=4, axis=0)


UPDATE_EVERY = 100


def transforms(key):
    adam = optax.adam(1e-3)
    return {
        "prune (magnitude, uniform)": T.prune(adam, sj.schedules.polynomial(0.9, 0, 1000),
                                              update_every=UPDATE_EVERY),
        "prune (magnitude, global)": T.prune(adam, 0.9, allocation="global",
                                             update_every=UPDATE_EVERY),
        "rigl (ERK)": T.rigl(adam, 0.9, update_every=UPDATE_EVERY, end_step=10_000, key=key),
        "sparse_evolutionary (ERK)": T.sparse_evolutionary(adam, 0.9, update_every=UPDATE_EVERY,
                                                           end_step=10_000, key=key),
        "static_sparse (ERK)": T.static_sparse(adam, 0.9, key=key),
    }


def make_step(loss_of, tx, forward=lambda p: p):
    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(lambda p: loss_of(forward(p), batch))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def step_section(name, params, loss_of, batch, repeats):
    rows = []
    key = jax.random.key(0)
    dense_tx = optax.adam(1e-3)
    dense_step = make_step(loss_of, dense_tx)
    dense_state = dense_tx.init(params)
    dense_fn = lambda: dense_step(params, dense_state, batch)
    for label, tx in transforms(key).items():
        step = make_step(loss_of, tx)
        state = tx.init(params)
        for when, count in (("between updates", 1), ("at a mask update", UPDATE_EVERY)):
            s = state._replace(count=jnp.int32(count))
            r = paired_ms(dense_fn, lambda s=s, step=step: step(params, s, batch), repeats)
            rows.append({"model": name, "transform": label, "when": when, **r})
            print(f"  {name:12s} {label:28s} {when:17s} dense {r['dense_ms']:8.2f} ms  "
                  f"sparse {r['sparse_ms']:8.2f} ms  ratio {r['ratio']:.2f}", flush=True)
    sr = make_step(loss_of, dense_tx, lambda p: T.sr_ste(p, nm_masks))
    r = paired_ms(dense_fn, lambda: sr(params, dense_state, batch), repeats)
    rows.append({"model": name, "transform": "sr_ste 2:4 (in the loss)", "when": "every step",
                 **r})
    print(f"  {name:12s} {'sr_ste 2:4 (in the loss)':28s} {'every step':17s} dense "
          f"{r['dense_ms']:8.2f} ms  sparse {r['sparse_ms']:8.2f} ms  ratio {r['ratio']:.2f}",
          flush=True)
    return rows


class Block(nnx.Module):
    """A pre-norm transformer block: sparse multi-head attention + MLP."""

    def __init__(self, features, heads, rngs):
        self.norm1 = nnx.LayerNorm(features, rngs=rngs)
        self.attn = sj.nn.SparseMultiHeadAttention(features, heads, causal=True, rngs=rngs)
        self.norm2 = nnx.LayerNorm(features, rngs=rngs)
        self.up = nnx.Linear(features, 4 * features, rngs=rngs)
        self.down = nnx.Linear(4 * features, features, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


def run_step(args):
    print("== step time: sparse transform / plain optax.adam step ==")
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    w = args.mlp_width
    sizes = (w, w, w, w, 10)
    params = {f"dense_{i}": {"kernel": jax.random.normal(k[i], (a, b)) / np.sqrt(a),
                             "bias": jnp.zeros(b)} for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}

    def mlp_loss(p, batch):
        h = batch[0]
        for i in range(len(sizes) - 1):
            h = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
            h = jax.nn.relu(h) if i < len(sizes) - 2 else h
        return optax.softmax_cross_entropy_with_integer_labels(h, batch[1]).mean()

    batch = (jax.random.normal(k[5], (256, w)), jnp.arange(256) % 10)
    rows = step_section("MLP", params, mlp_loss, batch, args.repeats)

    block = Block(256, 4, nnx.Rngs(0))
    graphdef, tparams, rest = nnx.split(block, nnx.Param, ...)
    tparams = nnx.as_pure(tparams)

    def block_loss(p, batch):
        model = nnx.merge(graphdef, p, rest)
        return jnp.mean((model(batch[0]) - batch[1]) ** 2)

    x = jax.random.normal(k[6], (8, 128, 256))
    rows += step_section("transformer", tparams, block_loss, (x, jnp.roll(x, 1, axis=1)),
                         args.repeats)
    return rows


class TwoLayer(nnx.Module):
    def __init__(self, width, sparse, density, rngs):
        if sparse:
            make = lambda: sj.nn.BlockSparseLinear(width, width, block_shape=(128, 128),
                                                   sparsity=1.0 - density, rngs=rngs)
        else:
            make = lambda: nnx.Linear(width, width, rngs=rngs)
        self.l1, self.l2 = make(), make()

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def run_block(args):
    print(f"== block-sparse training: {args.block_width}-wide layers, 128x128 blocks, "
          f"{args.block_density:.0%} block density, batch 256 ==")
    width = args.block_width
    x = jax.random.normal(jax.random.PRNGKey(0), (256, width))
    y = jax.random.normal(jax.random.PRNGKey(1), (256, width))

    def stepper(sparse, tx):
        model = TwoLayer(width, sparse, args.block_density, nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = nnx.as_pure(params)
        loss_of = lambda p, b: jnp.mean((nnx.merge(graphdef, p, rest)(b[0]) - b[1]) ** 2)
        step = make_step(loss_of, tx)
        state = tx.init(params)
        if isinstance(state, T.SparseState):
            state = state._replace(count=jnp.int32(1))
        return lambda: step(params, state, (x, y))

    dense = stepper(False, optax.adam(1e-3))
    rows = []
    for label, tx in (("BlockSparseLinear + adam", optax.adam(1e-3)),
                      ("BlockSparseLinear + prune(block) between updates",
                       T.prune(optax.adam(1e-3), 0.5, pattern="block", block_shape=(128, 128),
                               update_every=UPDATE_EVERY))):
        r = paired_ms(dense, stepper(True, tx), max(3, args.repeats // 4))
        rows.append({"model": f"2x{width}", "transform": label, **r})
        print(f"  {label:50s} dense {r['dense_ms']:9.1f} ms  sparse {r['sparse_ms']:9.1f} ms  "
              f"ratio {r['ratio']:.3f}", flush=True)
    return rows


def run_quality(args):
    from sparsejax.demo.context import load_digits_split
    from sparsejax.demo.training import METHODS, train_method

    print(f"== quality on digits: {args.quality_steps} Adam steps, seeds {args.seeds} ==")
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in load_digits_split(0))
    rows = []
    for name in METHODS:
        accs, sparsities = [], []
        for seed in range(args.seeds):
            r = train_method(name, x_tr, y_tr, x_te, y_te, steps=args.quality_steps,
                             key=jax.random.PRNGKey(seed))
            accs.append(r["accuracy"])
            sparsities.append(r["sparsity"])
        rows.append({"method": name, "accuracy_mean": float(np.mean(accs)),
                     "accuracy_per_seed": accs, "kernel_sparsity": float(np.mean(sparsities))})
    for r in rows:
        r["gap_to_dense_points"] = 100 * (r["accuracy_mean"] - rows[0]["accuracy_mean"])
        print(f"  {r['method']:24s} accuracy {r['accuracy_mean']:.4f} "
              f"({r['gap_to_dense_points']:+.2f} points vs dense)  kernel sparsity "
              f"{r['kernel_sparsity']:.3f}", flush=True)
    return rows


def run_jaxpruner(args):
    import os
    import site
    import subprocess

    if not (args.jaxpruner_python and args.jaxpruner_src):
        print("== jaxpruner comparison skipped: pass --jaxpruner-python and --jaxpruner-src ==")
        return None
    print("== gradual magnitude pruning: sparsejax.training.prune vs jaxpruner MagnitudePruning ==")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"),
                                                      *site.getsitepackages()]))
    proc = subprocess.run([args.jaxpruner_python, str(ROOT / "benchmarks" /
                                                      "_jaxpruner_training_runner.py"),
                           "--jaxpruner-src", args.jaxpruner_src], env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode:
        print(proc.stderr[-3000:])
        return {"error": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    differ = result["steps_with_different_masks"]
    print(f"  masks equal after {result['steps'] - len(differ)} of {result['steps']} steps; "
          f"first difference at step {differ[0][0] if differ else '-'} "
          f"({differ[0][1] if differ else 0} entries)")
    for when, t in result["timings"].items():
        print(f"  {when:18s} jaxpruner {t['jaxpruner_step_ms']:8.3f} ms  sparsejax "
              f"{t['sparsejax_step_ms']:8.3f} ms  ratio {t['sparsejax_over_jaxpruner']:.3f}")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="step,block,quality,jaxpruner")
    p.add_argument("--mlp-width", type=int, default=1024)
    p.add_argument("--block-width", type=int, default=4096)
    p.add_argument("--block-density", type=float, default=0.1)
    p.add_argument("--quality-steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--jaxpruner-python", default=None,
                   help="python of a throwaway venv that can import jaxpruner's dependencies")
    p.add_argument("--jaxpruner-src", default=None, help="directory holding the jaxpruner package")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "training.json")
    args = p.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    result = {"machine": platform.platform(), "processor": platform.processor(),
              "jax": jax.__version__, "backend": jax.default_backend(), "args": vars(args)
              | {"out": str(args.out)}, "note": "shared CPU, noisy; ratios are medians of "
              "interleaved per-pair ratios"}
    runners = {"step": run_step, "block": run_block, "quality": run_quality,
               "jaxpruner": run_jaxpruner}
    for s in sections:
        result[s] = runners[s](args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Gradual magnitude pruning: sparsejax.training.prune against google-research/jaxpruner's
``MagnitudePruning``, side by side in one process; run by ``benchmarks/training.py --sections
jaxpruner`` under a throwaway Python (``--jaxpruner-python``) that can import jaxpruner and its
dependencies (``--jaxpruner-src`` is put on ``sys.path``, this checkout's sparsejax too).

Both prune the same MLP (kernels only, uniform 90%) with plain SGD on the same gradient sequence,
jaxpruner's ``PolynomialSchedule(update_freq, start, end)`` against
``prune(sgd, lambda t: polynomial(0.9, start, end)(t + 1), update_every=update_freq,
begin_step=start)`` (jaxpruner
evaluates its schedule at ``count + 1``; sparsejax's schedules at ``count``). jaxpruner's params are
masked by its separate ``post_gradient_update`` call; sparsejax's by the updates themselves. Prints
one JSON line: whether the masks agree after every step, and the step times (interleaved medians).

Shim: ``jax.tree_map = jax.tree.map`` (removed from current JAX, still called by jaxpruner).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax

jax.tree_map = jax.tree.map  # the documented shim


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jaxpruner-src", required=True)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    sys.path.insert(0, args.jaxpruner_src)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import jax.numpy as jnp
    import jaxpruner
    import numpy as np
    import optax

    import sparsejax as sj

    freq, start, end = 10, 10, 100
    w = args.width
    sizes = (64, w, w, 10)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {f"dense_{i}": {"kernel": jax.random.normal(k[i], (a, b)) / np.sqrt(a),
                             "bias": jnp.zeros(b)} for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}
    grads_at = lambda t: jax.tree.map(
        lambda x: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), t), x.shape), params)

    pruner = jaxpruner.MagnitudePruning(
        sparsity_distribution_fn=functools.partial(jaxpruner.sparsity_distributions.uniform,
                                                   sparsity=0.9),
        scheduler=jaxpruner.sparsity_schedules.PolynomialSchedule(
            update_freq=freq, update_start_step=start, update_end_step=end))
    tx_jp = pruner.wrap_optax(optax.sgd(0.01))
    schedule = sj.schedules.polynomial(0.9, start, end)
    tx_sj = sj.training.prune(optax.sgd(0.01), lambda t: schedule(t + 1), update_every=freq,
                              begin_step=start, end_step=end)

    @jax.jit
    def step_jp(p, s, g):
        u, s = tx_jp.update(g, s, p)
        return pruner.post_gradient_update(optax.apply_updates(p, u), s), s

    @jax.jit
    def step_sj(p, s, g):
        u, s = tx_sj.update(g, s, p)
        return optax.apply_updates(p, u), s

    p_jp, s_jp = params, tx_jp.init(params)
    p_sj, s_sj = params, tx_sj.init(params)
    differ, update_steps = [], []
    for t in range(args.steps):
        g = grads_at(t)
        p_jp, s_jp = step_jp(p_jp, s_jp, g)
        p_sj, s_sj = step_sj(p_sj, s_sj, g)
        m_jp = {n: v["kernel"] for n, v in s_jp.masks.items()}
        m_sj = {n: v["kernel"] for n, v in sj.training.masks_of(s_sj).items()}
        n_diff = sum(int(np.sum(np.asarray(m_jp[n]) != np.asarray(m_sj[n]))) for n in m_jp)
        if t % freq == 0 and start <= t <= end:
            update_steps.append(t)
        if n_diff:
            differ.append((t, n_diff))
    max_param_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(p_jp), jax.tree.leaves(p_sj)))
    realised = 1.0 - float(np.mean([np.mean(np.asarray(v["kernel"])) for v in s_jp.masks.values()]))
    g = grads_at(0)
    timings = {}
    for when, count in (("between_updates", end + 1), ("at_a_mask_update", end)):
        sj_state = s_sj._replace(count=jnp.int32(count))
        jp_state = s_jp._replace(count=jnp.int32(count))
        jax.block_until_ready(step_jp(p_jp, jp_state, g))
        jax.block_until_ready(step_sj(p_sj, sj_state, g))
        tj, ts = [], []
        for _ in range(args.repeats):
            for fn, pp, ss, out in ((step_jp, p_jp, jp_state, tj), (step_sj, p_sj, sj_state, ts)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(pp, ss, g))
                out.append(time.perf_counter() - t0)
        timings[when] = {"jaxpruner_step_ms": 1e3 * float(np.median(tj)),
                         "sparsejax_step_ms": 1e3 * float(np.median(ts)),
                         "sparsejax_over_jaxpruner": float(np.median(np.asarray(ts) / np.asarray(tj)))}
    print(json.dumps({
        "steps": args.steps, "mask_update_steps": update_steps, "steps_with_different_masks": differ,
        "max_abs_param_difference": max_param_diff, "final_sparsity": realised,
        "timings": timings, "note": "optimizer step only (SGD update + masking), no forward pass",
        "shims": ["jax.tree_map = jax.tree.map"]}))


if __name__ == "__main__":
    main()

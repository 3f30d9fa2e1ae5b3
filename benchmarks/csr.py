"""Unstructured sparse (CSR) products on CPU: sparse 1x1 convolutions vs dense, and SpMM vs peers.

Section ``conv1x1`` ("Fast Sparse ConvNets", MobileNet's late layers): `sparsejax.ops.sparse_conv1x1`
against the dense ``lax.conv_general_dilated`` 1x1 convolution for ``C_in = C_out = --channels``
(512) on a ``--hw`` x ``--hw`` (14 x 14) map, batch 1, float32, NHWC and NCHW, at 70, 80, 90 and
95% unstructured sparsity (uniformly random masks). Goal (issue 26): faster than dense from 80%.

Section ``spmm``: `sparsejax.ops.csr_matmul` ``W @ X`` with the same ``[C_out, C_in]`` weights and
``X [C_in, hw*hw]`` against ``jax.experimental.sparse.BCSR @ X`` (jitted) and
``scipy.sparse.csr_matrix @ X`` (numpy, single-threaded). Goal: at least as fast as both at 90%.

Section ``mobilenet`` (end to end, issue 26): a MobileNet-style block on scikit-learn's 8x8 digits
(3x3 stem conv 1->32, pointwise 32->128, depthwise 3x3, pointwise 128->64, pooled linear 64->10;
NHWC, Flax NNX) trained with RigL (`sparsejax.training.rigl`, ERK) to 90% sparsity of the
pointwise and linear kernels (stem and depthwise stay dense, as in "Fast Sparse ConvNets"), then
deployed with ``sparsejax.nn.to_sparse(model, masks_of(opt_state), "csr")``: the pointwise convs
become `sparsejax.nn.SparseConv1x1`, the head `sparsejax.nn.SparseLinear`. Reports the test
accuracy of both, the largest difference of their logits and the realised sparsity.

Section ``gpu`` (`gpu_section`, run by ``benchmarks/device_check.py`` on a GPU): float32
``W [size, size]`` at 90% (and 80, 95%) unstructured sparsity times ``X [size, n]`` through
``csr_matmul(backend="pallas_gpu")`` against ``jax.experimental.sparse.BCSR @ X`` (cuSPARSE on
GPU) and the dense cuBLAS ``jnp.dot``; reports times, the ratio to cuSPARSE (goal <= 1 at 90%)
and the effective memory bandwidth of the kernel (stored values, indices, pointers, ``X`` and the
output read/written once: the roofline's bytes), to compare with half the device's peak.

Timing: jitted functions, a warm-up call, then ``--repeats`` interleaved runs (dense/sparse pairs,
`_timing.paired`), so load changes on a shared machine hit both alike;
each ratio is the median of per-pair ratios. Every point also checks the result against the dense
one (max relative error). The 1-minute load average is recorded next to the figures.

Run: ``python benchmarks/csr.py [--repeats 30] [--out results/csr.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from _timing import paired
from flax import nnx
from jax.experimental import sparse as jsparse

import sparsejax as sj
from sparsejax import training as T
from sparsejax.formats import CSR
from sparsejax.ops import csr_matmul, sparse_conv1x1

SPARSITIES = (0.7, 0.8, 0.9, 0.95)




def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(1e-30, np.max(np.abs(want))))


def _weight(rng: np.random.Generator, c: int, sparsity: float) -> np.ndarray:
    w = rng.standard_normal((c, c)).astype(np.float32)
    keep = np.zeros(c * c, bool)
    keep[rng.permutation(c * c)[: int(round((1 - sparsity) * c * c))]] = True
    return np.where(keep.reshape(c, c), w, 0).astype(np.float32)


def conv_section(channels: int, hw: int, sparsities, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for fmt in ("NHWC", "NCHW"):
        shape = (1, hw, hw, channels) if fmt == "NHWC" else (1, channels, hw, hw)
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        dense = jax.jit(lambda x, w, fmt=fmt: jax.lax.conv_general_dilated(
            x, w[:, :, None, None], (1, 1), "VALID", dimension_numbers=(fmt, "OIHW", fmt)))
        sparse = jax.jit(lambda x, w, fmt=fmt: sparse_conv1x1(x, w, data_format=fmt))
        for s in sparsities:
            w = _weight(rng, channels, s)
            a = CSR.from_dense(w)
            td, ts, ratio = paired(dense, (x, jnp.asarray(w)), sparse, (x, a), repeats)
            rows.append(dict(layout=fmt, sparsity=s, dense_ms=td * 1e3, sparse_ms=ts * 1e3,
                             ratio=ratio, rel_err=_rel_err(sparse(x, a), dense(x, w))))
            print(f"conv1x1 {fmt} sparsity {s:.2f}: dense {td * 1e3:7.3f} ms  sparse "
                  f"{ts * 1e3:7.3f} ms  ratio {ratio:5.2f}", flush=True)
    return rows


def _scipy_time(m, x: np.ndarray, repeats: int) -> float:
    m @ x
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m @ x
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def spmm_section(channels: int, hw: int, sparsities, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((channels, hw * hw)).astype(np.float32)
    xj = jnp.asarray(x)
    ours = jax.jit(lambda a, x: csr_matmul(a, x))
    bcsr = jax.jit(lambda b, x: b @ x)
    rows = []
    for s in sparsities:
        w = _weight(rng, channels, s)
        a, b, m = CSR.from_dense(w), jsparse.BCSR.fromdense(jnp.asarray(w)), sp.csr_matrix(w)
        t_b, t_o, r_b = paired(bcsr, (b, xj), ours, (a, xj), repeats)
        t_s = _scipy_time(m, x, repeats)
        ref = w.astype(np.float64) @ x
        rows.append(dict(sparsity=s, csr_matmul_ms=t_o * 1e3, bcsr_ms=t_b * 1e3,
                         scipy_ms=t_s * 1e3, ratio_vs_bcsr=r_b, ratio_vs_scipy=t_o / t_s,
                         rel_err=_rel_err(ours(a, xj), ref),
                         bcsr_rel_err=_rel_err(bcsr(b, xj), ref)))
        print(f"spmm sparsity {s:.2f}: csr_matmul {t_o * 1e3:7.3f} ms  BCSR {t_b * 1e3:7.3f} ms"
              f"  scipy {t_s * 1e3:7.3f} ms", flush=True)
    return rows


class MobileBlock(nnx.Module):
    """A MobileNet-v2-style inverted residual tail for 8x8 single-channel images (NHWC)."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 32, (3, 3), rngs=rngs)
        self.expand = nnx.Conv(32, 128, (1, 1), rngs=rngs)
        self.depthwise = nnx.Conv(128, 128, (3, 3), feature_group_count=128, rngs=rngs)
        self.project = nnx.Conv(128, 64, (1, 1), rngs=rngs)
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.stem(x))
        x = jax.nn.relu(self.expand(x))
        x = jax.nn.relu(self.depthwise(x))
        x = jax.nn.relu(self.project(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


SPARSE_KERNELS = ["expand/kernel", "project/kernel", "head/kernel"]


def mobilenet_section(steps: int, seed: int, sparsity: float = 0.9) -> dict:
    """Train `MobileBlock` with RigL on digits, deploy it on the CSR layers, compare."""
    import optax

    from sparsejax.demo.context import load_digits_split

    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    x_tr, x_te = x_tr.reshape(-1, 8, 8, 1), x_te.reshape(-1, 8, 8, 1)
    model = MobileBlock(nnx.Rngs(seed))
    tx = T.rigl(optax.adam(3e-3), sparsity, update_every=max(1, steps // 20),
                end_step=max(2, int(steps * 0.75)), key=jax.random.PRNGKey(seed),
                where=SPARSE_KERNELS)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(x_tr), 128)
        step(model, opt, x_tr[idx], y_tr[idx])
    train_s = time.perf_counter() - t0
    masks = T.masks_of(opt.opt_state)
    sparse = sj.nn.to_sparse(model, masks, "csr")
    dense_logits, sparse_logits = model(x_te), sparse(x_te)
    kept = [np.asarray(m) for m in jax.tree.leaves(masks)]
    out = dict(steps=steps, target_sparsity=sparsity, train_seconds=train_s,
               realised_sparsity=1 - sum(k.sum() for k in kept) / sum(k.size for k in kept),
               dense_accuracy=float(np.mean(np.argmax(dense_logits, -1) == y_te)),
               sparse_accuracy=float(np.mean(np.argmax(sparse_logits, -1) == y_te)),
               same_predictions=float(np.mean(np.argmax(dense_logits, -1)
                                              == np.argmax(sparse_logits, -1))),
               max_logit_diff=float(np.max(np.abs(dense_logits - sparse_logits))),
               layers={k: type(v).__name__ for k, v in (("expand", sparse.expand),
                                                       ("project", sparse.project),
                                                       ("head", sparse.head))})
    print(f"mobilenet RigL {sparsity:.0%}: dense-masked acc {out['dense_accuracy']:.4f}, "
          f"to_sparse(csr) acc {out['sparse_accuracy']:.4f}, max |logit diff| "
          f"{out['max_logit_diff']:.2e}, realised sparsity {out['realised_sparsity']:.3f}",
          flush=True)
    return out


def gpu_section(size: int, n: int, sparsities, repeats: int, *, interpret: bool = False,
                seed: int = 0) -> dict:
    """The ``pallas_gpu`` SpMM against cuSPARSE (BCSR) and dense cuBLAS; see the module doc."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((size, n)), jnp.float32)
    ours = jax.jit(lambda a, x: csr_matmul(a, x, backend="pallas_gpu", interpret=interpret))
    bcsr = jax.jit(lambda b, x: b @ x)
    dense = jax.jit(jnp.dot)
    rows, failures = [], []
    for s in sparsities:
        w = _weight(rng, size, s)
        a, b = CSR.from_dense(w), jsparse.BCSR.fromdense(jnp.asarray(w))
        t_b, t_o, r_b = paired(bcsr, (b, x), ours, (a, x), repeats)
        t_d, _, r_d = paired(dense, (jnp.asarray(w), x), ours, (a, x), repeats)
        nnz = int(a.nnz)
        moved = nnz * 8 + (size + 1) * 4 + 2 * size * n * 4  # values+cols, ptrs, X, out
        err = _rel_err(ours(a, x), np.asarray(w, np.float64) @ np.asarray(x, np.float64))
        rows.append(dict(sparsity=s, pallas_ms=t_o * 1e3, cusparse_ms=t_b * 1e3,
                         dense_ms=t_d * 1e3, ratio_vs_cusparse=r_b, ratio_vs_dense=r_d,
                         effective_gbs=moved / t_o / 1e9, rel_err=err))
        if not err < 1e-4:
            failures.append(f"csr_matmul pallas_gpu sparsity {s}: rel err {err:.2e}")
        print(f"csr gpu sparsity {s:.2f}: pallas {t_o * 1e3:.3f} ms  cuSPARSE {t_b * 1e3:.3f} ms"
              f"  dense {t_d * 1e3:.3f} ms  {moved / t_o / 1e9:.0f} GB/s", flush=True)
    return dict(size=size, n=n, rows=rows, failures=failures)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--hw", type=int, default=14)
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mobilenet-steps", type=int, default=600,
                        help="RigL steps of the end-to-end section (0 skips it)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/csr.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    results = dict(
        device=jax.devices()[0].device_kind, platform=platform.platform(),
        jax=jax.__version__, channels=args.channels, hw=args.hw, repeats=args.repeats,
        conv1x1=conv_section(args.channels, args.hw, args.sparsities, args.repeats, args.seed),
        spmm=spmm_section(args.channels, args.hw, args.sparsities, args.repeats, args.seed),
        mobilenet=(mobilenet_section(args.mobilenet_steps, args.seed)
                   if args.mobilenet_steps else None),
        load_avg_1min=[load_before, os.getloadavg()[0]], cpu_count=os.cpu_count())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(dict(load_avg_1min=results["load_avg_1min"])))
    return results


if __name__ == "__main__":
    main()

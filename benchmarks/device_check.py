"""On-device check of every Pallas kernel: correctness tests and speed on a GPU, in one command.

On a machine where JAX sees a GPU, ``python benchmarks/device_check.py``:

1. runs the on-device tests of the Pallas test files (``tests/test_ops_pallas.py``,
   ``tests/test_attention_kernel.py``, selected by ``-k on_device``: compiled kernels, no
   interpret mode) in a ``pytest`` subprocess and collects pass/fail per test;
2. runs the GPU section of ``benchmarks/matmul.py`` (bf16, 8192^2, 128 x 128 blocks, densities 1,
   0.5, 0.25, 0.1, 0.05; ``pallas_gpu`` and ``xla`` against dense cuBLAS ``jnp.dot``, forward and
   forward+backward) and of ``benchmarks/attention.py`` (bf16, 8k to 64k tokens, 10% block
   density; ``pallas_gpu`` and ``xla`` against ``jax.nn.dot_product_attention`` with cuDNN,
   forward and forward+backward), each point also checked against a dense result;
3. runs ``benchmarks/retrieval.py``'s accelerator section (exact top-10 of 1000 sparse queries
   over 100k synthetic documents on the device, same ids as scipy on the host), and the CSR
   section of ``benchmarks/csr.py`` (float32 4096^2 at 80/90/95% unstructured sparsity times
   ``[4096, 256]``: ``pallas_gpu`` against cuSPARSE via BCSR and dense cuBLAS, with the kernel's
   effective memory bandwidth), and ``benchmarks/activation.py``'s accelerator section
   (``sparse_input_matmul`` / dense, bf16, a 4096 x 11008 weight at batch 1 and 8, input
   sparsity 0 to 90%; ``pallas_gpu``, ``xla``), and ``benchmarks/nm_training.py``'s N:M layer
   (forward+backward of ``x @ W``, bf16, 8192^2, batch 4096, 2:4: dense, forward-only N:M and
   transposable N:M, gradients checked against the dense masked ones; not in the dry run);
4. prints one JSON summary (device, jax/jaxlib versions, tests passed/failed, every ratio) and
   writes it to ``--out`` (default ``results/device_check.json``);
5. exits 1 if any on-device test or benchmark point failed, else 0.

Sized to finish in under 8 minutes on one H200 (``--budget`` seconds for the attention sweep,
whose longest lengths are skipped, and reported as skipped, once it is spent). Without a GPU it
prints one line and exits 0. ``--dry-run`` runs the same steps on CPU at tiny sizes with the
Pallas kernels in interpret mode (what ``tests/test_device_check.py`` runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import jaxlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/test_ops_pallas.py", "tests/test_attention_kernel.py",
              "tests/test_csr_pallas.py", "tests/test_activation_kernel.py")
GPU_PLATFORMS = ("gpu", "cuda", "rocm")

FULL = dict(matmul_size=8192, matmul_block=128, densities=(1.0, 0.5, 0.25, 0.1, 0.05),
            seqs=(8192, 16384, 32768, 65536), heads=8, dim=64, attn_block=128, repeats=5,
            retrieval_docs=100_000, retrieval_queries=1000,
            csr_size=4096, csr_n=256, csr_sparsities=(0.8, 0.9, 0.95),
            act_k=4096, act_n=11008, act_batches=(1, 8), nm_width=8192, nm_batch=4096)
DRY = dict(matmul_size=64, matmul_block=16, densities=(1.0, 0.25), seqs=(64,), heads=2, dim=16,
           attn_block=16, repeats=1, retrieval_docs=500, retrieval_queries=8, csr_size=32, csr_n=16,
           csr_sparsities=(0.9,), act_k=64, act_n=128, act_batches=(1,))


def _load(name: str):
    """A sibling benchmark module by path (``benchmarks/`` is not a package). Its own imports of
    sibling helpers (``from _timing import ...``) resolve as when it runs as a script."""
    here = str(pathlib.Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}",
                                                  pathlib.Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tests(keyword: str, timeout_s: float) -> dict:
    """``pytest -k keyword`` on `TEST_FILES` in a subprocess; per-test outcome from JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider",
               "-k", keyword, f"--junitxml={report}", *TEST_FILES]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"passed": 0, "failed": 1, "skipped": 0, "cases": {},
                    "failures": [f"pytest timed out after {timeout_s:.0f} s"]}
        cases: dict[str, str] = {}
        if report.exists():
            for case in ET.parse(report).getroot().iter("testcase"):
                name = f"{case.get('classname')}::{case.get('name')}"
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome = "failed"
                    elif child.tag == "skipped" and outcome == "passed":
                        outcome = "skipped"
                cases[name] = outcome
    counts = {k: sum(v == k for v in cases.values()) for k in ("passed", "failed", "skipped")}
    failures = [n for n, v in cases.items() if v == "failed"]
    if proc.returncode not in (0, 5) and not failures:  # 5: nothing collected
        failures = [f"pytest exited {proc.returncode}: {proc.stdout[-500:]}{proc.stderr[-500:]}"]
        counts["failed"] += 1
    return {**counts, "cases": cases, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, Pallas in interpret mode (end-to-end check)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON summary path (results/device_check[_dry_run].json)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds for the attention sweep before skipping lengths (240)")
    parser.add_argument("--test-timeout", type=float, default=240.0)
    args = parser.parse_args(argv)

    platform = jax.default_backend()
    if not args.dry_run and platform not in GPU_PLATFORMS:
        print(f"device_check: no GPU visible to JAX (platform {platform!r}); nothing to check.")
        return 0
    cfg = DRY if args.dry_run else FULL
    out = args.out or ROOT / "results" / ("device_check_dry_run.json" if args.dry_run
                                          else "device_check.json")
    start = time.perf_counter()
    summary: dict = {
        "dry_run": args.dry_run,
        "device": str(jax.devices()[0].device_kind),
        "platform": platform,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    if args.skip_tests:
        summary["tests"] = None
    else:
        print(f"device_check: pytest -k on_device {' '.join(TEST_FILES)}", flush=True)
        summary["tests"] = run_tests("on_device", args.test_timeout)
        t = summary["tests"]
        print(f"tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped",
              flush=True)

    interpret = True if args.dry_run else False
    matmul = _load("matmul").accel_section(
        cfg["matmul_size"], cfg["matmul_block"], list(cfg["densities"]), ["pallas_gpu", "xla"],
        cfg["repeats"], dtype=jnp.bfloat16, interpret=interpret)
    summary["matmul"] = matmul
    attention = _load("attention").gpu_section(
        list(cfg["seqs"]), heads=cfg["heads"], dim=cfg["dim"], block=cfg["attn_block"],
        density=0.1, backends=("pallas_gpu", "xla"), repeats=cfg["repeats"],
        interpret=interpret, budget_s=args.budget)
    summary["attention"] = attention
    retrieval = _load("retrieval").accel_section(cfg["retrieval_docs"], cfg["retrieval_queries"])
    summary["retrieval"] = retrieval
    csr = _load("csr").gpu_section(cfg["csr_size"], cfg["csr_n"], cfg["csr_sparsities"],
                                   cfg["repeats"], interpret=interpret)
    summary["csr"] = csr
    activation = _load("activation").accel_section(
        cfg["act_k"], cfg["act_n"], list(cfg["act_batches"]), cfg["repeats"],
        dtype=jnp.bfloat16, interpret=interpret)
    summary["activation"] = activation
    if args.dry_run:  # its CPU compiles cost seconds; benchmarks/nm_training.py runs it on CPU
        nm_layer = {"skipped": "dry run", "failures": []}
    else:
        nm_layer = _load("nm_training").accel_section(cfg["nm_width"], cfg["nm_batch"],
                                                      cfg["repeats"], dtype=jnp.bfloat16)
    summary["nm_layer"] = nm_layer
    failed_tests = summary["tests"]["failed"] if summary["tests"] else 0
    summary["failures"] = (failed_tests + len(matmul["failures"]) + len(attention["failures"])
                           + len(retrieval["failures"]) + len(csr["failures"])
                           + len(activation["failures"]) + len(nm_layer["failures"]))
    summary["wall_s"] = time.perf_counter() - start
    summary["ok"] = summary["failures"] == 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    print(f"device_check: wrote {out}; {'OK' if summary['ok'] else 'FAILED'} "
          f"in {summary['wall_s']:.0f} s")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

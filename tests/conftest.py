"""Test configuration: float64 stays off by default; tests that need it enable it locally.

Hypothesis runs under a bounded, derandomised profile ("ci") so the suite is reproducible and its
time is bounded; ``HYPOTHESIS_PROFILE=dev`` explores more examples locally.
"""

import os

# One BLAS thread per process: pytest-xdist already runs one worker per core, and OpenBLAS's own
# threads on top of that oversubscribe the cores (a 384x384 Cholesky took 0.6 s instead of 0.6 ms
# on the 2-core CI machine). Set before numpy/scipy load; the workers and notebook kernels inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite is dominated by XLA compiles of small programs, not by running them (3/4 of its CPU
# time went to backend compiles): LLVM's optimisation passes and the fusion emitters cost several
# times what they buy at test sizes (a compile-heavy sample of the suite: 144 s -> 60 s CPU). The
# workers, the notebook kernels and the subprocess checks inherit the flags (a subprocess that sets
# its own XLA_FLAGS appends to them). XLA aborts on a flag it does not know, so the set is probed
# once in a subprocess and falls back to the long-standing pair.
# LLVM's parallel codegen splits each module into parts compiled on a thread pool: for the suite's
# small programs the split costs more than it saves (a 50-program sample: backend compile 3.0 -> 2.4 s
# CPU with one part).
_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
                 "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")


def _fast_compile_flags():
    import subprocess
    import sys

    flags = " ".join(_FAST_COMPILE)
    probe = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"],
        env={**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()},
        capture_output=True, timeout=300)
    return flags if probe.returncode == 0 else _FAST_COMPILE[0]


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _fast_compile_flags()).strip()

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Shared fixtures (one definition each; test modules use them by argument name).
import _problems  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test with ``jax_enable_x64`` on (float64 references), restored afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def dictionary_problem():
    """``make(seed, n_features=30, n_atoms=50, n_signals=6, dtype=float64) -> (d, y)``
    (`_problems.dictionary_problem`)."""
    return _problems.dictionary_problem


@pytest.fixture
def sparse_regression():
    """``make(seed, n, d, k=5, noise=0.05) -> (x, y, w)`` (`_problems.sparse_regression`)."""
    return _problems.sparse_regression


_TESTS = __import__("pathlib").Path(__file__).resolve().parent


def _run_script(*names, devices=8, timeout=600):
    """Run the scripts ``tests/<name>`` one after the other in one fresh CPU process with
    ``devices`` host devices (the rest of the suite keeps one device; one process pays the jax
    import once for several checks) and assert it exits cleanly with each script's ``OK`` printed
    (its stdout and stderr tails are the failure message; a failing script is named there)."""
    import subprocess
    import sys

    from sparsejax.testing.multiprocess import _ROOT, _xla_flags

    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=_xla_flags(os.environ.get("XLA_FLAGS", ""), devices),
               PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    runner = ("import runpy, sys\n"
              "for path in sys.argv[1:]:\n"
              "    print('== ' + path, flush=True)\n"
              "    runpy.run_path(path, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", runner, *(str(_TESTS / n) for n in names)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    parts = proc.stdout.split("== ")[1:]
    assert len(parts) == len(names), proc.stdout[-2000:]
    for name, part in zip(names, parts, strict=True):  # each script ran to its own "OK"
        assert part.startswith(str(_TESTS / name)) and part.strip().endswith("OK"), part[-2000:]


@pytest.fixture
def run_script():
    """``run(*names, devices=8, timeout=600)``: run the check scripts ``tests/<name>`` in one
    subprocess with ``devices`` host CPU devices; each must print ``OK`` last. Multi-process
    checks use `sparsejax.testing.run_processes` instead."""
    return _run_script


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (notebooks, end-to-end runs, process groups: 10-40 s each) run first.

    pytest-xdist's work stealing hands each worker a contiguous share of this order and moves
    pending tests from the busier worker when the other runs dry; with the long tests at the front
    the run ends on short tests, so neither worker idles behind another's 30-second notebook.
    The sort is stable: the order within each group is unchanged."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

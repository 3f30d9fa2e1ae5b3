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

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

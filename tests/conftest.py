"""Test configuration: float64 stays off by default; tests that need it enable it locally.

Hypothesis runs under a bounded, derandomised profile ("ci") so the suite is reproducible and its
time is bounded; ``HYPOTHESIS_PROFILE=dev`` explores more examples locally.
"""

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

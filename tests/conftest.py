"""Test configuration: float64 stays off by default; tests that need it enable it locally."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

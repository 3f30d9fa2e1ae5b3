"""Sharded sparse training on 8 host CPU devices, in a subprocess so the rest of the suite keeps its
single device (the check itself is tests/_training_sharded_check.py)."""

import pytest


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(run_script):
    run_script("_training_sharded_check.py", devices=8)

"""Expert parallelism on 8 host devices, in a subprocess so the rest of the suite keeps 1
(the check itself is tests/_moe_parallel_check.py)."""

import pytest


@pytest.mark.slow
def test_expert_parallel_equals_single_device(run_script):
    run_script("_moe_parallel_check.py", devices=8)

"""Sharded inverted-index search on 8 host CPU devices equals the one-device search, in a
subprocess so the rest of the suite keeps its single device (the check itself is
tests/_retrieval_sharded_check.py)."""

import pytest


@pytest.mark.slow
def test_sharded_search_equals_single_device_search(run_script):
    run_script("_retrieval_sharded_check.py", devices=8)

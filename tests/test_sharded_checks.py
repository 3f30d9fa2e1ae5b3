"""Sharded layers on 8 host CPU devices equal their single-device results, in one subprocess so the
rest of the suite keeps one device (one interpreter runs the three check scripts, paying the jax
import once):

- tests/_moe_parallel_check.py: expert parallelism (forward and VJP) equals each token group
  routed on one device;
- tests/_training_sharded_check.py: sharded sparse training (masks keep their parameter's
  sharding, global top-k / ERK allocation across shards) equals the single-device step;
- tests/_retrieval_sharded_check.py: the inverted index split over 8 devices gives the
  one-device search's scores and ids (and a scipy brute force's ids).
"""

import pytest


@pytest.mark.slow
def test_sharded_moe_training_and_retrieval_equal_single_device(run_script):
    run_script("_moe_parallel_check.py", "_training_sharded_check.py",
               "_retrieval_sharded_check.py", devices=8)

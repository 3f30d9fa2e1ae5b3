"""Every transform under jax.distributed with its inputs sharded across 2 (and 4) local processes
equals the one-process result (`sparsejax.testing.run_processes`; the checks are in
tests/_multihost_checks.py). Each process group is launched once per module."""

import _multihost_checks as C
import jax
import numpy as np
import pytest

from sparsejax.testing import run_processes

TWO = ["masks", "train", "ssvi", "oneshot", "attention", "moe"]


@pytest.fixture(scope="module")
def two():
    return run_processes(C.sharded, 2, args=(TWO,), timeout=300)


@pytest.fixture(scope="module")
def expected():
    return C.reference(TWO, devices=4)


def _same(a, b, exact):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("check", TWO)
def test_two_processes_equal_one(two, expected, check):
    assert len(two) == 2
    for result in two:  # every process gathers the same global values
        got, want = result[check], expected[check]
        if check == "masks":
            assert set(got) == set(C.MASK_CASES)
            _same(got, want, exact=True)
        elif check in ("train", "ssvi", "oneshot"):
            _same({k: v for k, v in got.items()}, want, exact=False)
            masks = [v["masks"] for v in got.values()] if check != "ssvi" else [got["masks"]]
            wmask = [v["masks"] for v in want.values()] if check != "ssvi" else [want["masks"]]
            _same(masks, wmask, exact=True)
        else:
            _same(got, want, exact=False)

"""Testing utilities: `run_processes` runs a function in N local JAX processes joined by
``jax.distributed`` (the way to test multi-host code on one machine), with `shard` and `gather`
to move host values onto and off a global mesh."""

from sparsejax.testing.multiprocess import ProcessGroupError, gather, run_processes, shard

__all__ = ["ProcessGroupError", "gather", "run_processes", "shard"]

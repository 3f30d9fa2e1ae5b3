"""Test multi-host code on one machine: N local JAX processes on a global mesh.

A TPU pod slice or a GPU cluster runs one JAX process per host; arrays are sharded over devices
that no single process can address. `run_processes` reproduces that on one machine with JAX's own
multi-process runtime: it starts ``num_processes`` Python processes on CPU, each with
``devices_per_process`` host devices, joins them with ``jax.distributed.initialize`` through a
coordinator on ``localhost``, calls ``fn(*args)`` in every process and returns what each returned.
Code that breaks only across processes (a host-side ``np.asarray`` of a global array, a Python
branch on a value that differs per process, a collective issued by one process only) fails here.

Inside ``fn``, ``jax.devices()`` lists every device of every process (a global mesh is
``jax.make_mesh(..., devices=jax.devices())``); `shard` places a host value that every process
holds onto a global sharding, `gather` brings a global array back to every process as NumPy.

Example (``fn`` must live in an importable module or a file, not in ``__main__``)::

    # checks.py
    def total(n):
        mesh = jax.make_mesh((jax.device_count(),), ("x",))
        x = shard(np.arange(n, dtype=np.float32), NamedSharding(mesh, P("x")))
        return gather(jax.jit(jnp.cumsum)(x))

    # test_checks.py
    results = run_processes(checks.total, 2, args=(16,))  # one result per process
"""

from __future__ import annotations

import os
import pathlib
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sparsejax._checks import check_callable, check_positive_float, check_positive_int, must_be

__all__ = ["ProcessGroupError", "gather", "run_processes", "shard"]

_ROOT = pathlib.Path(__file__).resolve().parents[2]  # the directory holding `sparsejax`


class ProcessGroupError(RuntimeError):
    """A process of a `run_processes` group failed or the group ran out of time.

    Attributes:
        process_id: the process that failed first (``None`` on a timeout).
        stderrs: the tail of every process's stderr, by process id.
    """

    def __init__(self, message: str, process_id: int | None, stderrs: list[str]):
        super().__init__(message)
        self.process_id = process_id
        self.stderrs = stderrs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _xla_flags(flags: str, devices: int) -> str:
    kept = [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def _locate(fn: Callable) -> tuple[str, str, str | None]:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        raise ValueError(must_be("fn", "a function defined at the top level of an importable "
                                 "module or file (the processes import it by name)",
                                 f"{module}.{qualname}", raw=True))
    file = getattr(sys.modules.get(module), "__file__", None)
    return module, qualname, file


def _tail(path: pathlib.Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def run_processes(
    fn: Callable[..., Any],
    num_processes: int,
    *,
    devices_per_process: int = 2,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` in ``num_processes`` local JAX processes joined into one runtime.

    Each process is a fresh Python interpreter on the CPU platform with ``devices_per_process``
    host devices; process ``i`` calls ``jax.distributed.initialize(coordinator_address=
    "localhost:PORT", num_processes=num_processes, process_id=i)`` (``PORT`` a free port) before
    ``fn``, so ``jax.devices()`` has ``num_processes * devices_per_process`` devices. ``args``,
    ``kwargs`` and the results travel by pickle; JAX arrays in a result are converted to NumPy
    (they must be fully addressable: `gather` a global array first).

    Args:
        fn: a top-level function of an importable module or of a ``.py`` file.
        num_processes: number of processes (>= 1).
        devices_per_process: host devices per process (>= 1).
        args: positional arguments of ``fn`` (picklable).
        kwargs: keyword arguments of ``fn`` (picklable).
        timeout: seconds for the whole group; on expiry every process is killed.
        env: extra environment variables for the processes.

    Returns:
        ``fn``'s return value of each process, indexed by process id.

    Raises:
        ProcessGroupError: a process exited with an error (the first failure's stderr is in the
            message; the other processes are killed) or the group ran past ``timeout``.
        ValueError: ``fn`` is not importable by name (a lambda, a nested or ``__main__``
            function).
    """
    check_callable(fn, "fn")
    num_processes = check_positive_int(num_processes, "num_processes")
    devices_per_process = check_positive_int(devices_per_process, "devices_per_process")
    timeout = check_positive_float(timeout, "timeout")
    module, qualname, file = _locate(fn)
    with tempfile.TemporaryDirectory(prefix="sparsejax-mp-") as tmp:
        tmpdir = pathlib.Path(tmp)
        spec = tmpdir / "spec.pkl"
        spec.write_bytes(pickle.dumps((module, qualname, file, tuple(args), dict(kwargs or {}))))
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["JAX_PLATFORMS"] = "cpu"
        child_env["XLA_FLAGS"] = _xla_flags(child_env.get("XLA_FLAGS", ""), devices_per_process)
        paths = [str(_ROOT)] + ([str(pathlib.Path(file).parent)] if file else [])
        child_env["PYTHONPATH"] = os.pathsep.join(
            paths + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        port = _free_port()
        procs, logs = [], []
        try:
            for i in range(num_processes):
                log = tmpdir / f"stderr.{i}"
                logs.append(log)
                with open(log, "w") as err, open(tmpdir / f"stdout.{i}", "w") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "sparsejax.testing._worker", str(spec),
                         str(tmpdir / f"out.{i}"), f"localhost:{port}", str(num_processes),
                         str(i)],
                        env=child_env, stdout=out, stderr=err, cwd=str(_ROOT)))
            deadline = time.monotonic() + timeout
            while True:
                codes = [p.poll() for p in procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    i = failed[0]
                    _kill(procs)
                    stderrs = [_tail(p) for p in logs]
                    raise ProcessGroupError(
                        f"process {i} of {num_processes} exited with code {codes[i]}; its "
                        f"stderr:\n{stderrs[i]}", i, stderrs)
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    _kill(procs)
                    stderrs = [_tail(p) for p in logs]
                    raise ProcessGroupError(
                        f"{num_processes} processes still running after {timeout:g} s (killed); "
                        f"process 0's stderr:\n{stderrs[0]}", None, stderrs)
                time.sleep(0.05)
        finally:
            _kill(procs)
        return [pickle.loads((tmpdir / f"out.{i}").read_bytes()) for i in range(num_processes)]


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


def shard(value: Any, sharding: Any) -> Any:
    """A global ``jax.Array`` from a host value that every process holds in full.

    Each process materialises only the shards of its own devices (no process ever holds the
    global array on device). Works in one process too.

    Args:
        value: array-like, identical in every process (e.g. drawn from the same seed).
        sharding: a ``jax.sharding.Sharding`` over the global devices.

    Returns:
        a ``jax.Array`` of ``value``'s shape and dtype with that sharding.
    """
    import jax

    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(tree: Any) -> Any:
    """Every ``jax.Array`` leaf of ``tree`` as a NumPy array holding its *global* value.

    A collective: every process must call it with the same tree. The arrays of a
    ``NamedSharding`` are replicated by one compiled program for the whole tree; arrays a process
    already addresses in full are converted without communication.
    """
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    leaves, treedef = jax.tree.flatten(tree)
    glob = [i for i, x in enumerate(leaves)
            if isinstance(x, jax.Array) and not x.is_fully_addressable]
    named = [i for i in glob if isinstance(leaves[i].sharding, NamedSharding)]
    if named:
        outs = tuple(NamedSharding(leaves[i].sharding.mesh, PartitionSpec()) for i in named)
        replicated = jax.jit(lambda *xs: xs, out_shardings=outs)(*(leaves[i] for i in named))
        for i, x in zip(named, replicated):
            leaves[i] = np.asarray(x.addressable_data(0))
    for i in glob:
        if i not in named:
            leaves[i] = np.asarray(multihost_utils.process_allgather(leaves[i], tiled=True))
    return jax.tree.unflatten(treedef, [np.asarray(x) if isinstance(x, jax.Array) else x
                                        for x in leaves])


def _to_host(tree: Any) -> Any:
    import jax

    def one(x):
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                raise ValueError(must_be("fn's result", "host values or fully addressable "
                                         "arrays (call sparsejax.testing.gather on a global "
                                         "array first)", f"a global array of shape {x.shape}",
                                         raw=True))
            return np.asarray(x)
        return x

    return jax.tree.map(one, tree)

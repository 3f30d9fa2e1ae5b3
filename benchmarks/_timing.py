"""The benchmarks' one timing toolkit: median wall time of a call, interleaved (paired) timing of
several implementations, and a library module as of an earlier git revision (old and new side by
side in one run).

Every timed call blocks until its result is ready (`jax.block_until_ready`); a first untimed call
compiles and warms up. Machines are noisy: implementations compared with each other are timed in
interleaved rounds, so load drift hits all alike, and compared by medians.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str):
    """The module ``path`` (relative to the repository root) as of git revision ``rev``.

    Its own imports resolve against the installed tree, so only this one file is the old one.
    """
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    name = pathlib.Path(path).stem + "_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    file = pathlib.Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interleaved(runs: dict, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """``{name: (wall seconds, process CPU seconds)}``, one entry per call, of ``repeats`` rounds
    that call every ``runs[name]()`` once in turn, so that load drift on a shared machine hits every
    implementation alike. The callables must block until their result is ready."""
    times = {name: ([], []) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    return times


def times(fn, *args, repeats: int, warmup: bool = True) -> list[float]:
    """Wall seconds of each of ``repeats`` calls ``fn(*args)`` (after one untimed warm-up call
    unless ``warmup=False``)."""
    if warmup:
        jax.block_until_ready(fn(*args))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn, *args, repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls ``fn(*args)`` (`times`)."""
    return float(np.median(times(fn, *args, repeats=repeats, warmup=warmup)))


def paired(a_fn, a_args: tuple, b_fn, b_args: tuple, repeats: int) -> tuple[float, float, float]:
    """``a_fn(*a_args)`` and ``b_fn(*b_args)`` timed in interleaved rounds (`interleaved`, after one
    warm-up call each): ``(median a seconds, median b seconds, median of the per-round b / a)``."""
    jax.block_until_ready(a_fn(*a_args))
    jax.block_until_ready(b_fn(*b_args))
    t = interleaved({"a": lambda: jax.block_until_ready(a_fn(*a_args)),
                     "b": lambda: jax.block_until_ready(b_fn(*b_args))}, repeats)
    ta, tb = np.asarray(t["a"][0]), np.asarray(t["b"][0])
    return float(np.median(ta)), float(np.median(tb)), float(np.median(tb / ta))

"""Timing old and new side by side: a library module as of an earlier git revision, and
interleaved wall / process-CPU timing of several implementations."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import tempfile
import time

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

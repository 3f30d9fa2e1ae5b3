"""Every notebook under notebooks/ runs top to bottom (on CPU, in well under two minutes each)."""

import os
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_cell_installs_only_when_missing(path, monkeypatch):
    """The Colab setup cell is first, and does nothing where sparsejax is importable."""
    import subprocess

    nbformat = pytest.importorskip("nbformat")
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "code" and first.source.startswith("# Setup (Colab)")
    assert 'find_spec("sparsejax") is None' in first.source and "sparsejax[" in first.source
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    exec(compile(first.source, str(path), "exec"), {})
    assert calls == []
    # and where it is missing, the cell would pip-install sparsejax with its extras
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    exec(compile(first.source, str(path), "exec"), {})
    assert len(calls) == 1 and "pip" in calls[0][0] and calls[0][0][-1].startswith("sparsejax[")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the kernel imports this checkout's sparsejax even where the package is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    assert time.perf_counter() - t0 < 240

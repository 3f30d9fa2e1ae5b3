"""Every notebook under notebooks/ runs top to bottom (on CPU, in well under two minutes each)."""

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
    """Every code cell runs, top to bottom, in one fresh namespace of this worker process.

    The docs build (`mkdocs build`, mkdocs-jupyter) executes the same notebooks in a Jupyter
    kernel; here they run in-process, which saves a kernel start and the jax/sparsejax imports per
    notebook (about 4 s of CPU each) and lets the worker reuse the library's compiled programs.
    The notebooks use no IPython magics (checked), figures go to the Agg backend and ``plt.show``
    closes them."""
    nbformat = pytest.importorskip("nbformat")
    matplotlib = pytest.importorskip("matplotlib")
    import warnings

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: plt.close("all"))
    monkeypatch.chdir(tmp_path)
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    magics = [line for c in cells for line in c.source.splitlines()
              if line.lstrip().startswith(("%", "!"))]
    assert not magics, f"{path.name}: IPython magics do not run outside a kernel: {magics}"
    namespace = {"__name__": "__main__"}
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # a notebook's warning filters stay in the notebook
        for i, cell in enumerate(cells):
            exec(compile(cell.source, f"{path.name} (code cell {i})", "exec"), namespace)
    plt.close("all")
    assert time.perf_counter() - t0 < 240

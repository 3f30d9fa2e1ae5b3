"""A library module as of an earlier git revision, for timing old and new side by side."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import tempfile

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

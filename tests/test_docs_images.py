"""Every image the docs reference exists; every committed figure is used and drawn by a script.

`mkdocs build --strict` checks the links between pages; it does not fail on a missing image, so
this does (in well under a second: it only reads files).
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIGURES = DOCS / "figures"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
# markdown ![alt](src "title") and html <img src="...">
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*(?:<([^>]+)>|([^)\s]+))(?:\s+\"[^\"]*\")?\s*\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
MAX_BYTES = 80 * 1024


def _images(page: pathlib.Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [a or b for a, b in _MD_IMAGE.findall(text)] + _HTML_IMAGE.findall(text)


def _local(src: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", src, re.IGNORECASE) and not src.startswith("#")


def _functions(script: str, prefix: str) -> set[str]:
    """Names (without ``prefix``) of the top-level functions ``prefix*`` of scripts/``script``."""
    tree = ast.parse((ROOT / "scripts" / script).read_text(encoding="utf-8"))
    return {node.name[len(prefix):] for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith(prefix)}


def test_image_regex_finds_both_forms():
    text = '![a](figures/x.png) and ![b](<figures/y z.png> "t") <img alt="c" src="figures/w.png">'
    assert [a or b for a, b in _MD_IMAGE.findall(text)] + _HTML_IMAGE.findall(text) == [
        "figures/x.png", "figures/y z.png", "figures/w.png"]


def test_every_referenced_image_exists():
    missing = []
    for page in PAGES:
        for src in _images(page):
            if not _local(src):
                continue
            path = (page.parent / src.split("#")[0].split("?")[0]).resolve()
            if not path.is_file():
                missing.append(f"{page.relative_to(ROOT)}: {src}")
    assert not missing, "images referenced but missing:\n" + "\n".join(missing)


def test_every_figure_is_referenced_small_and_drawn_by_the_script():
    referenced = {(page.parent / src).resolve() for page in PAGES for src in _images(page)
                  if _local(src)}
    drawn = _functions("figures.py", "fig_") | {
        f"bench_{name}" for name in _functions("bench_charts.py", "draw_")
        if (FIGURES / "bench" / f"{name}.json").is_file()}
    figures = sorted(FIGURES.glob("*.png"))
    assert figures, "docs/figures/ holds no figure"
    for png in figures:
        assert png.resolve() in referenced, f"{png.relative_to(ROOT)} is not used by any page"
        assert png.stem in drawn, (f"{png.name}: drawn by neither fig_{png.stem} in "
                                   "scripts/figures.py nor bench_charts.py from its JSON")
        assert png.stat().st_size <= MAX_BYTES, f"{png.name}: {png.stat().st_size} bytes"

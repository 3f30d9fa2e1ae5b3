"""mkdocs hooks (``hooks:`` in mkdocs.yml).

The notebooks link to the docs pages by their repository paths (``../docs/training.md``), which
work on GitHub and in Jupyter; in the site a notebook is rendered at ``notebooks/<name>/``, so
those links are rewritten to the pages' site URLs (``../../training/``).
"""

from __future__ import annotations

import re

_DOCS_LINK = re.compile(r'href="\.\./docs/([\w./-]+?)\.md(#[^"]*)?"')


def on_page_content(html: str, page, config, files) -> str:
    """Rewrite ``../docs/<page>.md`` links on the rendered notebook pages."""
    del config, files
    if not page.file.src_uri.startswith("notebooks/"):
        return html
    dirs = page.file.use_directory_urls  # notebooks/<name>/index.html or notebooks/<name>.html
    up = "../../" if dirs else "../"

    def target(m: re.Match) -> str:
        name, anchor = m.group(1), m.group(2) or ""
        url = "" if name == "index" else (f"{name}/" if dirs else f"{name}.html")
        return f'href="{up}{url}{anchor}"'

    return _DOCS_LINK.sub(target, html)

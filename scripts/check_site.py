"""Open a built docs site in headless Chromium and check that every page shows its images.

    mkdocs build --strict --site-dir /tmp/site
    python scripts/check_site.py /tmp/site [--chromium /usr/bin/chromium] [--shots DIR]

Serves the site on a local port, visits every page, and fails when a page has an image that did
not load (``naturalWidth == 0``), a failed same-site request, or a page error; rendered notebook
pages must show at least one image (their plots). Needs ``playwright`` (``pip install playwright``)
and a Chromium (``playwright install chromium`` or the system's, given by ``--chromium``). Not a
project dependency: a manual check of the site, reported in the docs' change notes.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import pathlib
import sys
import threading


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        del format, args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path)
    parser.add_argument("--chromium", default=None, help="path of a Chromium executable")
    parser.add_argument("--shots", type=pathlib.Path, default=None,
                        help="write a full-page screenshot of each page with figures here")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    pages = sorted(p for p in args.site.rglob("index.html") if "assets" not in p.parts)
    handler = functools.partial(_QuietHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        failed: list[str] = []
        errors: list[str] = []
        # ERR_ABORTED: a request cut off by the next navigation (favicon, search worker), not a miss
        page.on("requestfailed", lambda r: failed.append(r.url)
                if r.url.startswith(base) and "ERR_ABORTED" not in (r.failure or "") else None)
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                if r.url.startswith(base) and r.status >= 400 else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for html in pages:
            rel = html.parent.relative_to(args.site).as_posix()
            url = base + ("" if rel == "." else rel + "/")
            failed.clear()
            errors.clear()
            page.goto(url, wait_until="load")
            imgs = page.eval_on_selector_all(
                "article img", "els => els.map(e => [e.getAttribute('src').slice(0, 60), "
                "e.complete && e.naturalWidth > 0])")
            broken = [src for src, ok in imgs if not ok]
            is_notebook = rel.startswith("notebooks/")
            status = f"{len(imgs)} images" + (f", {len(broken)} BROKEN" if broken else "")
            print(f"{rel or '/'}: {status}")
            if broken:
                problems.append(f"{rel}: images not shown: {broken}")
            if is_notebook and not imgs:
                problems.append(f"{rel}: a rendered notebook with no plot")
            if failed:
                problems.append(f"{rel}: failed requests {failed[:5]}")
            if errors:
                problems.append(f"{rel}: page errors {errors[:3]}")
            if args.shots and imgs:
                args.shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.shots / f"{rel.replace('/', '_') or 'index'}.png"),
                                full_page=True)
        browser.close()
    server.shutdown()
    print(f"{len(pages)} pages checked; {len(problems)} problems")
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Real English text with no download: first sentences of the Python standard library's docstrings."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator

import numpy as np

__all__ = ["STDLIB_MODULES", "docstring_sentences", "split_sentences", "stdlib_docstrings"]

STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "email", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "mailbox",
    "math", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "poplib", "pprint", "queue", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)


def stdlib_docstrings() -> Iterator[str]:
    """The non-empty docstrings of `STDLIB_MODULES` and of their public members, in module order
    then member name order (duplicates included; modules that fail to import are skipped).

    Yields:
        each docstring as found (``obj.__doc__``, not cleaned).
    """
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - optional stdlib parts (e.g. sqlite3)
            continue
        objects = [module] + [getattr(module, a, None) for a in sorted(dir(module))
                              if not a.startswith("_")]
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                yield doc


def _first_sentence(doc: str) -> str:
    para = re.split(r"\n\s*\n", inspect.cleandoc(doc).strip())[0]
    text = " ".join(para.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def docstring_sentences(min_chars: int = 40, max_chars: int = 200) -> list[str]:
    """Sorted unique first sentences of the docstrings of `STDLIB_MODULES` and their public members.

    Only sentences of ``min_chars`` to ``max_chars`` characters that start with a letter and contain
    no ``>>>`` are kept. The exact set depends on the Python version (docstrings change).
    """
    found = set()
    for doc in stdlib_docstrings():
        sentence = _first_sentence(doc)
        if (min_chars <= len(sentence) <= max_chars and sentence[0].isalpha()
                and ">>>" not in sentence):
            found.add(sentence)
    return sorted(found)


def split_sentences(sentences: list[str], held_out: float = 0.25,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic shuffle and split into ``(calibration, held_out)`` parts."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    cut = int(round(len(sentences) * (1.0 - held_out)))
    return [sentences[i] for i in order[:cut]], [sentences[i] for i in order[cut:]]

"""A retrieval task from data no one downloads: Python standard-library docstrings.

Query = a docstring's first sentence, relevant document = the rest of that docstring (the same
modules as `sparsejax.models.docstring_sentences`).
"""

from __future__ import annotations

import inspect
import re

from sparsejax.models.corpus import stdlib_docstrings

__all__ = ["docstring_pairs"]


def docstring_pairs(min_query_chars: int = 25, min_doc_chars: int = 80,
                    max_doc_chars: int = 600) -> list[tuple[str, str]]:
    """Sorted unique ``(first sentence, rest of the docstring)`` pairs of the standard library.

    The rest is whitespace-normalised and cut to ``max_doc_chars`` characters; pairs with a shorter
    query or document, a ``>>>`` example in the query, or a document seen before are dropped. The
    exact set depends on the Python version (docstrings change).
    """
    pairs, seen_docs = {}, set()
    for doc in stdlib_docstrings():
        text = " ".join(inspect.cleandoc(doc).split())
        match = re.match(r"(.+?[.!?])\s+(.*)$", text)
        if not match:
            continue
        query, rest = match.group(1), match.group(2)[:max_doc_chars]
        if (len(query) < min_query_chars or len(rest) < min_doc_chars or ">>>" in query
                or not query[0].isalpha() or rest in seen_docs or query in pairs):
            continue
        seen_docs.add(rest)
        pairs[query] = rest
    return sorted(pairs.items())

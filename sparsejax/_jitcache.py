"""Compiled programs reused across calls: one ``lru_cache``-d factory per kind of step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["cached_step"]


def cached_step(factory: Callable, *key: Any) -> Callable:
    """``factory(*key)`` from its ``lru_cache``, or built afresh where ``key`` is unhashable (a
    non-array leaf such as a list in the params' static part: compiled without the cache)."""
    try:
        return factory(*key)
    except TypeError:
        return factory.__wrapped__(*key)

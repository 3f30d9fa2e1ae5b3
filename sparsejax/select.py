"""Leaf selectors: which leaves of a pytree a transform touches.

A ``where`` selector is ``None`` (float arrays with ``ndim >= 2``), a callable
``(path, leaf) -> bool``, or a glob string / sequence of globs matched with ``fnmatch`` against the
slash path (``"dense_0/kernel"``) and against ``jax.tree_util.keystr(path)``. Only float arrays are
ever selected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr

__all__ = ["Where", "path_str", "select"]

Where = Callable[[Any, Any], bool] | str | Sequence[str] | None


def _is_none(x: Any) -> bool:
    return x is None


def _is_float_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)


def path_str(path: tuple) -> str:
    """Slash-joined key path: ``(DictKey('dense_0'), DictKey('kernel'))`` -> ``"dense_0/kernel"``.

    The ``.value`` attribute of Flax NNX variables is left out, so NNX state paths read
    ``"linear/kernel"`` like their Linen/dict counterparts.
    """
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name == "value":
            continue  # Flax NNX Variable payloads: "l1/kernel", not "l1/kernel/value"
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def select(where: Where = None) -> Callable[[tuple, Any], bool]:
    """Turn a ``where`` selector (see the module docstring) into a ``(path, leaf) -> bool``."""
    if where is None:
        return lambda path, leaf: _is_float_array(leaf) and leaf.ndim >= 2
    if callable(where):
        return lambda path, leaf: _is_float_array(leaf) and bool(where(path, leaf))
    patterns = [where] if isinstance(where, str) else (
        list(where) if isinstance(where, list | tuple) else [])
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"where must be None, a callable (path, leaf) -> bool, a glob string or a "
                        f"sequence of glob strings, got {where!r}")

    def by_glob(path, leaf):
        if not _is_float_array(leaf):
            return False
        names = (path_str(path), keystr(path))
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    return by_glob

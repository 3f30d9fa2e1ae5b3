"""Leaf selectors: which leaves of a pytree a transform touches.

A ``where`` selector is one of:

* ``None`` (the default): float arrays with ``ndim >= 2`` (kernels, not biases or norms), **except
  embedding tables**: leaves named ``embedding`` (Flax ``nnx.Embed`` / ``linen.Embed``) or
  ``embeddings`` (Haiku ``Embed``), and the ``weight`` of every Equinox ``nn.Embedding`` in the tree
  (found when `select` is given the tree). Pruning an embedding table removes whole token
  vectors' entries, which is rarely meant; select them explicitly with a glob to prune them;
* a callable ``(path, leaf) -> bool`` with ``path`` a ``jax.tree_util`` key path;
* a glob string (or a sequence of globs, any of which may match) tested with ``fnmatch`` against
  the leaf's slash path (``"dense_0/kernel"``, see `path_str`) and against
  ``jax.tree_util.keystr(path)`` (``"['dense_0']['kernel']"``).

``exclude`` (a glob or sequence of globs, same matching) removes leaves from any selector. Only
float arrays are ever selected (integer counters and PRNG keys never are).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr

from sparsejax._checks import must_be

__all__ = ["EMBEDDING_NAMES", "Where", "matches", "path_str", "select", "unwrap_variables"]

Where = Callable[[Any, Any], bool] | str | Sequence[str] | None

EMBEDDING_NAMES = ("embedding", "embeddings")
"""Leaf names the default selector treats as embedding tables (Flax, Haiku)."""


def _is_float_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)


def _is_variable(x: Any) -> bool:
    return (x is not None and not isinstance(x, dict | list | tuple | jax.Array | np.ndarray)
            and hasattr(x, "get_value"))


def unwrap_variables(tree: Any) -> Any:
    """``tree`` with every Flax NNX variable replaced by its value (``nnx.as_pure``'s result).

    So ``nnx.state(model)`` and ``nnx.as_pure(nnx.state(model))`` (and mask trees made from
    either) give the same paths and structure; any other tree is returned unchanged. Needs no
    Flax import (variables are recognised by their ``get_value`` method).
    """
    if not any(_is_variable(x) for x in jax.tree.leaves(tree, is_leaf=_is_variable)):
        return tree
    return jax.tree.map(lambda x: x.get_value() if _is_variable(x) else x, tree,
                        is_leaf=_is_variable)


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


def _globs(value: Any, name: str) -> list[str]:
    patterns = [value] if isinstance(value, str) else (
        list(value) if isinstance(value, list | tuple) else [])
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(must_be(name, "None, a callable (path, leaf) -> bool, a glob string or "
                                "a sequence of glob strings", value))
    return patterns


def matches(path: tuple, globs: str | Sequence[str]) -> bool:
    """Whether a key path matches a glob (or any of several) as its slash path or its ``keystr``."""
    globs = [globs] if isinstance(globs, str) else globs
    names = (path_str(path), keystr(path))
    return any(fnmatch.fnmatchcase(n, g) for g in globs for n in names)


def _equinox_embedding_paths(tree: Any) -> set[str]:
    """Slash paths of the ``weight`` of every Equinox ``nn.Embedding`` in ``tree``."""
    eqx = sys.modules.get("equinox")
    if eqx is None or tree is None:
        return set()
    is_emb = lambda x: isinstance(x, eqx.nn.Embedding)  # noqa: E731
    found = set()
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_emb)[0]:
        if is_emb(node):
            prefix = path_str(path)
            found.add(f"{prefix}/weight" if prefix else "weight")
    return found


def _is_embedding(path: tuple) -> bool:
    name = path_str(path).rsplit("/", 1)[-1]
    return name in EMBEDDING_NAMES


def select(where: Where = None, *, exclude: str | Sequence[str] | None = None,
           tree: Any = None) -> Callable[[tuple, Any], bool]:
    """Turn a ``where`` selector (see the module docstring) into a ``(path, leaf) -> bool``.

    Args:
        where: the selector; ``None`` selects float kernels (``ndim >= 2``) except embeddings.
        exclude: glob(s) of leaves never selected.
        tree: the pytree the selector will be applied to; lets the default selector find Equinox
            ``nn.Embedding`` weights (their path alone, ``".../weight"``, does not say so).

    Returns:
        a predicate ``(path, leaf) -> bool``, ``False`` for every non-float leaf.
    """
    excluded = _globs(exclude, "exclude") if exclude is not None else []
    if where is None:
        eqx_embeddings = _equinox_embedding_paths(tree)

        def chosen(path, leaf):
            return (_is_float_array(leaf) and leaf.ndim >= 2 and not _is_embedding(path)
                    and path_str(path) not in eqx_embeddings)
    elif callable(where):
        def chosen(path, leaf):
            return _is_float_array(leaf) and bool(where(path, leaf))
    else:
        patterns = _globs(where, "where")

        def chosen(path, leaf):
            return _is_float_array(leaf) and matches(path, patterns)

    if not excluded:
        return chosen
    return lambda path, leaf: chosen(path, leaf) and not matches(path, excluded)

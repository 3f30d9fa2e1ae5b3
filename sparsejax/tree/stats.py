"""Mask statistics: the sparsity of a params or mask tree, and the `summary` table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import _is_none, check_mask_tree, check_same_structure, must_be
from sparsejax._table import render_table
from sparsejax.select import Where, path_str, select, unwrap_variables
from sparsejax.tree.layout import is_array, is_bool, is_float, leaf_nbytes, mask_pairs

__all__ = ["Sparsity", "sparsity", "summary"]

PyTree = Any


class Sparsity(NamedTuple):
    """Result of `sparsity`.

    Attributes:
        overall: fraction of zero (dropped) entries over the *selected* leaves: the masked leaves
            of a mask tree, or the leaves ``where`` selects in a params tree (by default the float
            kernels, not biases, norms, embeddings, counters or RNG keys). float32 scalar.
        per_leaf: flat ``{path: sparsity}`` for the selected leaves (paths as `path_str`).
        whole_model: fraction of zero (dropped) entries over *all* float leaves of the params,
            biases and embeddings included; ``None`` for a mask tree given alone (it does not know
            the sizes of the leaves it leaves dense: pass ``sparsity(params, masks)``).
    """

    overall: jax.Array
    per_leaf: dict[str, jax.Array]
    whole_model: jax.Array | None


def _ratio(zeros: list, sizes: list) -> jax.Array:
    total = sum(sizes)
    if not total:
        return jnp.float32(0)
    return sum((z.astype(jnp.float32) for z in zeros), jnp.float32(0)) / jnp.float32(total)


def sparsity(tree: PyTree, masks: PyTree | None = None, *, where: Where = None) -> Sparsity:
    """Fraction of zero entries: over the selected leaves, per leaf, and over the whole model.

    Three ways to call it, one meaning of ``overall`` (the selected float leaves):

    * ``sparsity(masks)`` with a mask tree: counts ``False`` (dropped) over the masked leaves;
    * ``sparsity(params, where=...)``: counts exact zeros over the leaves ``where`` selects
      (default: float kernels, as `compute_masks`);
    * ``sparsity(params, masks)``: counts dropped entries over the masked leaves, and fills
      ``whole_model`` with the dropped fraction of all float parameters.

    Non-float leaves (integer counters, Flax NNX RNG keys) are never counted. Works under ``jit``.

    Returns:
        `Sparsity` ``(overall, per_leaf, whole_model)``.

    Raises:
        ValueError: ``masks`` does not mirror ``tree``; ``where`` given with ``masks`` (it would
            be ignored) or selecting no leaf.
        TypeError: a mask leaf is not a bool array.
    """
    tree = unwrap_variables(tree)
    masks = unwrap_variables(masks)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    floats = [(p, x) for p, x in flat if is_float(x) and x.size]
    if masks is not None:
        if where is not None:
            raise ValueError(must_be("where", "None when masks are given (the masks say which "
                                     "leaves are selected)", where))
        check_same_structure(tree, masks, "masks")
        check_mask_tree(masks)
        pairs = zip(flat, jax.tree.leaves(masks, is_leaf=_is_none))
        picked = [(p, jnp.sum(~m, dtype=jnp.int32), m.size)
                  for (p, _), m in pairs if m is not None and m.size]
        whole = _ratio([z for _, z, _ in picked], [x.size for _, x in floats])
    elif flat and all(x is None or is_bool(x) for _, x in flat) and any(
            is_bool(x) for _, x in flat):
        if where is not None:
            raise ValueError(must_be("where", "None for a mask tree", where))
        picked = [(p, jnp.sum(~m, dtype=jnp.int32), m.size) for p, m in flat
                  if m is not None and m.size]
        whole = None
    else:
        chosen = select(where, tree=tree)
        picked = [(p, jnp.sum(x == 0, dtype=jnp.int32), x.size) for p, x in floats
                  if chosen(p, x)]
        if where is not None and not picked:
            raise ValueError(must_be("where", "a selector matching at least one float leaf",
                                     where))
        whole = _ratio([jnp.sum(x == 0, dtype=jnp.int32) for _, x in floats],
                       [x.size for _, x in floats])
    per_leaf = {path_str(p): z.astype(jnp.float32) / jnp.float32(n) for p, z, n in picked}
    overall = _ratio([z for _, z, _ in picked], [n for _, _, n in picked])
    return Sparsity(overall, per_leaf, whole)


def summary(params: PyTree, masks: PyTree | None = None, *, where: Where = None,
            print_fn: Callable | None = print) -> str:
    """Print (and return) a table of every float leaf: path, shape, dtype, pattern, density, bytes.

    Patterns are detected from each mask: ``dense``, ``channel (axis a)``, ``n:m (axis a)``,
    ``block (bm, bn)`` (the largest tile the mask is constant on), ``unstructured`` or ``empty``.
    ``dense B`` is the leaf's dense size; ``sparse B`` the size of its compressed form:

    * N:M: kept values + one uint8 index each (the `sparsejax.formats.NMSparse` layout);
    * channel: kept slices + one int32 index per kept channel;
    * block: kept values + one int32 index per kept tile + one int32 count per row of tiles (BSR);
    * unstructured: kept values + a one-bit-per-entry bitmap;
    * unmasked leaves stay dense.

    Two totals: ``selected`` (the masked leaves; without masks, the leaves ``where`` selects)
    is `sparsity`'s ``overall``; ``all float leaves`` is its ``whole_model``. Non-float leaves
    (integer counters, NNX RNG keys) are left out and counted in a footnote.

    Args:
        params: any pytree of arrays.
        masks: optional mask tree; without it, density counts nonzeros of ``params``.
        where: leaf selector for the ``selected`` total when ``masks`` is ``None``.
        print_fn: where to print (``None`` to only return the string).

    Returns:
        the table as a string.
    """
    if masks is not None and where is not None:
        raise ValueError(must_be("where", "None when masks are given", where))
    params = unwrap_variables(params)
    chosen = select(where, tree=params)
    rows, skipped = [], 0
    sel, tot = [0, 0, 0, 0], [0, 0, 0, 0]
    for path, x, m in mask_pairs(params, masks):
        if not is_float(x):
            skipped += is_array(x)
            continue
        size = x.size
        if m is None:
            kept = int(np.count_nonzero(np.asarray(x))) if masks is None else size
            pattern = "dense" if masks is not None else "-"
            dense_b = sparse_b = size * np.dtype(x.dtype).itemsize
        else:
            kept = int(np.asarray(m).sum())
            dense_b, sparse_b, pattern = leaf_nbytes(x, m)
        rows.append((path_str(path), str(tuple(x.shape)), str(x.dtype), pattern,
                     f"{kept / max(size, 1):.3f}", str(dense_b), str(sparse_b)))
        counts = (kept, size, dense_b, sparse_b)
        tot = [a + b for a, b in zip(tot, counts)]
        if (m is not None) if masks is not None else chosen(path, x):
            sel = [a + b for a, b in zip(sel, counts)]
    header = ("path", "shape", "dtype", "pattern", "density", "dense B", "sparse B")
    totals = [("selected", "", "", "masked" if masks is not None else "where",
               f"{sel[0] / max(sel[1], 1):.3f}", str(sel[2]), str(sel[3])),
              ("all float leaves", "", "", "", f"{tot[0] / max(tot[1], 1):.3f}", str(tot[2]),
               str(tot[3]))]
    caption = (f"({skipped} non-float leaves, e.g. integer counters or RNG keys, not shown)"
               if skipped else None)
    text = render_table(None, header, rows, totals=totals, caption=caption, left=4, width=240)
    if print_fn is not None:
        print_fn(text)
    return text

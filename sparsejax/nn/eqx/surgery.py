"""Model surgery for Equinox: deploy a pruned model's ``eqx.nn.Linear`` layers on the sparse kernels.

`to_sparse` replaces every ``eqx.nn.Linear`` whose weight has a mask by a
`sparsejax.nn.eqx.NMLinear` (``format="nm"``), a `sparsejax.nn.eqx.SparseLinear`
(``format="csr"``; pointwise ``eqx.nn.Conv2d`` become `sparsejax.nn.eqx.SparseConv1x1`) or
`sparsejax.nn.eqx.BlockSparseLinear`
(``format="block"``) holding the masked weight, so the converted model computes what the masked
dense model computes, through `sparsejax.ops`. `to_dense` turns those layers back into
``eqx.nn.Linear``. The Flax NNX versions are `sparsejax.nn.to_sparse` / `sparsejax.nn.to_dense`.

An ``eqx.nn.Linear`` weight is ``[out, in]``; the sparse layers store the kernel ``[in, out]``
(its transpose) and accept the same unbatched ``[in]`` inputs (and batched ``[..., in]`` ones).

Example::

    masks = sj.compute_masks(model, "nm", n=2, m=4, axis=-1)   # [out, in]: group along in
    sparse = sj.nn.eqx.to_sparse(model, masks, "nm", n=2, m=4)
    dense = sj.nn.eqx.to_dense(sparse)                         # eqx.nn.Linear again
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from sparsejax.nn import _surgery
from sparsejax.nn.eqx.linear import BlockSparseLinear, NMLinear
from sparsejax.nn.eqx.sparse_linear import (
    SparseConv1x1,
    SparseLinear,
    from_dense_layer,
    to_dense_layer,
)
from sparsejax.select import path_str

__all__ = ["to_dense", "to_sparse"]


def _map_layers(model: Any, types: type | tuple[type, ...], fn) -> Any:
    """``model`` with each sub-module of ``types`` at key path ``p`` replaced by ``fn(p, layer)``."""
    is_layer = lambda x: isinstance(x, types)  # noqa: E731
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fn(p, x) if is_layer(x) else x, model, is_leaf=is_layer)


def to_sparse(model: Any, masks: Any, format: str, *, n: int = 2, m: int = 4,
              block_shape: tuple[int, int] | None = None, backend: str = "auto") -> Any:
    """``model`` with its masked ``eqx.nn.Linear`` layers as N:M or block-sparse layers.

    Each ``eqx.nn.Linear`` whose ``weight [out, in]`` has a mask in ``masks`` becomes a
    `sparsejax.nn.eqx.NMLinear` / `sparsejax.nn.eqx.BlockSparseLinear` storing
    ``(weight * mask).T`` and the same bias; ``eqx.nn.Linear`` layers without a mask stay dense.

    Args:
        model: an Equinox module (any pytree holding ``eqx.nn.Linear`` layers, or one itself).
        masks: a mask tree mirroring ``model``, e.g. ``sparsejax.compute_masks(model, ...)``, or a
            flat ``{"path/weight": mask}`` dict: a bool ``[out, in]`` array per converted weight,
            ``None`` elsewhere.
        format: ``"csr"`` (any mask: a `sparsejax.nn.eqx.SparseLinear`, and a pointwise
            ``eqx.nn.Conv2d`` becomes a `sparsejax.nn.eqx.SparseConv1x1`), ``"nm"`` (every
            group of ``m`` consecutive inputs keeps at most ``n``: a mask from
            ``compute_masks(..., "nm", n=n, m=m, axis=-1)``) or ``"block"`` (whole blocks kept or
            dropped: ``compute_masks(..., "block", block_shape=(bn, bm))`` on the ``[out, in]``
            weight).
        n: kept entries per group (``format="nm"``).
        m: group size (``format="nm"``).
        block_shape: ``(bm, bn)`` blocks of the ``[in, out]`` kernel (``format="block"``), i.e.
            ``(bn, bm)`` blocks of the ``[out, in]`` weight.
        backend: the sparse layers' ``backend`` (see `sparsejax.ops`).

    Returns:
        The converted model.

    Raises:
        ValueError: unknown ``format``; a mask that does not fit it (more than ``n`` kept in a
            group, a block partly kept, a size not divisible by ``m`` / the block); a mask on a
            leaf that is not an ``eqx.nn.Linear`` weight; a ``"scalar"`` linear layer.
        TypeError: a non-bool or traced mask.
    """
    spec = _surgery.check_format(format, n, m, block_shape)
    table = _surgery.mask_table(masks)

    def convert(path, lin):
        key = _surgery.join((path_str(path),) if path else (), "weight")
        if key not in table:
            return lin
        if format == "csr":
            mask = _surgery.concrete_mask(key, table.pop(key), lin.weight.shape)
            return from_dense_layer(key, lin, mask, backend)
        if lin.weight.ndim != 2 or "scalar" in (lin.in_features, lin.out_features):
            raise ValueError(f"`model` must hold eqx.nn.Linear layers with int features at "
                             f"'{key}'; got in_features={lin.in_features!r}, "
                             f"out_features={lin.out_features!r}.")
        mask = _surgery.concrete_mask(key, table.pop(key), lin.weight.shape).T
        kwargs = _surgery.sparse_kwargs(key, mask, format, spec, axis_hint=-1)
        cls = NMLinear if format == "nm" else BlockSparseLinear
        return cls(lin.weight.shape[1], lin.weight.shape[0], kernel=lin.weight.T, bias=lin.bias,
                   use_bias=lin.bias is not None, backend=backend, **kwargs)

    types = (eqx.nn.Linear, eqx.nn.Conv) if format == "csr" else eqx.nn.Linear
    out = _map_layers(model, types, convert)
    _surgery.check_all_used(table, "eqx.nn.Linear")
    return out


def to_dense(model: Any) -> Any:
    """``model`` with its `sparsejax.nn.eqx.NMLinear` / `sparsejax.nn.eqx.BlockSparseLinear` /
    `sparsejax.nn.eqx.SparseLinear` / `sparsejax.nn.eqx.SparseConv1x1` layers as
    ``eqx.nn.Linear`` layers (``weight = kernel.T``; CSR layers: their own ``[out, in]`` weight;
    pointwise convolutions: ``eqx.nn.Conv2d``), zeros where nothing is stored.

    Args:
        model: an Equinox module (or a sparse layer itself).

    Returns:
        The converted model.
    """
    model = _map_layers(model, (SparseLinear, SparseConv1x1), lambda _, x: to_dense_layer(x))

    def convert(_, layer):
        kernel = layer.weight.to_dense()
        lin = eqx.nn.Linear(kernel.shape[0], kernel.shape[1], use_bias=layer.bias is not None,
                            dtype=kernel.dtype, key=jax.random.PRNGKey(0))
        lin = eqx.tree_at(lambda x: x.weight, lin, kernel.T)
        if layer.bias is not None:
            lin = eqx.tree_at(lambda x: x.bias, lin, layer.bias)
        return lin

    return _map_layers(model, (NMLinear, BlockSparseLinear), convert)

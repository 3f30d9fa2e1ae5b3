"""Model surgery for Flax NNX: deploy a pruned model's ``nnx.Linear`` layers on the sparse kernels.

`to_sparse` replaces every ``nnx.Linear`` whose kernel has a mask by a `sparsejax.nn.NMLinear`
(``format="nm"``), a `sparsejax.nn.SparseLinear` (``format="csr"``, which also turns masked
pointwise ``nnx.Conv`` layers into `sparsejax.nn.SparseConv1x1`) or
`sparsejax.nn.BlockSparseLinear` (``format="block"``) holding the masked
kernel, so the converted model computes what the masked dense model computes, through
`sparsejax.ops`. `to_dense` turns those layers back into ``nnx.Linear``. The Equinox versions are
`sparsejax.nn.eqx.to_sparse` / `sparsejax.nn.eqx.to_dense`.

Example::

    params = nnx.state(model, nnx.Param)
    masks = sj.compute_masks(params, "nm", n=2, m=4, axis=0)   # [in, out]: group along in
    sparse = sj.nn.to_sparse(model, masks, "nm", n=2, m=4)     # model is left unchanged
    dense = sj.nn.to_dense(sparse)                             # nnx.Linear again, masked kernels
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from sparsejax.nn import _surgery
from sparsejax.nn.linear import BlockSparseLinear, NMLinear
from sparsejax.nn.sparse_linear import (
    SparseConv1x1,
    SparseLinear,
    from_dense_layer,
    to_dense_layer,
)

__all__ = ["to_dense", "to_sparse"]


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> nnx.Module:
    """Put ``new`` at ``path`` inside ``model`` (in place); the new root."""
    if not path:
        return new
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)
    return model


def _dense_linear(kernel: Any, bias: Any | None) -> nnx.Linear:
    """A plain ``nnx.Linear`` holding ``kernel`` ``[in, out]`` and ``bias`` (or none)."""
    return nnx.Linear(kernel.shape[0], kernel.shape[1], use_bias=bias is not None,
                      param_dtype=kernel.dtype, kernel_init=lambda *_: kernel,
                      bias_init=lambda *_: bias, rngs=nnx.Rngs(0))


def to_sparse(model: nnx.Module, masks: Any, format: str, *, n: int = 2, m: int = 4,
              block_shape: tuple[int, int] | None = None, backend: str = "auto") -> nnx.Module:
    """A copy of ``model`` whose masked ``nnx.Linear`` layers are N:M or block-sparse layers.

    Each ``nnx.Linear`` whose ``kernel [in, out]`` has a mask in ``masks`` becomes a
    `sparsejax.nn.NMLinear` / `sparsejax.nn.BlockSparseLinear` storing ``kernel * mask`` and the
    same bias; ``nnx.Linear`` layers without a mask stay dense. Only the kernel, the bias and the
    parameter dtype carry over (not ``dtype``, ``precision`` or a custom ``dot_general``).

    Args:
        model: a Flax NNX module (or an ``nnx.Linear`` itself); it is not modified.
        masks: a mask tree over the model's parameters, e.g.
            ``sparsejax.compute_masks(nnx.state(model, nnx.Param), ...)`` (an ``nnx.State``), or a
            flat ``{"path/kernel": mask}`` dict: a bool ``[in, out]`` array per converted kernel,
            ``None`` elsewhere.
        format: ``"csr"`` (any mask: a `sparsejax.nn.SparseLinear`, and a pointwise
            ``nnx.Conv`` becomes a `sparsejax.nn.SparseConv1x1`), ``"nm"`` (every group of
            ``m`` consecutive inputs keeps at most ``n``: a mask from
            ``compute_masks(..., "nm", n=n, m=m, axis=0)``) or ``"block"`` (whole
            ``block_shape`` blocks kept or dropped: ``compute_masks(..., "block",
            block_shape=...)``).
        n: kept entries per group (``format="nm"``).
        m: group size (``format="nm"``).
        block_shape: ``(bm, bn)`` blocks of the ``[in, out]`` kernel (``format="block"``).
        backend: the sparse layers' ``backend`` (see `sparsejax.ops`).

    Returns:
        The converted copy (it shares the unconverted layers' arrays with ``model``).

    Raises:
        ValueError: unknown ``format``; a mask that does not fit it (more than ``n`` kept in a
            group, a block partly kept, a size not divisible by ``m`` / the block); a mask on a
            leaf that is not an ``nnx.Linear`` kernel.
        TypeError: a non-bool or traced mask.
    """
    spec = _surgery.check_format(format, n, m, block_shape)
    table = _surgery.mask_table(masks)
    model = nnx.clone(model)
    types = (nnx.Linear, nnx.Conv) if format == "csr" else nnx.Linear
    targets = [(p, mod) for p, mod in nnx.iter_modules(model) if isinstance(mod, types)]
    for path, lin in targets:
        key = _surgery.join(path, "kernel")
        if key not in table:
            continue
        kernel = lin.kernel[...]
        mask = _surgery.concrete_mask(key, table.pop(key), kernel.shape)
        if format == "csr":
            model = _replace(model, path, from_dense_layer(key, lin, mask, backend))
            continue
        kwargs = _surgery.sparse_kwargs(key, mask, format, spec, axis_hint=0)
        bias = None if lin.bias is None else lin.bias[...]
        cls = NMLinear if format == "nm" else BlockSparseLinear
        new = cls(kernel.shape[0], kernel.shape[1], kernel=kernel, bias=bias,
                  use_bias=bias is not None, backend=backend, **kwargs)
        model = _replace(model, path, new)
    _surgery.check_all_used(table, "nnx.Linear")
    return model


def to_dense(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose `sparsejax.nn.NMLinear` / `sparsejax.nn.BlockSparseLinear` /
    `sparsejax.nn.SparseLinear` layers are ``nnx.Linear`` layers (`sparsejax.nn.SparseConv1x1`:
    pointwise ``nnx.Conv``) with the dense kernel (zeros where nothing is stored).

    Args:
        model: a Flax NNX module (or a sparse layer itself); it is not modified.

    Returns:
        The converted copy.
    """
    model = nnx.clone(model)
    targets = [(p, mod) for p, mod in nnx.iter_modules(model)
               if isinstance(mod, NMLinear | BlockSparseLinear)]
    csr_targets = [(p, mod) for p, mod in nnx.iter_modules(model)
                   if isinstance(mod, SparseLinear | SparseConv1x1)]
    for path, layer in csr_targets:
        model = _replace(model, path, to_dense_layer(layer))
    for path, layer in targets:
        kernel = layer.weight.to_dense()
        bias = None if layer.bias is None else layer.bias[...]
        model = _replace(model, path, _dense_linear(kernel, bias))
    return model

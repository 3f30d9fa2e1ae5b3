"""Compressed sparse formats as registered pytrees: N:M (`NMSparse`) and block-sparse
rows (`BlockSparse`, BSR).

Both classes are JAX pytrees: their arrays are leaves (they pass through ``jit``, ``vmap``,
``grad`` and ``tree.map``) and their structural parameters (``n``, ``m``, ``axis``, ``shape``,
``block_shape``) are static auxiliary data, so changing them retraces a jitted function while
changing the stored values does not.

Conventions:

* **N:M** follows jaxpruner / SR-STE: ``n`` is the number of entries *kept* in every group of
  ``m`` consecutive entries along ``axis``. Hardware 2:4 sparsity (NVIDIA sparse tensor cores)
  groups along the *reduction* axis of the sparse operand: for a Flax ``Dense`` kernel
  ``[in, out]`` that is ``axis=0``, for a torch-style ``[out, in]`` weight it is ``axis=1``.
  `NMSparse.from_dense` has no default axis: pass it, as for `sparsejax.masks.nm` (whose
  ``axis`` means the same grouping axis), so a mask from ``masks.nm(scores, n, m, axis=a)``
  compresses with ``NMSparse.from_dense(x, n, m, axis=a, mask=...)``.
* **BSR** stores, per block row, the kept blocks packed to the left and the sorted block-column
  index of each, padded to a static ``max_blocks_per_row``; this is the shared
  `sparsejax._blocks.BlockIndex` a Pallas kernel scalar-prefetches (see `BlockSparse`), the same
  description `sparsejax.attention.BlockMask.info` gives an attention kernel. Shapes not
  divisible by the block shape are *rejected* here with a ``ValueError``; the ops in
  `sparsejax.ops` never pad silently either.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sparsejax import masks as _masks
from sparsejax._blocks import BlockIndex, pack_blocks, slot_mask
from sparsejax._checks import (
    check_block_shape,
    check_bool_array,
    check_float_array,
    check_int,
    check_nm,
    check_nm_axis,
    is_concrete,
    must_be,
    normalize_axis,
)

__all__ = ["CSR", "BlockSparse", "NMSparse"]


# --------------------------------------------------------------------------------------------
# N:M
# --------------------------------------------------------------------------------------------


def _nm_keep_mask(x: Array, n: int, m: int) -> Array:
    """Bool mask keeping the ``n`` largest ``|x|`` of each group of ``m`` along the last axis
    (``sparsejax.masks.nm``: ties by lower index, exactly ``n`` per group, no sort)."""
    return _masks.nm(jnp.abs(x), n, m, axis=-1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _nm_compress(x: Array, mask: Array | None, n: int, m: int, ax: int) -> tuple[Array, Array]:
    xt = jnp.moveaxis(x, ax, -1)
    keep = _nm_keep_mask(xt, n, m) if mask is None else jnp.moveaxis(mask, ax, -1)
    g_keep = keep.reshape(*keep.shape[:-1], -1, m)
    g_x = jnp.where(g_keep, xt.reshape(g_keep.shape), 0).astype(x.dtype)
    # positions ordered: kept ones first (ascending), then the rest (ascending).
    order = jnp.argsort(~g_keep, axis=-1, stable=True)[..., :n]
    pos = jnp.sort(order, axis=-1)  # ascending positions among the chosen n
    vals = jnp.take_along_axis(g_x, pos, axis=-1)
    new_shape = (*xt.shape[:-1], xt.shape[-1] // m * n)
    values = jnp.moveaxis(vals.reshape(new_shape), -1, ax)
    indices = jnp.moveaxis(pos.astype(jnp.uint8).reshape(new_shape), -1, ax)
    return values, indices


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _nm_to_dense(values: Array, indices: Array, n: int, m: int, axis: int, length: int) -> Array:
    v = jnp.moveaxis(values, axis, -1)
    i = jnp.moveaxis(indices, axis, -1)
    v = v.reshape(*v.shape[:-1], length // m, n)
    i = i.reshape(v.shape).astype(jnp.int32)
    onehot = i[..., None] == jnp.arange(m)  # [..., G, n, m]
    dense = jnp.sum(jnp.where(onehot, v[..., None], jnp.zeros((), v.dtype)), axis=-2)
    dense = dense.reshape(*dense.shape[:-2], length).astype(values.dtype)
    return jnp.moveaxis(dense, -1, axis)


@jax.tree_util.register_pytree_node_class
class NMSparse:
    """An N:M-sparse array compressed along one axis: kept values + their positions in each group.

    Along ``axis`` (length ``K``, a multiple of ``m``) every group of ``m`` consecutive entries
    keeps ``n`` of them. ``values`` has the dense shape with ``K`` replaced by ``K * n // m``: the
    kept entries of each group in ascending position order; ``indices`` (``uint8``, same shape)
    holds each kept entry's position ``0 <= p < m`` inside its group. A group with fewer than ``n``
    nonzeros (only possible with an explicit ``mask``) is filled with zero values at unused
    positions, so the layout is always exactly ``n`` per group.

    ``axis`` is stored as a negative number, so leaves that gain leading batch axes (e.g. an
    ``NMSparse`` built under ``vmap``) still describe the right axis; `shape` is derived
    from ``values`` and the static dense ``length`` of ``axis``.

    Products: `sparsejax.ops.nm_matmul` (``w @ x``) and `sparsejax.ops.dense_nm_matmul`
    (``x @ w``); the ``@`` operator is registered by `sparsejax.ops` (imported by
    ``import sparsejax``).

    Gradients: ``indices`` is an integer leaf, so differentiate with respect to the values,
    ``jax.grad(lambda v: loss(w.replace(values=v)))(w.values)`` (the cotangent is that of the
    kept values only); ``jax.grad(loss, allow_int=True)(w)`` also works.

    Attributes:
        values: ``[..., K*n/m, ...]`` kept values (the dense dtype).
        indices: ``uint8 [..., K*n/m, ...]`` position of each kept value within its group.
        n: entries kept per group (jaxpruner / SR-STE convention).
        m: group size.
        axis: the compressed (reduction) axis, negative.
        length: the dense length ``K`` of ``axis``.
    """

    __array_priority__ = 100  # numpy defers ``ndarray @ NMSparse`` to ``__rmatmul__``

    def __init__(self, values: Array, indices: Array, n: int, m: int, axis: int, length: int):
        self.values = values
        self.indices = indices
        self.n = n
        self.m = m
        self.axis = axis
        self.length = length

    # -- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.values, self.indices), (self.n, self.m, self.axis, self.length)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def __repr__(self) -> str:
        return (f"NMSparse(shape={self.shape}, n={self.n}, m={self.m}, axis={self.axis}, "
                f"dtype={self.dtype})")

    def replace(self, **kwargs: Any) -> NMSparse:
        """A copy with some fields replaced (e.g. ``w.replace(values=new_values)``)."""
        fields = dict(values=self.values, indices=self.indices, n=self.n, m=self.m,
                      axis=self.axis, length=self.length)
        unknown = set(kwargs) - set(fields)
        if unknown:
            raise TypeError(f"`replace` takes fields {sorted(fields)}; got {sorted(unknown)}.")
        fields.update(kwargs)
        return NMSparse(**fields)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        x: Float[Array, "..."],
        n: int,
        m: int,
        axis: int | None = None,
        *,
        mask: Bool[Array, "..."] | None = None,
    ) -> NMSparse:
        """Compress ``x`` to N:M along ``axis``.

        Args:
            x: a float array; ``x.shape[axis]`` must be a multiple of ``m``.
            n: entries kept in every group of ``m`` (``0 <= n <= m``).
            m: group size (``1 <= m <= 256``).
            axis: the grouped axis, required (as for `sparsejax.masks.nm`): the reduction axis of
                the sparse operand, which hardware 2:4 sparsity groups along: ``0`` for a Flax
                ``Dense`` kernel ``[in, out]``, ``1`` for a torch ``[out, in]`` weight.
            mask: optional bool array of ``x``'s shape giving the kept entries; it must keep at
                most ``n`` of every group (checked eagerly when the mask is concrete; under
                ``jit`` a violating mask silently keeps only the first ``n`` kept positions of a
                group). Without a mask the ``n`` largest ``|x|`` of each group are kept, ties
                broken by position (lower index wins).

        Returns:
            The compressed array; ``to_dense()`` equals ``x * mask``.

        Raises:
            TypeError: non-float ``x``, non-bool ``mask``, non-int ``n``/``m`` or ``axis``.
            ValueError: ``axis`` missing, ``n`` outside ``[0, m]``, ``x.shape[axis]`` not
                divisible by ``m``, a mask of the wrong shape or one keeping more than ``n`` of some group.
        """
        n, m = check_nm(n, m, max_m=256)  # uint8 indices
        check_nm_axis(axis)
        x = check_float_array(jnp.asarray(x), "x")
        if x.ndim < 1:
            raise ValueError(f"`x` must have at least one axis; got shape {x.shape}.")
        ax = normalize_axis(axis, x.ndim)
        k = x.shape[ax]
        if k % m:
            raise ValueError(f"`x.shape[axis]` = {k} (axis={axis}) must be divisible by m={m}; "
                             f"got shape {x.shape}.")
        if mask is not None:
            mask = check_bool_array(jnp.asarray(mask), "mask")
            if mask.shape != x.shape:
                raise ValueError(f"`mask` must have x's shape {x.shape}; got {mask.shape}.")
            if is_concrete(mask):
                keep = np.moveaxis(np.asarray(mask), ax, -1)
                per_group = keep.reshape(*keep.shape[:-1], -1, m).sum(-1)
                if per_group.size and per_group.max() > n:
                    raise ValueError(f"`mask` keeps {int(per_group.max())} entries in some group "
                                     f"of m={m} along axis {axis}; allowed: at most n={n}.")
        values, indices = _nm_compress(x, mask, n, m, ax)
        return cls(values, indices, n, m, ax - x.ndim, k)

    # -- properties -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The dense shape."""
        s = list(self.values.shape)
        s[self.axis] = self.length
        return tuple(s)

    @property
    def dtype(self):
        """Dtype of the values."""
        return self.values.dtype

    @property
    def ndim(self) -> int:
        """Number of dense axes."""
        return self.values.ndim

    @property
    def nbytes(self) -> int:
        """Bytes stored: values plus one ``uint8`` index per kept value.

        Packing each index into ``ceil(log2(m))`` bits (2 bits for 2:4, as cuSPARSELt does) would
        store `packed_nbytes` instead.
        """
        return int(self.values.size * self.values.dtype.itemsize + self.indices.size)

    @property
    def packed_nbytes(self) -> int:
        """Bytes with indices bit-packed to ``ceil(log2(m))`` bits each (2 bits for 2:4)."""
        bits = max(1, math.ceil(math.log2(self.m))) if self.m > 1 else 0
        return int(self.values.size * self.values.dtype.itemsize
                   + math.ceil(self.indices.size * bits / 8))

    # -- conversion -----------------------------------------------------------------------
    def to_dense(self) -> Float[Array, "..."]:
        """The dense array (zeros at pruned positions)."""
        return _nm_to_dense(self.values, self.indices, self.n, self.m, self.axis, self.length)

    def mask(self) -> Bool[Array, "..."]:
        """Bool mask of the stored positions (``n`` per group), dense shape."""
        ones = NMSparse(jnp.ones(self.values.shape, jnp.bool_), self.indices, self.n, self.m,
                        self.axis, self.length)
        return ones.to_dense()

    def transpose(self) -> NMSparse:
        """The transposed matrix ``W^T`` compressed along *its* reduction axis (transposable N:M).

        For a 2-D ``W`` whose stored positions are a transposable N:M mask
        (`sparsejax.masks.nm_transposable`: ``n`` per row and per column of every ``m x m``
        block), ``W^T`` is N:M along the other axis as well, so it is recompressed there:
        ``W [M, K]`` grouped along ``K`` (``axis=-1``) gives ``W^T [K, M]`` grouped along ``M``
        (``axis=-1`` again), the operand of the backward product ``W^T g``. Stored zeros stay
        stored. ``w.transpose().to_dense() == w.to_dense().T``.

        Returns:
            an ``NMSparse`` of dense shape ``shape[::-1]`` with the same ``n``, ``m`` and ``axis``.

        Raises:
            ValueError: ``w`` not 2-D, or (when concrete) its positions are not N:M along the
                other axis (not a transposable mask); under ``jit`` such a ``w`` silently keeps
                the first ``n`` positions of an overfull group.
        """
        if self.ndim != 2:
            raise ValueError(must_be("w", "a 2-D NMSparse for transpose", f"shape {self.shape}",
                                     raw=True))
        other = self.shape[self.axis + 1]  # the dense length of the new grouped axis
        if other % self.m:
            raise ValueError(must_be("w", f"an NMSparse whose other axis is divisible by m="
                                     f"{self.m} (a transposable N:M mask)", f"shape {self.shape}",
                                     raw=True))
        mask = self.mask().T
        if is_concrete(mask):
            per_group = np.moveaxis(np.asarray(mask), self.axis, -1).reshape(-1, self.m).sum(-1)
            if per_group.size and per_group.max() > self.n:
                raise ValueError(must_be("w", f"stored on a transposable {self.n}:{self.m} mask "
                                         "(sparsejax.masks.nm_transposable) to be transposed",
                                         f"{int(per_group.max())} kept in a group of the other "
                                         "axis", raw=True))
        values, indices = _nm_compress(self.to_dense().T, mask, self.n, self.m, self.axis + 2)
        return NMSparse(values, indices, self.n, self.m, self.axis, other)



# --------------------------------------------------------------------------------------------
# BSR
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(2, 3))
def _bsr_block_mask(x: Array, mask: Array | None, bm: int, bn: int) -> tuple[Array, Array]:
    r, c = x.shape[0] // bm, x.shape[1] // bn
    if mask is None:
        return x, jnp.any(x.reshape(r, bm, c, bn) != 0, axis=(1, 3))
    if mask.shape == (r, c):
        return x, mask
    x = jnp.where(mask, x, jnp.zeros((), x.dtype))
    return x, jnp.any(mask.reshape(r, bm, c, bn), axis=(1, 3))


def _gather_blocks(blocks: Array, index: BlockIndex) -> Array:
    """``blocks [R, C, bm, bn]`` -> the kept ones ``[R, S, bm, bn]`` (zero in padded slots)."""
    data = jnp.take_along_axis(blocks, index.indices[:, :, None, None], axis=1)
    return jnp.where(index.valid()[:, :, None, None], data, jnp.zeros((), data.dtype))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _bsr_pack(x: Array, block_mask: Array, bm: int, bn: int, s: int
              ) -> tuple[Array, Array, Array]:
    r, c = block_mask.shape
    index = pack_blocks(block_mask, s)
    data = _gather_blocks(x.reshape(r, bm, c, bn).transpose(0, 2, 1, 3), index)
    return data, index.indices, index.counts


@functools.partial(jax.jit, static_argnums=(2,))
def _bsr_block_mask_of(indices: Array, counts: Array, c: int) -> Array:
    return BlockIndex(indices, counts).to_keep(c)


@functools.partial(jax.jit, static_argnums=(3,))
def _bsr_to_dense(data: Array, indices: Array, counts: Array, shape: tuple[int, int]) -> Array:
    r, s, bm, bn = data.shape
    c = shape[1] // bn
    rows = jnp.broadcast_to(jnp.arange(r)[:, None], indices.shape)
    data = jnp.where(slot_mask(counts, s)[:, :, None, None], data, jnp.zeros((), data.dtype))
    blocks = jnp.zeros((r, c, bm, bn), data.dtype).at[rows, indices].add(data)
    return blocks.transpose(0, 2, 1, 3).reshape(shape)


@functools.partial(jax.jit, static_argnums=(2,))
def _bsr_col_counts(indices: Array, counts: Array, c: int) -> Array:
    """Kept blocks per block column."""
    return BlockIndex(indices, counts).transpose(c, indices.shape[0])[0].counts


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bsr_transpose(data: Array, indices: Array, counts: Array, c: int, s: int
                   ) -> tuple[Array, Array, Array]:
    t, src = BlockIndex(indices, counts).transpose(c, s)
    blocks = data[t.indices, src]  # [C, s, bm, bn]
    blocks = jnp.where(t.valid()[:, :, None, None], blocks, jnp.zeros((), data.dtype))
    return blocks.transpose(0, 1, 3, 2), t.indices, t.counts


@jax.tree_util.register_pytree_node_class
class BlockSparse:
    """A block-sparse matrix in BSR layout, the metadata Pallas kernels scalar-prefetch.

    For a dense ``[M, K]`` matrix cut into ``bm x bn`` blocks (``R = M/bm`` block rows,
    ``C = K/bn`` block columns) and ``S = max_blocks_per_row``:

    * ``data [R, S, bm, bn]``: the kept blocks of each block row, packed to the left in
      ascending block-column order; padded slots are zero.
    * ``indices int32 [R, S]``: the block column of each kept block, sorted ascending; a padded
      slot repeats the row's last valid index (``0`` for an empty row) so a kernel that visits it
      fetches nothing new.
    * ``counts int32 [R]``: kept blocks per block row (``<= S``).

    ``indices`` and ``counts`` are the shared block description, `block_index` (a
    `sparsejax._blocks.BlockIndex`, the same record an attention `BlockMask` gives its kernels).

    Static auxiliary data: ``shape = (M, K)`` and ``block_shape = (bm, bn)``. ``S`` is a static
    array dimension. Leaves may carry leading batch axes (e.g. built under ``vmap``); ``shape``
    then describes each matrix.

    Attributes:
        data: ``[R, S, bm, bn]`` kept blocks.
        indices: ``int32 [R, S]`` block columns.
        counts: ``int32 [R]`` kept blocks per block row.
        shape: dense shape ``(M, K)``.
        block_shape: ``(bm, bn)``.

    Products: `sparsejax.ops.bsr_matmul` (``a @ b``), `sparsejax.ops.dense_bsr_matmul`
    (``x @ a``) and `sparsejax.ops.sddmm`; the ``@`` operator is registered by `sparsejax.ops`
    (imported by ``import sparsejax``).

    Gradients: ``indices``/``counts`` are integer leaves, so differentiate with respect to the
    blocks, ``jax.grad(lambda d: loss(a.replace(data=d)))(a.data)``, or pass
    ``allow_int=True``.
    """

    __array_priority__ = 100  # numpy defers ``ndarray @ BlockSparse`` to ``__rmatmul__``

    def __init__(self, data: Array, indices: Array, counts: Array, shape: tuple[int, int],
                 block_shape: tuple[int, int]):
        self.data = data
        self.indices = indices
        self.counts = counts
        self.shape = tuple(shape)
        self.block_shape = tuple(block_shape)

    # -- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.data, self.indices, self.counts), (self.shape, self.block_shape)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def __repr__(self) -> str:
        return (f"BlockSparse(shape={self.shape}, block_shape={self.block_shape}, "
                f"max_blocks_per_row={self.max_blocks_per_row}, dtype={self.dtype})")

    def replace(self, **kwargs: Any) -> BlockSparse:
        """A copy with some fields replaced (e.g. ``a.replace(data=new_data)``)."""
        fields = dict(data=self.data, indices=self.indices, counts=self.counts, shape=self.shape,
                      block_shape=self.block_shape)
        unknown = set(kwargs) - set(fields)
        if unknown:
            raise TypeError(f"`replace` takes fields {sorted(fields)}; got {sorted(unknown)}.")
        fields.update(kwargs)
        return BlockSparse(**fields)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        x: Float[Array, "M K"],
        block_shape: tuple[int, int],
        mask: Bool[Array, "R C"] | Bool[Array, "M K"] | None = None,
        max_blocks_per_row: int | None = None,
    ) -> BlockSparse:
        """Compress a dense matrix into BSR.

        Args:
            x: ``[M, K]`` float matrix; ``M % bm == 0`` and ``K % bn == 0`` (otherwise
                ``ValueError``: pad ``x`` yourself, the format never pads silently).
            block_shape: ``(bm, bn)``.
            mask: which entries to keep. A block-level bool ``[M/bm, K/bn]`` keeps whole blocks;
                an element-level bool of ``x``'s shape keeps the blocks holding any ``True`` and
                zeroes the ``False`` entries inside them. ``None`` keeps the blocks holding any
                nonzero of ``x``. In every case ``to_dense()`` equals ``x * mask``.
            max_blocks_per_row: the static slot count ``S`` (``>= 1``). ``None`` computes
                ``max(1, max kept blocks in a row)`` from a concrete mask; under ``jit``/``vmap``
                (a traced mask or traced ``x`` with ``mask=None``) it must be given. A concrete
                row with more kept blocks raises ``ValueError``; under ``jit`` the extra blocks
                of such a row would be dropped, so choose it as an upper bound.

        Returns:
            The BSR matrix.

        Raises:
            TypeError: non-float ``x``, non-bool ``mask``, bad ``block_shape``.
            ValueError: non-2-D ``x``, shape not divisible by ``block_shape``, mask of the wrong
                shape, missing or too small ``max_blocks_per_row``.
        """
        x = check_float_array(jnp.asarray(x), "x")
        if x.ndim != 2:
            raise ValueError(f"`x` must be a 2-D matrix [M, K]; got shape {x.shape} "
                             "(use jax.vmap for stacks).")
        bm, bn = check_block_shape(block_shape, ndim=2)
        mdim, kdim = x.shape
        if mdim % bm or kdim % bn:
            raise ValueError(f"`x.shape` {x.shape} must be divisible by `block_shape` "
                             f"{(bm, bn)}; pad x to a multiple of the block first.")
        r, c = mdim // bm, kdim // bn
        if mask is not None:
            mask = check_bool_array(jnp.asarray(mask), "mask")
            if mask.shape not in ((r, c), x.shape):
                raise ValueError(f"`mask` must be block-level {(r, c)} or element-level "
                                 f"{x.shape}; got shape {mask.shape}.")
        x, block_mask = _bsr_block_mask(x, mask, bm, bn)
        return cls._from_block_mask(x, block_mask, (bm, bn), max_blocks_per_row)

    @classmethod
    def from_block_index(
        cls,
        x: Float[Array, "M K"],
        index: BlockIndex,
        block_shape: tuple[int, int],
    ) -> BlockSparse:
        """The blocks of ``x`` listed by a `sparsejax._blocks.BlockIndex` (kept whole).

        This is how one block description drives both kernels: the ``BlockIndex`` of an
        attention `sparsejax.attention.BlockMask` (``mask.info()``, one batch row and head) or
        of another ``BlockSparse`` becomes this matrix's ``indices``/``counts`` unchanged.
        ``index.kinds`` is ignored (a partial block is kept whole). Works under ``jit``.

        Args:
            x: ``[M, K]`` float matrix, divisible by ``block_shape``.
            index: ``indices [R, S]`` and ``counts [R]`` with ``R = M / bm`` block rows and
                block columns ``< K / bn``.
            block_shape: ``(bm, bn)``.

        Returns:
            The BSR matrix; ``to_dense()`` equals ``x`` on the listed blocks, zero elsewhere.

        Raises:
            TypeError: non-float ``x``, bad ``block_shape``.
            ValueError: non-2-D or non-divisible ``x``, an index of the wrong number of rows.
        """
        x = check_float_array(jnp.asarray(x), "x")
        bm, bn = check_block_shape(block_shape, ndim=2)
        if x.ndim != 2 or x.shape[0] % bm or x.shape[1] % bn:
            raise ValueError(f"`x` must be a 2-D matrix divisible by `block_shape` {(bm, bn)}; "
                             f"got shape {x.shape}.")
        r, c = x.shape[0] // bm, x.shape[1] // bn
        indices = jnp.asarray(index.indices, jnp.int32)
        counts = jnp.asarray(index.counts, jnp.int32)
        if indices.ndim != 2 or indices.shape[0] != r or counts.shape != (r,):
            raise ValueError(f"`index` must hold indices [R, S] and counts [R] with R = {r} block "
                             f"rows; got {indices.shape} and {counts.shape}.")
        blocks = x.reshape(r, bm, c, bn).transpose(0, 2, 1, 3)
        data = _gather_blocks(blocks, BlockIndex(indices, counts))
        return cls(data, indices, counts, x.shape, (bm, bn))

    @classmethod
    def _from_block_mask(cls, x: Array, block_mask: Array, block_shape: tuple[int, int],
                         max_blocks_per_row: int | None) -> BlockSparse:
        bm, bn = block_shape
        mdim, kdim = x.shape
        r, c = block_mask.shape
        concrete = is_concrete(block_mask)
        # kept blocks per row, counted on the host (no program compiled) when the mask is concrete
        counts = np.asarray(block_mask).sum(axis=1) if concrete else None
        if max_blocks_per_row is None:
            if not concrete:
                raise ValueError(
                    "`max_blocks_per_row` must be given when the block mask is traced (under "
                    "jit/vmap/grad): the slot count is a static array dimension. Pass an int "
                    f"in [1, {c}], e.g. the max kept blocks per row of your pattern.")
            s = max(1, int(np.max(np.asarray(counts), initial=0)))
        else:
            s = check_int(max_blocks_per_row, "max_blocks_per_row", minimum=1)
            if concrete:
                most = int(np.max(np.asarray(counts), initial=0))
                if most > s:
                    raise ValueError(f"`max_blocks_per_row`={s} is smaller than the {most} kept "
                                     "blocks of some block row; allowed: >= that count.")
        data, indices, counts = _bsr_pack(x, block_mask, bm, bn, s)
        return cls(data, indices, counts, (mdim, kdim), (bm, bn))

    # -- properties -----------------------------------------------------------------------
    @property
    def dtype(self):
        """Dtype of the blocks."""
        return self.data.dtype

    @property
    def n_block_rows(self) -> int:
        """``R = M / bm``."""
        return self.shape[0] // self.block_shape[0]

    @property
    def n_block_cols(self) -> int:
        """``C = K / bn``."""
        return self.shape[1] // self.block_shape[1]

    @property
    def max_blocks_per_row(self) -> int:
        """The static slot count ``S``."""
        return self.indices.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes stored: data (including padded slots) + indices + counts."""
        return int(self.data.nbytes + self.indices.nbytes + self.counts.nbytes)

    @property
    def nnz_blocks(self) -> Int[Array, ""]:
        """Number of kept blocks (a scalar array; works under ``jit``)."""
        return jnp.sum(self.counts)

    @property
    def density(self) -> Float[Array, ""]:
        """Fraction of blocks kept: ``sum(counts) / (R * C)`` (a scalar array)."""
        return jnp.sum(self.counts) / (self.n_block_rows * self.n_block_cols)

    @property
    def block_index(self) -> BlockIndex:
        """The shared block description (``indices``, ``counts``; every kept block full)."""
        return BlockIndex(self.indices, self.counts)

    def valid_slots(self) -> Bool[Array, "R S"]:
        """Bool ``[R, S]``: which slots hold a kept block."""
        return slot_mask(self.counts, self.max_blocks_per_row)

    def block_mask(self) -> Bool[Array, "R C"]:
        """The block-level mask ``[R, C]`` of kept blocks (``[..., R, C]`` for batched leaves)."""
        return _bsr_block_mask_of(self.indices, self.counts, self.n_block_cols)

    # -- conversion -----------------------------------------------------------------------
    def to_dense(self) -> Float[Array, "M K"]:
        """The dense ``[M, K]`` matrix (zeros outside kept blocks)."""
        if self.data.ndim > 4:
            return jax.vmap(BlockSparse.to_dense)(self)
        return _bsr_to_dense(self.data, self.indices, self.counts, self.shape)

    def transpose(self, max_blocks_per_row: int | None = None) -> BlockSparse:
        """The BSR of the transpose ``[K, M]`` with block shape ``(bn, bm)``.

        Costs ``O(R * C + kept blocks)``; no dense matrix is formed.

        Args:
            max_blocks_per_row: slot count of the result (kept blocks per block *column* of
                ``self``). ``None``: computed when ``self`` is concrete, otherwise ``R`` (always
                enough, but the slots then do not shrink with density).
        """
        if self.data.ndim > 4:
            return jax.vmap(lambda a: a.transpose(max_blocks_per_row))(self)
        r = self.n_block_rows
        t_counts = _bsr_col_counts(self.indices, self.counts, self.n_block_cols)
        if max_blocks_per_row is None and not is_concrete(t_counts):
            max_blocks_per_row = r
        if max_blocks_per_row is None:
            s = max(1, int(np.max(np.asarray(t_counts), initial=0)))
        else:
            s = check_int(max_blocks_per_row, "max_blocks_per_row", minimum=1)
            if is_concrete(t_counts) and int(np.max(np.asarray(t_counts), initial=0)) > s:
                raise ValueError(f"`max_blocks_per_row`={s} is smaller than the kept blocks of "
                                 "some block column.")
        blocks, t_idx, t_counts = _bsr_transpose(self.data, self.indices, self.counts,
                                                 self.n_block_cols, s)
        bm, bn = self.block_shape
        return BlockSparse(blocks, t_idx, t_counts, (self.shape[1], self.shape[0]), (bn, bm))

    @property
    def T(self) -> BlockSparse:  # noqa: N802
        """Shorthand for `transpose`."""
        return self.transpose()



# --------------------------------------------------------------------------------------------
# CSR (unstructured)
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(2,))
def _csr_pack(x: Array, keep: Array, nse: int) -> tuple[Array, Array, Array]:
    """Row-major kept entries of ``x`` (first ``nse``; zero value / column 0 in padded slots)."""
    mdim, kdim = x.shape
    if x.size == 0:  # nothing to gather from
        return (jnp.zeros((nse,), x.dtype), jnp.zeros((nse,), jnp.int32),
                jnp.zeros((mdim + 1,), jnp.int32))
    flat = keep.reshape(-1)
    (pos,) = jnp.nonzero(flat, size=nse, fill_value=0)
    nnz = jnp.minimum(jnp.sum(flat, dtype=jnp.int32), nse)
    valid = jnp.arange(nse) < nnz
    data = jnp.where(valid, x.reshape(-1)[pos], jnp.zeros((), x.dtype))
    indices = jnp.where(valid, pos % max(kdim, 1), 0).astype(jnp.int32)
    counts = jnp.cumsum(jnp.sum(keep, axis=1, dtype=jnp.int32))
    indptr = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.minimum(counts, nse)])
    return data, indices, indptr


@jax.jit
def _csr_row_ids(indptr: Array, nse_like: Array) -> Array:
    """Row of every slot; padded slots (at or past ``indptr[-1]``) get row ``M``."""
    slots = jnp.arange(nse_like.shape[0], dtype=jnp.int32)
    return (jnp.searchsorted(indptr, slots, side="right") - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(3,))
def _csr_to_dense(data: Array, indices: Array, indptr: Array, shape: tuple[int, int]) -> Array:
    rows = _csr_row_ids(indptr, data)
    return jnp.zeros(shape, data.dtype).at[rows, indices].add(data, mode="drop")


@functools.partial(jax.jit, static_argnums=(3,))
def _csr_transpose(data: Array, indices: Array, indptr: Array, shape: tuple[int, int]
                   ) -> tuple[Array, Array, Array]:
    mdim, kdim = shape
    nse = data.shape[0]
    rows = _csr_row_ids(indptr, data)
    valid = rows < mdim
    key = jnp.where(valid, indices, kdim)  # padded slots sort last
    order = jnp.lexsort((rows, key))
    t_data = jnp.where(valid[order], data[order], jnp.zeros((), data.dtype))
    t_indices = jnp.where(valid[order], rows[order], 0).astype(jnp.int32)
    per_col = jnp.zeros((kdim,), jnp.int32).at[key].add(1, mode="drop")
    t_indptr = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(per_col)])
    return t_data, t_indices, jnp.minimum(t_indptr, nse).astype(jnp.int32)


@jax.tree_util.register_pytree_node_class
class CSR:
    """An unstructured sparse matrix in compressed sparse row layout, padded to a static size.

    For a dense ``[M, K]`` matrix with ``nnz`` stored entries and a static capacity ``nse >= nnz``
    (number of stored elements, as in `jax.experimental.sparse.BCSR`):

    * ``data [nse]``: the stored values, row by row, columns ascending within a row; the
      ``nse - nnz`` padded slots at the end hold ``0``.
    * ``indices int32 [nse]``: the column of each stored value (``0`` in padded slots).
    * ``indptr int32 [M + 1]``: row ``i`` holds slots ``indptr[i]:indptr[i + 1]``;
      ``indptr[0] = 0`` and ``indptr[M] = nnz``.

    The static auxiliary data is ``shape = (M, K)``; ``nse`` is an array dimension, so a jitted
    function retraces when it changes but not when values or the sparsity pattern change
    (within ``nse``). Stored entries may be zero (`from_mask` keeps the mask's pattern, so a
    pruned weight keeps its structure while it trains).

    Products: `sparsejax.ops.csr_matmul` (``a @ x``), `sparsejax.ops.dense_csr_matmul`
    (``x @ a``), `sparsejax.ops.csr_sddmm` and `sparsejax.ops.sparse_conv1x1`; the ``@``
    operator is registered by `sparsejax.ops` (imported by ``import sparsejax``).

    Gradients: ``indices``/``indptr`` are integer leaves, so differentiate with respect to the
    values, ``jax.grad(lambda d: loss(a.replace(data=d)))(a.data)``, or pass
    ``allow_int=True``.

    Attributes:
        data: ``[nse]`` stored values.
        indices: ``int32 [nse]`` column of each stored value.
        indptr: ``int32 [M + 1]`` row pointers.
        shape: dense shape ``(M, K)``.
    """

    __array_priority__ = 100  # numpy defers ``ndarray @ CSR`` to ``__rmatmul__``

    def __init__(self, data: Array, indices: Array, indptr: Array, shape: tuple[int, int]):
        self.data = data
        self.indices = indices
        self.indptr = indptr
        self.shape = tuple(shape)

    # -- pytree ---------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.data, self.indices, self.indptr), (self.shape,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def __repr__(self) -> str:
        return f"CSR(shape={self.shape}, nse={self.nse}, dtype={self.dtype})"

    def replace(self, **kwargs: Any) -> CSR:
        """A copy with some fields replaced (e.g. ``a.replace(data=new_data)``)."""
        fields = dict(data=self.data, indices=self.indices, indptr=self.indptr, shape=self.shape)
        unknown = set(kwargs) - set(fields)
        if unknown:
            raise TypeError(f"`replace` takes fields {sorted(fields)}; got {sorted(unknown)}.")
        fields.update(kwargs)
        return CSR(**fields)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dense(cls, x: Float[Array, "M K"], *, nse: int | None = None) -> CSR:
        """Compress the nonzero entries of a dense matrix.

        Args:
            x: ``[M, K]`` float matrix.
            nse: the static capacity (``>= 1``). ``None`` uses ``max(1, nnz)`` of a concrete
                ``x``; under ``jit`` it must be given (entries past ``nse``, in row-major
                order, would be dropped: choose an upper bound).

        Returns:
            The CSR matrix; ``to_dense()`` equals ``x``.

        Raises:
            TypeError: non-float ``x``.
            ValueError: non-2-D ``x``, ``nse`` missing under ``jit`` or smaller than a concrete
                ``nnz``.
        """
        x = _check_csr_dense(x, "x")
        return cls._pack(x, x != 0, nse)

    @classmethod
    def from_mask(cls, x: Float[Array, "M K"], mask: Bool[Array, "M K"], *,
                  nse: int | None = None) -> CSR:
        """The entries of ``x`` where ``mask`` is True, zeros included (the mask's pattern).

        This is how a weight pruned by `sparsejax.training` or `sparsejax.oneshot` deploys: the
        stored pattern is exactly the mask, so the values can keep training in place.

        Args:
            x: ``[M, K]`` float matrix.
            mask: bool ``[M, K]``.
            nse: the static capacity; see `from_dense` (``None``: ``max(1, mask.sum())``).

        Returns:
            The CSR matrix; ``to_dense()`` equals ``where(mask, x, 0)`` and ``nnz`` equals
            ``mask.sum()``.

        Raises:
            TypeError: non-float ``x``, non-bool ``mask``.
            ValueError: non-2-D ``x``, ``mask`` of another shape, bad ``nse``.
        """
        x = _check_csr_dense(x, "x")
        mask = check_bool_array(jnp.asarray(mask), "mask")
        if mask.shape != x.shape:
            raise ValueError(must_be("mask", f"a bool array of x's shape {x.shape}",
                                     f"shape {mask.shape}", raw=True))
        return cls._pack(x, mask, nse)

    @classmethod
    def _pack(cls, x: Array, keep: Array, nse: int | None) -> CSR:
        if nse is None:
            if not is_concrete(keep):
                raise ValueError(must_be("nse", "given under jit/vmap/grad (the capacity is a "
                                         "static array dimension): an int >= the stored entries",
                                         None))
            nse = max(1, int(np.sum(np.asarray(keep))))
        else:
            nse = check_int(nse, "nse", minimum=1)
            if is_concrete(keep) and int(np.sum(np.asarray(keep))) > nse:
                raise ValueError(must_be("nse", f">= the {int(np.sum(np.asarray(keep)))} stored "
                                         "entries", nse))
        data, indices, indptr = _csr_pack(x, keep, nse)
        return cls(data, indices, indptr, x.shape)

    @classmethod
    def from_scipy(cls, m: Any, *, nse: int | None = None, dtype: Any = None) -> CSR:
        """From any ``scipy.sparse`` matrix or array (explicitly stored zeros are kept).

        Duplicate entries are summed and columns sorted (on a copy).

        Args:
            m: a ``scipy.sparse`` matrix/array of shape ``[M, K]``.
            nse: the capacity (``None``: ``max(1, m.nnz)``).
            dtype: the values' dtype (``None``: ``m.dtype``; float64 becomes float32 unless
                ``jax_enable_x64`` is on).

        Returns:
            The CSR matrix.

        Raises:
            TypeError: ``m`` not a scipy sparse matrix, non-float values.
            ValueError: ``nse < m.nnz``.
        """
        try:
            import scipy.sparse as sp
        except ImportError as err:  # pragma: no cover - scipy is an optional dependency
            raise ImportError("CSR.from_scipy needs scipy (`pip install scipy`).") from err
        if not sp.issparse(m):
            raise TypeError(must_be("m", "a scipy.sparse matrix or array", type(m).__name__,
                                    raw=True))
        m = sp.csr_matrix(m, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        data = check_float_array(jnp.asarray(m.data, dtype), "m.data")
        nnz = int(m.nnz)
        nse = max(1, nnz) if nse is None else check_int(nse, "nse", minimum=1)
        if nse < nnz:
            raise ValueError(must_be("nse", f">= m.nnz = {nnz}", nse))
        pad = nse - nnz
        data = jnp.concatenate([data, jnp.zeros((pad,), data.dtype)])
        indices = jnp.asarray(np.concatenate([m.indices, np.zeros(pad, np.int64)]), jnp.int32)
        return cls(data, indices, jnp.asarray(m.indptr, jnp.int32), m.shape)

    def to_scipy(self) -> Any:
        """The ``scipy.sparse.csr_matrix`` of the ``nnz`` stored entries (padding dropped)."""
        import scipy.sparse as sp

        indptr = np.asarray(self.indptr)
        nnz = int(indptr[-1])
        data = np.asarray(self.data[:nnz].astype(jnp.float32) if self.dtype == jnp.bfloat16
                          else self.data[:nnz])
        return sp.csr_matrix((data, np.asarray(self.indices[:nnz]), indptr), shape=self.shape)

    @classmethod
    def from_bcsr(cls, m: Any) -> CSR:
        """From a 2-D `jax.experimental.sparse.BCSR` (no batch or dense dims); works under jit.

        Slots past ``indptr[-1]`` (BCSR's padding, whose column is ``K``) become this format's
        padding (value 0, column 0); the capacity ``nse`` is kept.

        Raises:
            TypeError: ``m`` not a BCSR.
            ValueError: ``m`` with batch or dense dimensions.
        """
        from jax.experimental import sparse as jsparse

        if not isinstance(m, jsparse.BCSR):
            raise TypeError(must_be("m", "a jax.experimental.sparse.BCSR", type(m).__name__,
                                    raw=True))
        if m.n_batch or m.n_dense or len(m.shape) != 2:
            raise ValueError(must_be("m", "a 2-D BCSR without batch or dense dimensions",
                                     f"n_batch={m.n_batch}, n_dense={m.n_dense}, "
                                     f"shape={m.shape}", raw=True))
        data = check_float_array(m.data, "m.data")
        indptr = jnp.asarray(m.indptr, jnp.int32)
        valid = jnp.arange(data.shape[0]) < indptr[-1]
        return cls(jnp.where(valid, data, jnp.zeros((), data.dtype)),
                   jnp.where(valid, m.indices, 0).astype(jnp.int32), indptr, m.shape)

    def to_bcsr(self) -> Any:
        """The `jax.experimental.sparse.BCSR` with the same arrays (same ``nse``; padded slots
        get column ``K``, BCSR's padding convention). Works under jit."""
        from jax.experimental import sparse as jsparse

        indices = jnp.where(self.valid(), self.indices, self.shape[1]).astype(jnp.int32)
        return jsparse.BCSR((self.data, indices, self.indptr), shape=self.shape)

    # -- properties -----------------------------------------------------------------------
    @property
    def dtype(self):
        """Dtype of the values."""
        return self.data.dtype

    @property
    def nse(self) -> int:
        """The static capacity (stored slots, including padding)."""
        return self.data.shape[-1]

    @property
    def nnz(self) -> Int[Array, ""]:
        """Number of stored entries, ``indptr[-1]`` (a scalar array; works under ``jit``)."""
        return self.indptr[-1]

    @property
    def density(self) -> Float[Array, ""]:
        """Fraction of stored entries: ``nnz / (M * K)`` (a scalar array)."""
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes stored: data + indices (including padded slots) + indptr."""
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)

    def row_ids(self) -> Int[Array, " nse"]:
        """``int32 [nse]``: the row of each slot (``M`` for a padded slot)."""
        return _csr_row_ids(self.indptr, self.data)

    def row_counts(self) -> Int[Array, " M"]:
        """``int32 [M]``: stored entries per row."""
        return jnp.diff(self.indptr)

    def valid(self) -> Bool[Array, " nse"]:
        """Bool ``[nse]``: which slots hold a stored entry (the first ``nnz``)."""
        return jnp.arange(self.nse) < self.indptr[-1]

    def mask(self) -> Bool[Array, "M K"]:
        """Bool ``[M, K]`` of the stored positions."""
        return _csr_to_dense(self.valid().astype(jnp.int8), self.indices, self.indptr,
                             self.shape) > 0

    # -- conversion -----------------------------------------------------------------------
    def to_dense(self) -> Float[Array, "M K"]:
        """The dense ``[M, K]`` matrix (zeros outside the stored entries)."""
        return _csr_to_dense(self.data, self.indices, self.indptr, self.shape)

    def transpose(self) -> CSR:
        """The CSR of the transpose ``[K, M]`` (same ``nse``; one sort of the slots, no dense
        matrix). Works under jit."""
        data, indices, indptr = _csr_transpose(self.data, self.indices, self.indptr, self.shape)
        return CSR(data, indices, indptr, (self.shape[1], self.shape[0]))

    @property
    def T(self) -> CSR:  # noqa: N802
        """Shorthand for `transpose`."""
        return self.transpose()


def _check_csr_dense(x: Any, name: str) -> Array:
    x = check_float_array(jnp.asarray(x), name)
    if x.ndim != 2:
        raise ValueError(must_be(name, "a 2-D matrix [M, K] (use jax.vmap for stacks)",
                                 f"shape {x.shape}", raw=True))
    return x

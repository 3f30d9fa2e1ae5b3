"""Block masks: one attention-mask type for every pattern and every backend.

A `BlockMask` describes which keys each query may attend to, at two levels:

* a **block map** ``int8[Bm, Hm, nq, nk]`` over ``(block_q, block_kv)`` tiles, per batch row and
  head (``Bm``/``Hm`` are the batch/head count or 1 for "broadcast"), with entries `EMPTY`
  (0, nothing kept: the kernel fetches nothing), `PARTIAL` (1, some kept: the kernel
  evaluates the token mask) and `FULL` (2, all kept: the kernel skips masking);
* a lazy **token predicate** (a `TokenPredicate`) consulted only inside partial blocks. It
  is evaluated on broadcastable integer index arrays ``(batch, head, q, kv)``, so it costs nothing
  until a kernel asks for one tile; it may be a position formula (causal, windows, ...), a
  materialised dense token mask, a lookup into a block-level selection, or any ``|``/``&``
  combination of those.

The meaning of a mask (what `BlockMask.to_dense` returns and every backend computes) is::

    kept(b, h, i, j) = i < seq_q and j < seq_kv and
                       (block_map[b, h, i // block_q, j // block_kv] == FULL or
                        (block_map[...] == PARTIAL and predicate(b, h, i, j)))

Every constructor keeps the predicate *consistent* with the block map (true on every valid token
of a full block, false on every valid token of an empty block). That is what makes ``|`` and
``&`` exact: block maps combine by three-valued logic, predicates by ``|``/``&``.

**Padding.** Sequence lengths need not be multiples of the block sizes: the block grid has
``nq = ceil(seq_q / block_q)`` rows and ``nk = ceil(seq_kv / block_kv)`` columns, blocks are
classified over their valid (in-range) tokens only, and kernels pad ``q``/``k``/``v`` internally,
never attend to a padded key and drop padded query rows. A query row with no kept key gets a zero
output (never NaN).

**Static vs dynamic.** A mask whose arrays are all NumPy arrays is *static*: it is hashable,
compares by value and computes its kernel metadata (`BlockMask.info`) once, exactly, in
NumPy. A mask built from ``jax.Array`` values (e.g. computed from ``q`` and ``k`` under ``jit``) is
*dynamic*; it is a registered pytree, so it can be returned from and passed into jitted
functions. Kernel metadata has a static width ``max_kv_blocks`` (the most kept KV blocks in any
query-block row): exact for static masks, an upper bound for dynamic ones (pattern functions
that know their budget pass it).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from sparsejax._blocks import EMPTY, FULL, PARTIAL, BlockIndex, numpy_or_jit, pack_block_map
from sparsejax._checks import check_positive_int

ArrayLike = Any  # np.ndarray | jax.Array


def _is_concrete(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    )


def _xp(*arrays: Any):
    """NumPy when every array is a NumPy array, else jax.numpy."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -------------------------------------------------------------------------------------------------
# Token predicates
# -------------------------------------------------------------------------------------------------


class TokenPredicate:
    """A lazy token-level mask: ``pred(b, h, q, kv) -> bool`` on broadcastable int32 index arrays.

    Subclasses are frozen dataclasses registered as pytrees (array fields are pytree leaves, the
    rest is static), so predicates travel through ``jit`` inside a `BlockMask`. Indices
    may point past the sequence (padding); the result there is ignored. Combine predicates with
    ``|`` and ``&``. Predicates should work on NumPy and JAX index arrays alike (use
    `array_namespace`), so static masks evaluate without compiling.
    """

    def __call__(self, b: Array, h: Array, q: Array, kv: Array) -> Array:
        raise NotImplementedError

    def __or__(self, other: TokenPredicate) -> TokenPredicate:
        return OrPredicate(self, other)

    def __and__(self, other: TokenPredicate) -> TokenPredicate:
        return AndPredicate(self, other)


def register_predicate(cls: type | None = None, *, data_fields: tuple[str, ...] = ()) -> Any:
    """Class decorator: make a `TokenPredicate` subclass a frozen dataclass and a pytree.

    Args:
        cls: The class.
        data_fields: Names of the array fields (pytree leaves); every other field is static and
            must be hashable.
    """

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        meta = [n for n in names if n not in data_fields]
        return jax.tree_util.register_dataclass(c, data_fields=list(data_fields), meta_fields=meta)

    return wrap if cls is None else wrap(cls)


@register_predicate(data_fields=("left", "right"))
class OrPredicate(TokenPredicate):
    """``left | right``."""

    left: TokenPredicate
    right: TokenPredicate

    def __call__(self, b, h, q, kv):
        return self.left(b, h, q, kv) | self.right(b, h, q, kv)


@register_predicate(data_fields=("left", "right"))
class AndPredicate(TokenPredicate):
    """``left & right``."""

    left: TokenPredicate
    right: TokenPredicate

    def __call__(self, b, h, q, kv):
        return self.left(b, h, q, kv) & self.right(b, h, q, kv)


def _bcast_index(idx, size):
    return idx * 0 if size == 1 else idx


def array_namespace(*xs: Any) -> Any:
    """``numpy`` when every argument is a NumPy array or scalar, else ``jax.numpy``.

    Predicates use it so that static masks evaluate in pure NumPy (no compilation) while the same
    code traces under ``jit``."""
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


@register_predicate(data_fields=("mask",))
class DenseTokens(TokenPredicate):
    """A materialised token mask ``bool[B|1, H|1, seq_q, seq_kv]`` (indices clipped into range)."""

    mask: ArrayLike

    def __call__(self, b, h, q, kv):
        bm, hm, lq, lk = self.mask.shape
        xp = array_namespace(self.mask, b, h, q, kv)
        m = xp.asarray(self.mask)
        return m[
            _bcast_index(b, bm),
            _bcast_index(h, hm),
            xp.clip(q, 0, lq - 1),
            xp.clip(kv, 0, lk - 1),
        ]


@register_predicate(data_fields=("blocks",))
class BlockLookup(TokenPredicate):
    """A block-level selection ``bool[B|1, H|1, nq, nk]`` seen at token level."""

    blocks: ArrayLike
    block_q: int
    block_kv: int

    def __call__(self, b, h, q, kv):
        bm, hm, nq, nk = self.blocks.shape
        xp = array_namespace(self.blocks, b, h, q, kv)
        m = xp.asarray(self.blocks)
        return m[
            _bcast_index(b, bm),
            _bcast_index(h, hm),
            xp.clip(q // self.block_q, 0, nq - 1),
            xp.clip(kv // self.block_kv, 0, nk - 1),
        ]


@register_predicate
class FunctionPredicate(TokenPredicate):
    """Wraps a user function ``fn(b, h, q, kv) -> bool`` (jnp ops on broadcastable int arrays).

    The function is static (hashed by identity); close over arrays only if they are NumPy constants.
    """

    fn: Any

    def __call__(self, b, h, q, kv):
        out = self.fn(b, h, q, kv)
        return array_namespace(out).asarray(out, dtype=bool)


# -------------------------------------------------------------------------------------------------
# Kernel metadata
# -------------------------------------------------------------------------------------------------


BlockMaskInfo = BlockIndex
"""The kernel metadata of a `BlockMask` (`BlockMask.info`): the shared `sparsejax._blocks.BlockIndex`.

For every (batch-or-broadcast, head-or-broadcast, query block) the kept KV blocks in ascending
order, padded to a static width ``K = max_kv_blocks`` (cf. splash ``MaskInfo``): ``indices``
(alias ``kv_indices``) ``int32[Bm, Hm, nq, K]``, padding slots repeating the row's last kept index
so a pipelined kernel fetches nothing new; ``counts`` ``int32[Bm, Hm, nq]``; ``kinds`` (alias
``block_kinds``) ``int8[Bm, Hm, nq, K]``, `PARTIAL` or `FULL` per kept entry and `EMPTY` for
padding slots.
"""


# -------------------------------------------------------------------------------------------------
# The block mask
# -------------------------------------------------------------------------------------------------


@numpy_or_jit(static_argnums=(2,))
def _combine_maps(a: ArrayLike, b: ArrayLike, op: str, *, xp) -> ArrayLike:
    if op == "or":  # FULL if either FULL, EMPTY if both EMPTY, else PARTIAL
        out = xp.where(
            (a == FULL) | (b == FULL), FULL, xp.where((a == EMPTY) & (b == EMPTY), EMPTY, PARTIAL)
        )
    else:  # EMPTY if either EMPTY, FULL if both FULL, else PARTIAL
        out = xp.where(
            (a == EMPTY) | (b == EMPTY), EMPTY, xp.where((a == FULL) & (b == FULL), FULL, PARTIAL)
        )
    return out.astype(xp.int8)


@numpy_or_jit(static_argnums=(1,))
def _select_kind(block_bool: ArrayLike, kind: int, *, xp) -> ArrayLike:
    """``int8``: ``kind`` where ``block_bool``, `EMPTY` elsewhere (NumPy in, NumPy out)."""
    return xp.where(block_bool, kind, EMPTY).astype(xp.int8)


@numpy_or_jit(static_argnums=(1, 2))
def _classify_blocks(token_mask: ArrayLike, block_q: int, block_kv: int, *, xp) -> ArrayLike:
    """``int8[Bm, Hm, nq, nk]`` block kinds of a token mask, over its in-range tokens."""
    bm, hm, lq, lk = token_mask.shape
    nq, nk = _cdiv(lq, block_q), _cdiv(lk, block_kv)
    pads = [(0, 0), (0, 0), (0, nq * block_q - lq), (0, nk * block_kv - lk)]
    shape6 = (bm, hm, nq, block_q, nk, block_kv)
    any_ = xp.pad(token_mask, pads, constant_values=False).reshape(shape6).any(axis=(3, 5))
    all_ = xp.pad(token_mask, pads, constant_values=True).reshape(shape6).all(axis=(3, 5))
    return xp.where(all_, FULL, xp.where(any_, PARTIAL, EMPTY)).astype(xp.int8)


def _leaves_static(tree: Any) -> bool:
    return all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass(frozen=True, eq=False)
class BlockMask:
    """A block-sparse attention mask (see the module docstring for the exact semantics).

    Build one with `from_dense`, `from_blocks`, `from_predicate` or the pattern
    functions in `sparsejax.attention` (``causal_mask``, ``sliding_window_mask``, ...); combine
    with ``|`` and ``&``; pass it as ``mask=`` to `sparsejax.attention.attention`.

    Attributes:
        block_map: ``int8[Bm, Hm, nq, nk]`` of `EMPTY` / `PARTIAL` / `FULL`.
        predicate: The token-level mask consulted in partial blocks.
        seq_q: Number of query tokens.
        seq_kv: Number of key/value tokens.
        block_q: Query block size.
        block_kv: Key/value block size.
        max_kv_blocks: Static width of `info`: the most kept KV blocks of any query-block row
            (exact for static masks, an upper bound for dynamic ones).
    """

    block_map: ArrayLike
    predicate: TokenPredicate
    seq_q: int
    seq_kv: int
    block_q: int
    block_kv: int
    max_kv_blocks: int

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        block_map: ArrayLike,
        predicate: TokenPredicate,
        *,
        seq_q: int,
        seq_kv: int,
        block_q: int,
        block_kv: int,
        max_kv_blocks: int | None = None,
    ) -> BlockMask:
        """Validate and assemble a mask from a block map and a consistent predicate.

        Args:
            block_map: ``int[Bm, Hm, nq, nk]`` with values in ``{0, 1, 2}``; NumPy for a static
                mask.
            predicate: Token predicate; must be true on every valid token of a ``FULL`` block and
                false on every valid token of an ``EMPTY`` block.
            seq_q: Query length; ``nq == ceil(seq_q / block_q)``.
            seq_kv: Key length; ``nk == ceil(seq_kv / block_kv)``.
            block_q: Query block size.
            block_kv: Key block size.
            max_kv_blocks: Upper bound on kept KV blocks per query-block row; computed exactly when
                the block map is concrete, else defaults to ``nk``.

        Returns:
            The mask.
        """
        block_q = check_positive_int(block_q, "block_q")
        block_kv = check_positive_int(block_kv, "block_kv")
        seq_q = check_positive_int(seq_q, "seq_q")
        seq_kv = check_positive_int(seq_kv, "seq_kv")
        if not isinstance(predicate, TokenPredicate):
            raise TypeError(f"predicate must be a TokenPredicate, got {type(predicate).__name__}")
        if getattr(block_map, "ndim", None) != 4:
            raise ValueError(
                f"block_map must have 4 dims [B|1, H|1, nq, nk], got shape "
                f"{getattr(block_map, 'shape', None)}"
            )
        nq, nk = _cdiv(seq_q, block_q), _cdiv(seq_kv, block_kv)
        if tuple(block_map.shape[2:]) != (nq, nk):
            raise ValueError(
                f"block_map has block grid {tuple(block_map.shape[2:])}, expected (nq, nk) = "
                f"({nq}, {nk}) for seq ({seq_q}, {seq_kv}) and blocks ({block_q}, {block_kv})"
            )
        xp = _xp(block_map)
        block_map = block_map.astype(xp.int8) if xp is np else jnp.asarray(block_map, jnp.int8)
        if _is_concrete(block_map):
            exact = int((np.asarray(block_map) != EMPTY).sum(-1).max(initial=0))  # on the host
            max_kv_blocks = exact if max_kv_blocks is None else min(int(max_kv_blocks), exact)
        elif max_kv_blocks is None:
            max_kv_blocks = nk
        else:
            max_kv_blocks = check_positive_int(max_kv_blocks, "max_kv_blocks")
            max_kv_blocks = min(max_kv_blocks, nk)
        return cls(block_map, predicate, seq_q, seq_kv, block_q, block_kv, int(max_kv_blocks))

    @classmethod
    def from_dense(
        cls,
        token_mask: Bool[ArrayLike, "b h seq_q seq_kv"],
        block_q: int,
        block_kv: int,
    ) -> BlockMask:
        """A mask from a dense token mask ``bool[B|1, H|1, seq_q, seq_kv]`` (True = attend).

        Blocks are classified over their in-range tokens. A NumPy input gives a static mask.

        Args:
            token_mask: Boolean token mask; a 2-D ``[seq_q, seq_kv]`` mask is broadcast to
                ``[1, 1, seq_q, seq_kv]``.
            block_q: Query block size.
            block_kv: Key block size.

        Returns:
            The mask; its ``predicate`` is a `DenseTokens` over ``token_mask``.
        """
        block_q = check_positive_int(block_q, "block_q")
        block_kv = check_positive_int(block_kv, "block_kv")
        if getattr(token_mask, "dtype", None) != np.dtype(bool):
            raise TypeError(
                f"token_mask must be a bool array, got dtype {getattr(token_mask, 'dtype', None)}"
            )
        if token_mask.ndim == 2:
            token_mask = token_mask[None, None]
        if token_mask.ndim != 4:
            raise ValueError(
                f"token_mask must have 2 or 4 dims ([B|1, H|1, seq_q, seq_kv]), got shape "
                f"{token_mask.shape}"
            )
        _, _, lq, lk = token_mask.shape
        block_map = _classify_blocks(token_mask, block_q, block_kv)
        return cls.create(
            block_map,
            DenseTokens(token_mask),
            seq_q=lq,
            seq_kv=lk,
            block_q=block_q,
            block_kv=block_kv,
        )

    @classmethod
    def from_blocks(
        cls,
        block_bool: Bool[ArrayLike, "b h nq nk"],
        block_q: int,
        block_kv: int,
        seq_q: int,
        seq_kv: int,
        token_mask: Bool[ArrayLike, "b h seq_q seq_kv"] | TokenPredicate | None = None,
        *,
        max_kv_blocks: int | None = None,
    ) -> BlockMask:
        """A mask from a block-level selection (what block top-k style patterns produce).

        Args:
            block_bool: ``bool[B|1, H|1, nq, nk]``: True keeps the block.
            block_q: Query block size.
            block_kv: Key block size.
            seq_q: Query length (``nq == ceil(seq_q / block_q)``).
            seq_kv: Key length (``nk == ceil(seq_kv / block_kv)``).
            token_mask: Optional token-level restriction inside kept blocks: a ``bool`` array
                ``[B|1, H|1, seq_q, seq_kv]`` (blocks are then classified from it) or a
                `TokenPredicate` (kept blocks are then marked partial). ``None``: kept blocks
                are full.
            max_kv_blocks: Static bound on kept blocks per row for a dynamic ``block_bool`` (e.g.
                the ``k`` of a top-k); ignored (computed exactly) for concrete inputs.

        Returns:
            The mask.
        """
        block_q = check_positive_int(block_q, "block_q")
        block_kv = check_positive_int(block_kv, "block_kv")
        if getattr(block_bool, "dtype", None) != np.dtype(bool):
            raise TypeError(
                f"block_bool must be a bool array, got dtype {getattr(block_bool, 'dtype', None)}"
            )
        if block_bool.ndim != 4:
            raise ValueError(
                f"block_bool must have 4 dims [B|1, H|1, nq, nk], got shape {block_bool.shape}"
            )
        lookup = BlockLookup(block_bool, block_q, block_kv)
        if token_mask is None:
            block_map = _select_kind(block_bool, FULL)
            pred: TokenPredicate = lookup
        elif isinstance(token_mask, TokenPredicate):
            block_map = _select_kind(block_bool, PARTIAL)
            pred = lookup & token_mask
        else:
            dense = cls.from_dense(token_mask, block_q, block_kv)
            if dense.seq_q != seq_q or dense.seq_kv != seq_kv:
                raise ValueError(
                    f"token_mask has seq ({dense.seq_q}, {dense.seq_kv}), "
                    f"expected ({seq_q}, {seq_kv})"
                )
            xp = _xp(block_bool, dense.block_map)
            block_map = xp.where(block_bool, dense.block_map, EMPTY).astype(xp.int8)
            pred = lookup & dense.predicate
        return cls.create(
            block_map,
            pred,
            seq_q=seq_q,
            seq_kv=seq_kv,
            block_q=block_q,
            block_kv=block_kv,
            max_kv_blocks=max_kv_blocks,
        )

    @classmethod
    def from_predicate(
        cls,
        predicate: TokenPredicate,
        seq_q: int,
        seq_kv: int,
        block_q: int,
        block_kv: int,
        *,
        batch: int = 1,
        heads: int = 1,
    ) -> BlockMask:
        """A static mask from any predicate, classifying blocks by evaluating it on every token.

        Costs ``O(batch * heads * seq_q * seq_kv)`` once; the pattern functions compute their block
        maps analytically instead.

        Args:
            predicate: The token predicate (a `TokenPredicate`).
            seq_q: Query length.
            seq_kv: Key length.
            block_q: Query block size.
            block_kv: Key block size.
            batch: Batch rows the predicate distinguishes (1 = broadcast).
            heads: Heads the predicate distinguishes (1 = broadcast).

        Returns:
            A static mask whose predicate is ``predicate``.
        """
        seq_q = check_positive_int(seq_q, "seq_q")
        seq_kv = check_positive_int(seq_kv, "seq_kv")
        if not isinstance(predicate, TokenPredicate):
            raise TypeError(f"predicate must be a TokenPredicate, got {type(predicate).__name__}")
        xp = np if _leaves_static(predicate) else jnp
        dense = _evaluate(predicate, batch, heads, seq_q, seq_kv, xp=xp)
        block_map = cls.from_dense(np.asarray(dense), block_q, block_kv).block_map
        return cls.create(
            block_map, predicate, seq_q=seq_q, seq_kv=seq_kv, block_q=block_q, block_kv=block_kv
        )

    # -- properties -----------------------------------------------------------------------------

    @property
    def num_q_blocks(self) -> int:
        """``nq = ceil(seq_q / block_q)``."""
        return self.block_map.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        """``nk = ceil(seq_kv / block_kv)``."""
        return self.block_map.shape[3]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Bm, Hm, seq_q, seq_kv)``; ``Bm``/``Hm`` are 1 where the mask broadcasts."""
        return (self.block_map.shape[0], self.block_map.shape[1], self.seq_q, self.seq_kv)

    @property
    def is_static(self) -> bool:
        """True when every array of the mask is a NumPy array (hashable, metadata computed once)."""
        return isinstance(self.block_map, np.ndarray) and _leaves_static(self.predicate)

    @property
    def density(self) -> ArrayLike:
        """Fraction of non-empty blocks (what a block-sparse kernel computes), over all (b, h)."""
        return (self.block_map != EMPTY).mean()

    @property
    def token_density(self) -> ArrayLike:
        """Fraction of kept (query, key) token pairs, over all (b, h). Materialises the mask."""
        return self.to_dense().mean()

    # -- conversions ----------------------------------------------------------------------------

    def to_dense(self) -> Bool[Array, "b h seq_q seq_kv"]:
        """The token mask ``bool[Bm, Hm, seq_q, seq_kv]`` this mask means (what kernels compute)."""
        return _to_dense(self)

    def info(self) -> BlockMaskInfo:
        """The compressed per-row block lists (width `max_kv_blocks`, at least 1).

        Static masks compute them once in NumPy and cache them; dynamic masks compute them with
        ``jax.numpy`` (traceable).
        """
        width = max(1, self.max_kv_blocks)
        if isinstance(self.block_map, np.ndarray):
            cache = self.__dict__.setdefault("_info_cache", {})
            if width not in cache:
                cache[width] = pack_block_map(self.block_map, width)
            return cache[width]
        return pack_block_map(self.block_map, width)

    def broadcast_to(self, batch: int, heads: int) -> BlockMask:
        """The mask with its block map broadcast to ``[batch, heads, nq, nk]``."""
        bm, hm = self.block_map.shape[:2]
        for name, have, want in (("batch", bm, batch), ("heads", hm, heads)):
            if have not in (1, want):
                raise ValueError(f"mask has {name} dim {have}; cannot broadcast to {name}={want}")
        xp = _xp(self.block_map)
        new = xp.broadcast_to(self.block_map, (batch, heads) + self.block_map.shape[2:])
        if xp is np:
            new = np.ascontiguousarray(new)
        return dataclasses.replace(self, block_map=new)

    # -- composition ----------------------------------------------------------------------------

    def _combine(self, other: BlockMask, op: str) -> BlockMask:
        if not isinstance(other, BlockMask):
            return NotImplemented
        geom = ("seq_q", "seq_kv", "block_q", "block_kv")
        if any(getattr(self, g) != getattr(other, g) for g in geom):
            a = tuple(getattr(self, g) for g in geom)
            b = tuple(getattr(other, g) for g in geom)
            raise ValueError(
                "cannot combine masks with different (seq_q, seq_kv, block_q, block_kv): "
                f"{a} vs {b}"
            )
        for i, name in ((0, "batch"), (1, "heads")):
            x, y = self.block_map.shape[i], other.block_map.shape[i]
            if x != y and 1 not in (x, y):
                raise ValueError(f"cannot combine masks with {name} dims {x} and {y}")
        block_map = _combine_maps(self.block_map, other.block_map, op)
        pred = self.predicate | other.predicate if op == "or" else self.predicate & other.predicate
        if op == "or":
            bound = min(self.num_kv_blocks, self.max_kv_blocks + other.max_kv_blocks)
        else:
            bound = min(self.max_kv_blocks, other.max_kv_blocks)
        return BlockMask.create(
            block_map,
            pred,
            seq_q=self.seq_q,
            seq_kv=self.seq_kv,
            block_q=self.block_q,
            block_kv=self.block_kv,
            max_kv_blocks=bound,
        )

    def __or__(self, other: BlockMask) -> BlockMask:
        return self._combine(other, "or")

    def __and__(self, other: BlockMask) -> BlockMask:
        return self._combine(other, "and")

    # -- hashing (static masks only) ------------------------------------------------------------

    def _key(self):
        leaves, treedef = jax.tree_util.tree_flatten(self.predicate)
        digest = hashlib.sha1(np.ascontiguousarray(self.block_map).tobytes())
        for leaf in leaves:
            digest.update(str((leaf.shape, leaf.dtype)).encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
        geom = (self.seq_q, self.seq_kv, self.block_q, self.block_kv, self.block_map.shape)
        return (digest.hexdigest(), str(treedef), geom)

    def __hash__(self) -> int:
        if not self.is_static:
            raise TypeError("a dynamic BlockMask (holding jax arrays) is not hashable")
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockMask):
            return NotImplemented
        if self is other:
            return True
        if not (self.is_static and other.is_static):
            return False
        return self._key() == other._key()

    def __repr__(self) -> str:
        kind = "static" if self.is_static else "dynamic"
        return (
            f"BlockMask({kind}, shape={self.shape}, blocks=({self.block_q}, {self.block_kv}), "
            f"grid={self.block_map.shape[2:]}, max_kv_blocks={self.max_kv_blocks})"
        )


jax.tree_util.register_dataclass(
    BlockMask,
    data_fields=["block_map", "predicate"],
    meta_fields=["seq_q", "seq_kv", "block_q", "block_kv", "max_kv_blocks"],
)


@numpy_or_jit()
def _to_dense(mask: BlockMask, *, xp) -> Array:
    bm, hm = mask.block_map.shape[:2]
    tok = _evaluate(mask.predicate, bm, hm, mask.seq_q, mask.seq_kv, xp=xp)
    blocks = xp.asarray(mask.block_map)
    blocks = xp.repeat(xp.repeat(blocks, mask.block_q, axis=2), mask.block_kv, axis=3)
    blocks = blocks[:, :, : mask.seq_q, : mask.seq_kv]
    return (blocks == FULL) | ((blocks == PARTIAL) & tok)


def _evaluate(
    pred: TokenPredicate, batch: int, heads: int, seq_q: int, seq_kv: int, xp=jnp
) -> Array:
    """Evaluate ``pred`` on the full grid: ``bool[batch, heads, seq_q, seq_kv]``.

    With ``xp=np`` (static predicates only) the evaluation is pure NumPy: no compilation."""
    b = xp.arange(batch, dtype=xp.int32)[:, None, None, None]
    h = xp.arange(heads, dtype=xp.int32)[None, :, None, None]
    q = xp.arange(seq_q, dtype=xp.int32)[None, None, :, None]
    kv = xp.arange(seq_kv, dtype=xp.int32)[None, None, None, :]
    out = pred(b, h, q, kv)
    return xp.broadcast_to(xp.asarray(out, bool), (batch, heads, seq_q, seq_kv))


def evaluate_predicate(
    predicate: TokenPredicate, batch: int, heads: int, seq_q: int, seq_kv: int
) -> Bool[Array, "batch heads seq_q seq_kv"]:
    """Evaluate a token predicate on every token: ``bool[batch, heads, seq_q, seq_kv]``.

    Args:
        predicate: The predicate.
        batch: Batch rows to evaluate (1 for a broadcast predicate).
        heads: Heads to evaluate.
        seq_q: Query length.
        seq_kv: Key length.

    Returns:
        The dense token mask of the predicate alone (block map not consulted).
    """
    xp = np if _leaves_static(predicate) else jnp
    return _evaluate(predicate, batch, heads, seq_q, seq_kv, xp=xp)

"""DSEE: low-rank plus sparse weight updates, ``W + scale * (A B + S)`` (VITA-Group/DSEE).

The sparse part's support comes from a GreBsmo-style low-rank + sparse split of the *pretrained*
weight (`grebsmo`, a transcription of the reference's ``run_glue.py`` ``sparse_method="grebsmo"``
loop): the ``num_sparse`` largest ``|S|`` of ``W ~ U V + S``. The low-rank factors start as the
reference's (``A ~ N(0, 0.02^2)``, ``B = 0``), the sparse values at zero, and the update is scaled
by ``scale = lora_alpha / rank`` (``modeling_bert.py``: both ``lora_b(lora_a(x))`` and
``lora_s(x)`` are multiplied by ``lora_alpha / lora_r``).

Kernels are Flax-style ``[in, out]``; the reference decomposes torch's ``[out, in]`` weight, so
`init` runs `grebsmo` on ``kernel.T`` and transposes the support back. A delta tree mirrors the
params with a `DseeDelta` where a leaf is fine-tuned (``None`` elsewhere); `train` is the optax
transform that trains ``A``, ``B`` and the sparse values only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float

from sparsejax import masks as _masks
from sparsejax._checks import (
    check_float,
    check_float_array,
    check_int,
    check_sparsity,
    must_be,
)
from sparsejax.peft.delta import (
    SparseDelta,
    _scatter_add,
    map_kernels,
    map_nodes,
    node_grads,
    trainables_optimizer,
)

PyTree = Any
__all__ = ["DseeDelta", "apply", "grebsmo", "init", "is_dsee", "merge", "support", "train",
           "trainable_count"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DseeDelta:
    """The DSEE update of one ``[in, out]`` kernel: ``scale * (a @ b + S)``.

    Attributes:
        a: ``[in, rank]`` low-rank factor (the reference's ``lora_a.weight.T``).
        b: ``[rank, out]`` low-rank factor (``lora_b.weight.T``; zero at init).
        sparse: the `SparseDelta` ``S`` (flat indices into the kernel, trainable values).
        scale: ``lora_alpha / rank`` (static).
    """

    a: Float[Array, "din r"]
    b: Float[Array, "r dout"]
    sparse: SparseDelta
    scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))

    def dense(self) -> Float[Array, "din dout"]:
        """The dense update ``scale * (a @ b + S)`` of the kernel's shape."""
        low = self.a @ self.b
        return self.scale * _scatter_add(low, self.sparse)


def is_dsee(x: Any) -> bool:
    """Whether ``x`` is a `DseeDelta`."""
    return isinstance(x, DseeDelta)


def _is_node(x: Any) -> bool:
    return x is None or isinstance(x, DseeDelta)


def grebsmo(
    w: Float[Array, "rows cols"],
    key: jax.Array,
    *,
    rank_steps: int = 100,
    inner_steps: int = 2,
    rank_increment: int = 5,
    threshold: float = 0.01,
) -> tuple[Float[Array, "rows r"], Float[Array, "r cols"], Float[Array, "rows cols"]]:
    """The reference's greedy low-rank + sparse split ``w ~ u @ v + s`` (a one-off step, on the
    host: numpy's LAPACK Householder QR, as ``torch.qr``, in ``w``'s dtype; not traceable).

    Starting from ``v ~ N(0, 1)`` of shape ``[1, cols]``, ``rank_steps`` times: reset ``s = 0``,
    then ``inner_steps`` times ``u = qr((w - s) v^T).Q``, ``v = u^T (w - s)``, ``s = w - u v``
    with ``|s| < threshold`` set to 0; then grow ``v`` by the first ``rank_increment`` rows of
    ``qr(w - u v - s).R`` (from the QR of its first ``rank_increment`` columns). The rank
    saturates at ``min(rows, cols)`` (then ``s`` is ~0: choose
    ``rank_steps`` below ``min(rows, cols) / rank_increment``; the reference's 100 suits 768).

    Args:
        w: the matrix (the reference passes torch's ``[out, in]`` weight).
        key: PRNG key of the initial ``v``.
        rank_steps: outer iterations (the reference's ``range(100)``).
        inner_steps: alternations per rank (2).
        rank_increment: rows added to ``v`` per outer iteration (5).
        threshold: entries of ``s`` below it in magnitude are zeroed (0.01).

    Returns:
        ``(u, v, s)``: the last low-rank fit (``u`` orthonormal columns) and the sparse part,
        computed in ``w``'s dtype.
    """
    w = check_float_array(w, "w")
    if w.ndim != 2:
        raise ValueError(must_be("w", "a 2-D matrix", f"shape {tuple(w.shape)}", raw=True))
    rank_steps = check_int(rank_steps, "rank_steps", minimum=1)
    inner_steps = check_int(inner_steps, "inner_steps", minimum=1)
    rank_increment = check_int(rank_increment, "rank_increment", minimum=1)
    threshold = check_float(threshold, "threshold", minimum=0.0)
    w_np = np.asarray(w)
    v = np.asarray(jax.random.normal(key, (1, w.shape[1]), w.dtype))
    u = s = fit_v = None
    for _ in range(rank_steps):  # numpy: the shapes grow every step (no recompiles)
        s = np.zeros_like(w_np)
        for _ in range(inner_steps):
            u = np.linalg.qr((w_np - s) @ v.T)[0]
            v = u.T @ (w_np - s)
            s = w_np - u @ v
            s[np.abs(s) < threshold] = 0
        e = w_np - u @ v - s
        fit_v = v
        # qr(e).R[:k] = Q_k^T e, Q_k the first k Householder columns, which only the first k
        # columns of e determine: O(rows cols k) instead of a full QR
        q_k = np.linalg.qr(e[:, :rank_increment])[0]
        v = np.concatenate([v, q_k.T @ e], axis=0)
    return jnp.asarray(u), jnp.asarray(fit_v), jnp.asarray(s)


def support(w: Float[Array, "rows cols"], num_sparse: int, key: jax.Array,
            **grebsmo_kwargs: Any) -> Bool[Array, "rows cols"]:
    """DSEE's sparse support: the ``num_sparse`` largest ``|s|`` of `grebsmo` ``(w)``.

    The reference keeps ``|s| >= `` the ``num_sparse``-th largest (more on ties); this keeps
    exactly ``num_sparse`` (ties by lower flat index, as `masks.topk`; chosen on the host).

    Args:
        w: the matrix decomposed (torch layout ``[out, in]`` to follow the reference).
        num_sparse: entries kept, in ``[1, w.size]``.
        key: PRNG key of `grebsmo`.
        **grebsmo_kwargs: ``rank_steps``, ``inner_steps``, ``rank_increment``, ``threshold``.

    Returns:
        bool mask of ``w``'s shape with ``num_sparse`` ``True``.
    """
    w = check_float_array(w, "w")
    num_sparse = check_int(num_sparse, "num_sparse", minimum=1)
    if num_sparse > w.size:
        raise ValueError(must_be("num_sparse", f"at most w.size = {w.size}", num_sparse))
    s = np.abs(np.asarray(grebsmo(w, key, **grebsmo_kwargs)[2])).ravel()
    # on the host like grebsmo (no compile per shape): masks.topk's order, ties by lower index
    keep = np.zeros(s.size, bool)
    keep[np.argsort(-s, kind="stable")[:num_sparse]] = True
    return jnp.asarray(keep.reshape(w.shape))


def init(
    params: PyTree,
    *,
    rank: int,
    num_sparse: int | Callable[[tuple[int, int]], int],
    key: jax.Array,
    where: Any = None,
    alpha: float | None = None,
    **grebsmo_kwargs: Any,
) -> PyTree:
    """A DSEE delta tree over the ``[in, out]`` kernels of ``params``.

    Args:
        params: the frozen params tree.
        rank: the low-rank factors' rank (``lora_r``).
        num_sparse: sparse entries per kernel (``num_sparse``; capped at the kernel's size), or
            a function of the ``[in, out]`` shape giving it (e.g. ``lambda s: rank * sum(s)``).
        key: PRNG key (``A``'s init and each `grebsmo`).
        where: leaf selector (`sparsejax.select`; default: float kernels of ``ndim >= 2``);
            selected leaves must be 2-D.
        alpha: ``lora_alpha``; ``scale = alpha / rank`` (default ``alpha = rank``: scale 1).
        **grebsmo_kwargs: passed to `grebsmo`.

    Returns:
        a tree mirroring ``params``: `DseeDelta` (``a ~ N(0, 0.02^2)``, ``b = 0``, sparse values
        0) on the selected leaves, ``None`` elsewhere.

    Raises:
        ValueError: a bad ``rank`` / ``num_sparse`` / ``alpha``, a selected leaf not 2-D.
    """
    rank = check_int(rank, "rank", minimum=1)
    count = num_sparse if callable(num_sparse) else None
    if count is None:
        num_sparse = check_int(num_sparse, "num_sparse", minimum=1)
    alpha = float(rank) if alpha is None else check_float(alpha, "alpha")

    def one(p, k_split, k_a):
        din, dout = jnp.shape(p)
        dtype = jnp.result_type(p)
        k = check_int(count((din, dout)), "num_sparse(shape)", minimum=1) if count else num_sparse
        mask = np.asarray(support(np.asarray(p).T, min(k, din * dout), k_split,
                                  **grebsmo_kwargs)).T
        idx = jnp.asarray(np.flatnonzero(mask), jnp.int32)
        a = jax.random.normal(k_a, (din, rank), dtype) * np.asarray(0.02, dtype)
        sparse = SparseDelta(idx, jnp.asarray(np.zeros(idx.shape, dtype)), None, (din, dout))
        return DseeDelta(a, jnp.asarray(np.zeros((rank, dout), dtype)), sparse, alpha / rank)

    return map_kernels(one, params, where, key, "DSEE")


def trainable_count(delta: PyTree) -> int:
    """Trainable numbers of a DSEE delta tree: ``a``, ``b`` and the sparse values."""
    return sum(d.a.size + d.b.size + d.sparse.values.size
               for d in jax.tree.leaves(delta, is_leaf=is_dsee) if is_dsee(d))


def _map(fn: Any, params: PyTree, delta: PyTree) -> PyTree:
    return map_nodes(fn, params, delta, DseeDelta, lambda d: d.sparse.shape, "delta")


def apply(params: PyTree, delta: PyTree) -> PyTree:
    """The fine-tuned params: each kernel ``w + scale * (a @ b + S)`` (differentiable in the
    delta's ``a``, ``b`` and sparse values).

    Args:
        params: the frozen params tree.
        delta: a DSEE delta tree mirroring it (`init`).

    Returns:
        params with every fine-tuned kernel replaced.
    """
    return _map(lambda p, d: p + d.dense().astype(jnp.result_type(p)), params, delta)


def merge(params: PyTree, delta: PyTree, sparsity: float | None = None) -> PyTree:
    """Fold the delta into plain kernels (equal to `apply`), optionally magnitude-pruning them.

    Args:
        params: the frozen params tree.
        delta: its DSEE delta tree.
        sparsity: if given, each merged kernel keeps its ``round(size * (1 - sparsity))`` largest
            ``|w|`` (`masks.topk`; the paper's optional pruning of the merged weights).

    Returns:
        the merged params (the base is unchanged: keep it to go back).
    """
    merged = apply(params, delta)
    if sparsity is None:
        return merged
    check_sparsity(sparsity)

    def prune(p, d):
        k = _masks.kept_count(p.size, sparsity)
        return jnp.where(_masks.topk(jnp.abs(p), k), p, jnp.zeros((), p.dtype))

    return _map(prune, merged, delta)


def _trainables(tree: PyTree) -> list:
    return [(d.a, d.b, d.sparse.values) for d in jax.tree.leaves(tree, is_leaf=is_dsee)
            if is_dsee(d)]


def _chain(g: jax.Array, d: DseeDelta) -> tuple:
    g = g.astype(d.a.dtype) * d.scale  # chain rule through w + scale * (a b + S)
    return g @ d.b.T, d.a.T @ g, jnp.ravel(g)[d.sparse.indices]


def _grads(updates: PyTree, params: PyTree) -> list:
    return node_grads(updates, params, DseeDelta, lambda d: d.sparse.shape,
                      lambda g: (g.a, g.b, g.sparse.values), _chain)


def train(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """An optax transform that trains only the ``a``, ``b`` and sparse values of DSEE deltas.

    ``inner``'s state is allocated for those arrays only; every other leaf of the params it is
    given (the frozen base, the sparse indices) gets a zero update and no state.

    Args:
        inner: the optimizer (e.g. ``optax.adamw(1e-3)``).

    Returns:
        a transform whose ``update(grads, state, params)`` takes ``grads`` mirroring the delta
        tree up to each `DseeDelta`: either a `DseeDelta` of gradients (``jax.grad(...,
        allow_int=True)`` over the delta) or the dense gradient of the fine-tuned kernel (the
        gradient at `apply`'s output; the chain rule is applied here).
    """
    return trainables_optimizer(inner, _trainables, _grads, _updates_tree, "dsee.train")


def _updates_tree(params: PyTree, updates: list) -> PyTree:
    """``train``'s updates: a `DseeDelta` of ``(a, b, values)`` updates at each delta (zero
    index updates), zeros at every other array leaf."""
    it = iter(updates)

    def one(d):
        if d is None:
            return None
        if is_dsee(d):
            ua, ub, uv = next(it)
            s = d.sparse
            return DseeDelta(ua, ub, SparseDelta(jnp.zeros_like(s.indices), uv, None, s.shape),
                             d.scale)
        return jnp.zeros_like(d)

    return jax.tree.map(one, params, is_leaf=_is_node)

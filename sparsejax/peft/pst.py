"""PST: parameter-efficient sparse training (alibaba/AliceMind ``S4/PST/pst/sparse.py``).

Each fine-tuned kernel ``W`` (frozen) gets a low-rank weight update and a low-rank + structured
importance score, all trainable (`PstFactors`); the forward uses ``M * W'`` with::

    W' = W + beta * v @ u
    scores = |W'| + alpha1 * b @ a + alpha2 * (col 1^T + 1 row^T)
    M = the top-(1 - s) of scores (the smallest floor(size * s) scores pruned)

and the gradient reaches ``scores`` straight through the binarisation (``SparseBinarizer``'s
backward is the identity). The sparsity ``s`` follows the reference's cubic schedule (`schedule`,
built on `sparsejax.schedules.polynomial`). Kernels are Flax-style ``[in, out]``, so every factor
is the transpose of the reference's (``u = weight_U.T``, ``v = weight_V.T``, ``a =
mask_scores_A.T``, ``b = mask_scores_B.T``, ``row = mask_scores_R``, ``col = mask_scores_C``).
The factors hold no frozen array: differentiate the loss with respect to the factor tree and step
it with any optax optimizer; its state is proportional to the trainable count only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax import masks as _masks
from sparsejax import schedules
from sparsejax._checks import check_float, check_int, check_sparsity, must_be
from sparsejax.peft.delta import map_kernels, map_nodes

PyTree = Any
__all__ = ["PstFactors", "apply", "binarize", "init", "is_pst", "masks", "merge", "schedule",
           "scores", "trainable_count"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PstFactors:
    """PST's trainable factors for one ``[in, out]`` kernel.

    Attributes:
        u: ``[weight_rank, out]`` (``N(0, 1)`` at init).
        v: ``[in, weight_rank]`` (0 at init): the weight update is ``beta * v @ u``.
        a: ``[mask_rank, out]`` (``N(0, 1)``).
        b: ``[in, mask_rank]`` (0): the low-rank score ``alpha1 * b @ a``.
        row: ``[out]`` (0) and
        col: ``[in]`` (0): the structured score ``alpha2 * (col[:, None] + row[None, :])``.
        beta: the reference's ``weight_beta`` (static).
        alpha1: ``mask_alpha1`` (static).
        alpha2: ``mask_alpha2`` (static).
    """

    u: Float[Array, "rw dout"]
    v: Float[Array, "din rw"]
    a: Float[Array, "rm dout"]
    b: Float[Array, "din rm"]
    row: Float[Array, " dout"]
    col: Float[Array, " din"]
    beta: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    alpha1: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    alpha2: float = dataclasses.field(default=1.0, metadata=dict(static=True))


def is_pst(x: Any) -> bool:
    """Whether ``x`` is a `PstFactors`."""
    return isinstance(x, PstFactors)


def _is_node(x: Any) -> bool:
    return x is None or isinstance(x, PstFactors)


def init(
    params: PyTree,
    *,
    key: jax.Array,
    where: Any = None,
    weight_rank: int = 8,
    mask_rank: int = 8,
    beta: float = 1.0,
    alpha1: float = 1.0,
    alpha2: float = 1.0,
) -> PyTree:
    """PST factors for the ``[in, out]`` kernels of ``params`` (``SparseLinear.__init__``).

    Args:
        params: the frozen params tree.
        key: PRNG key of ``u`` and ``a``.
        where: leaf selector (`sparsejax.select`; default: float kernels of ``ndim >= 2``);
            selected leaves must be 2-D.
        weight_rank: rank of the weight update (8).
        mask_rank: rank of the low-rank score (8).
        beta: scale of the weight update (1.0).
        alpha1: scale of the low-rank score (1.0).
        alpha2: scale of the row / column score (1.0).

    Returns:
        a tree mirroring ``params``: `PstFactors` on the selected leaves, ``None`` elsewhere.
    """
    weight_rank = check_int(weight_rank, "weight_rank", minimum=1)
    mask_rank = check_int(mask_rank, "mask_rank", minimum=1)
    beta, alpha1, alpha2 = (check_float(x, n) for x, n in
                            ((beta, "beta"), (alpha1, "alpha1"), (alpha2, "alpha2")))

    def one(p, k_u, k_a):
        din, dout = jnp.shape(p)
        dt = jnp.result_type(p)
        return PstFactors(
            jax.random.normal(k_u, (weight_rank, dout), dt), jnp.zeros((din, weight_rank), dt),
            jax.random.normal(k_a, (mask_rank, dout), dt), jnp.zeros((din, mask_rank), dt),
            jnp.zeros((dout,), dt), jnp.zeros((din,), dt), beta, alpha1, alpha2)

    return map_kernels(one, params, where, key, "PST")


def trainable_count(factors: PyTree) -> int:
    """Number of trainable numbers in a PST factor tree."""
    return sum(x.size for f in jax.tree.leaves(factors, is_leaf=is_pst) if is_pst(f)
               for x in (f.u, f.v, f.a, f.b, f.row, f.col))


def _weight(w: jax.Array, f: PstFactors) -> jax.Array:
    return w + f.beta * (f.v @ f.u)


def scores(w: Float[Array, "din dout"], f: PstFactors) -> Float[Array, "din dout"]:
    """PST's importance ``|w + beta v u| + alpha1 b a + alpha2 (col 1^T + 1 row^T)``."""
    return (jnp.abs(_weight(w, f)) + f.alpha1 * (f.b @ f.a)
            + f.alpha2 * (f.col[:, None] + f.row[None, :]))


@jax.custom_vjp
def _binarize(s: jax.Array, k: jax.Array) -> jax.Array:
    return _masks.topk(s, k).astype(s.dtype)


def _binarize_fwd(s, k):
    return _binarize(s, k), None


def _binarize_bwd(_, g):
    return g, None


_binarize.defvjp(_binarize_fwd, _binarize_bwd)


def binarize(s: Float[Array, "*shape"], sparsity: Any) -> Float[Array, "*shape"]:
    """``SparseBinarizer``: 0 at the ``floor(size * sparsity)`` smallest of ``s``, 1 elsewhere
    (ties: the lower flat index kept); the gradient passes straight through to ``s``.

    Args:
        s: the scores.
        sparsity: fraction pruned, in ``[0, 1]`` (may be traced; ``floor`` in float32).

    Returns:
        the float mask of ``s``'s shape and dtype.
    """
    if not isinstance(sparsity, jax.core.Tracer):
        check_sparsity(float(sparsity))
    size = math.prod(jnp.shape(s))
    pruned = jnp.floor(jnp.float32(size) * jnp.asarray(sparsity, jnp.float32)).astype(jnp.int32)
    return _binarize(s, jnp.int32(size) - pruned)


def _map(fn: Any, params: PyTree, factors: PyTree) -> PyTree:
    return map_nodes(fn, params, factors, PstFactors, lambda f: (f.v.shape[0], f.u.shape[1]), "factors")


def apply(params: PyTree, factors: PyTree, sparsity: Any) -> PyTree:
    """The sparse fine-tuned params: each kernel ``M * (w + beta v u)`` (``SparseLinear.forward``;
    differentiable in the factors, straight through the mask).

    Args:
        params: the frozen params tree.
        factors: its PST factor tree (`init`).
        sparsity: the current sparsity (e.g. ``schedule(step)``; may be traced).

    Returns:
        params with every fine-tuned kernel masked and updated.
    """
    def one(w, f):
        s = scores(w, f)
        return binarize(s, sparsity).astype(w.dtype) * _weight(w, f)

    return _map(one, params, factors)


def masks(params: PyTree, factors: PyTree, sparsity: Any) -> PyTree:
    """The bool masks PST applies at ``sparsity`` (``None`` on the leaves it leaves alone)."""
    def one(w, f):
        return binarize(jax.lax.stop_gradient(scores(w, f)), sparsity) > 0
    out = _map(one, params, factors)
    return jax.tree.map(lambda f, m: None if f is None else m, factors, out, is_leaf=_is_node)


def merge(params: PyTree, factors: PyTree, sparsity: Any) -> PyTree:
    """The sparse model to keep (``SparseLinear.convert``): `apply` without gradients; the factors
    can be dropped afterwards."""
    return jax.lax.stop_gradient(apply(params, factors, sparsity))


def schedule(
    total_steps: int,
    final: float,
    *,
    initial: float = 0.0,
    initial_warmup: float = 0.0,
    final_warmup: float = 0.0,
) -> schedules.Schedule:
    """PST's cubic sparsity schedule (``pst/utils.py`` ``schedule_sparsity_ratio``).

    ``initial`` until step ``initial_warmup * T``, ``final`` from step ``T - final_warmup * T``,
    ``final + (initial - final) (1 - p)^3`` in between: `schedules.polynomial` with those
    steps. The reference evaluates it at the completed step count (optax's ``count``).

    Args:
        total_steps: ``T``.
        final: the final sparsity.
        initial: the initial sparsity.
        initial_warmup: fraction of ``T`` held at ``initial`` (times ``T``: a whole step count).
        final_warmup: fraction of ``T`` held at ``final`` (times ``T``: a whole step count).

    Returns:
        ``schedule(step) -> float32`` sparsity.
    """
    total_steps = check_int(total_steps, "total_steps", minimum=1)
    begin, end = 0, 0
    for name, frac in (("initial_warmup", initial_warmup), ("final_warmup", final_warmup)):
        frac = check_float(frac, name, minimum=0.0, maximum=1.0)
        steps = frac * total_steps
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(must_be(name, f"a fraction whose product with total_steps = "
                                     f"{total_steps} is a whole number of steps", frac))
        if name == "initial_warmup":
            begin = round(steps)
        else:
            end = total_steps - round(steps)
    if end <= begin:
        raise ValueError(must_be("final_warmup", "such that (1 - initial_warmup - final_warmup) * "
                                 "total_steps >= 1", final_warmup))
    return schedules.polynomial(final, begin, end, initial=initial, power=3)

"""Decoder constraints and initialisation: unit-norm rows, parallel-gradient removal, and the
geometric-median (Weiszfeld) initialisation of the decoder bias.

The unit-norm constraint follows EleutherAI/sparsify and openai/sparse_autoencoder: before the
optimiser step the gradient component parallel to each decoder row is removed
(`remove_parallel_component`, or `remove_decoder_parallel_grads` as an optax
``GradientTransformation`` placed first in the chain), and after the step each row is rescaled to
unit norm (`normalize_decoder`). The decoder is ``W_dec [d_sae, d_out]``: one row per atom.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from sparsejax._checks import check_float, check_float_array, check_int

__all__ = [
    "geometric_median",
    "is_decoder_path",
    "normalize_decoder",
    "remove_decoder_parallel_grads",
    "remove_parallel_component",
    "unit_norm_rows",
]


def unit_norm_rows(w: Float[Array, "n d"]) -> Float[Array, "n d"]:
    """Rows of ``w`` divided by their L2 norm (plus the dtype's eps, as sparsify)."""
    w = check_float_array(w, "w", min_ndim=2)
    eps = jnp.finfo(w.dtype).eps
    return w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + eps)


def remove_parallel_component(grad: Float[Array, "n d"], w: Float[Array, "n d"]
                              ) -> Float[Array, "n d"]:
    """``grad`` minus its component parallel to each row of ``w``.

    Row-wise ``g - (g . u) u`` with ``u = w / ||w||`` (sparsify/openai assume ``||w|| = 1`` and use
    ``w`` directly; normalising here makes the projection exact for any row norm).

    Args:
        grad: gradient ``[n, d]`` (e.g. of ``W_dec``).
        w: the current decoder ``[n, d]``.
    """
    grad = check_float_array(grad, "grad", min_ndim=2)
    w = check_float_array(w, "w", min_ndim=2)
    if grad.shape != w.shape:
        raise ValueError(f"`grad` must have the shape of `w` {w.shape}; got {grad.shape}")
    u = unit_norm_rows(w.astype(jnp.float32))
    g = grad.astype(jnp.float32)
    out = g - jnp.sum(g * u, axis=-1, keepdims=True) * u
    return out.astype(grad.dtype)


def is_decoder_path(path: tuple[Any, ...], name: str = "W_dec") -> bool:
    """True when a pytree key path names a decoder leaf (any key equal to ``name``)."""
    for key in path:
        for attr in ("key", "name", "idx"):
            if getattr(key, attr, None) == name:
                return True
    return False


def _map_decoder(fn: Callable, tree: Any, *others: Any, name: str = "W_dec") -> Any:
    def visit(path, leaf, *rest):
        if leaf is None or not is_decoder_path(path, name):
            return leaf
        return fn(leaf, *rest)

    return jax.tree_util.tree_map_with_path(visit, tree, *others)


def normalize_decoder(params: Any, *, name: str = "W_dec") -> Any:
    """Rescale every decoder leaf's rows to unit norm (leaves whose path has a key ``name``).

    Works on a params dict, an Equinox module or an NNX state; other leaves are returned as is.
    """
    return _map_decoder(unit_norm_rows, params, name=name)


class RemoveParallelState(NamedTuple):
    """Empty state of `remove_decoder_parallel_grads`."""


def remove_decoder_parallel_grads(name: str = "W_dec") -> optax.GradientTransformation:
    """An optax transformation removing the decoder-row-parallel part of the updates.

    Put it *first* in the chain (it acts on the raw gradient, as sparsify does before its
    optimiser step) and call `normalize_decoder` on the params after ``apply_updates``::

        opt = optax.chain(remove_decoder_parallel_grads(), optax.adam(1e-3))

    Args:
        name: the key naming decoder leaves in the params tree.

    Returns:
        A ``GradientTransformation`` whose ``update`` requires ``params``.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str; got {name!r}")

    def init_fn(params):
        del params
        return RemoveParallelState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("remove_decoder_parallel_grads needs params: call "
                             "opt.update(grads, state, params)")
        return _map_decoder(remove_parallel_component, updates, params, name=name), state

    return optax.GradientTransformation(init_fn, update_fn)


def _objective(median, points, weights):
    return jnp.sum(jnp.linalg.norm(points - median, axis=-1) * weights)


def geometric_median(
    points: Float[Array, "n d"],
    weights: Float[Array, " n"] | None = None,
    *,
    eps: float = 1e-6,
    maxiter: int = 100,
    ftol: float = 1e-20,
) -> Float[Array, " d"]:
    """Geometric median ``argmin_m sum_i w_i ||p_i - m||`` by Weiszfeld iterations.

    Matches SAELens' ``compute_geometric_median``: start at the weighted mean, reweight by
    ``w_i / max(||p_i - m||, eps)``, stop after ``maxiter`` iterations or when the objective
    changes by at most ``ftol`` times its value. Used to initialise ``b_dec``.

    Args:
        points: ``[n, d]``.
        weights: optional non-negative ``[n]`` (default all ones).
        eps: smallest distance in a denominator (> 0).
        maxiter: maximum iterations (>= 0).
        ftol: relative objective tolerance (>= 0).

    Returns:
        The median ``[d]`` in ``points``' dtype.
    """
    points = check_float_array(points, "points", min_ndim=2)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"`points` must have shape [n, d] with n >= 1; got {points.shape}")
    eps = check_float(eps, "eps", minimum=0.0, exclusive_minimum=True)
    maxiter = check_int(maxiter, "maxiter", minimum=0)
    ftol = check_float(ftol, "ftol", minimum=0.0)
    if weights is not None:
        weights = check_float_array(jnp.asarray(weights), "weights", min_ndim=1)
        if weights.shape != (points.shape[0],):
            raise ValueError(f"`weights` must have shape ({points.shape[0]},); got {weights.shape}")
    dtype = points.dtype
    p = points.astype(jnp.promote_types(dtype, jnp.float32))
    w = jnp.ones((p.shape[0],), p.dtype) if weights is None else weights.astype(p.dtype)
    median0 = _weighted_mean(p, w)
    median = _weiszfeld(p, w, median0, _objective(median0, p, w), eps=eps, maxiter=maxiter,
                        ftol=ftol)
    return median.astype(dtype)


def _weighted_mean(p, weights):
    return jnp.sum(p * (weights / jnp.sum(weights))[:, None], axis=0)


@functools.partial(jax.jit, static_argnames=("eps", "maxiter", "ftol"))
def _weiszfeld(p, w, median0, obj0, *, eps, maxiter, ftol):
    """`geometric_median`'s Weiszfeld loop from the weighted mean ``median0`` (objective ``obj0``):
    the ``while_loop`` is compiled once per shape and options (an eager ``while_loop`` over a fresh
    closure compiles on every call); ``median0`` stays eager, so the rounding is the eager one."""

    def cond(carry):
        i, _, obj, prev = carry
        return (i < maxiter) & ((i == 0) | (jnp.abs(prev - obj) > ftol * obj))

    def body(carry):
        i, median, obj, _ = carry
        norms = jnp.linalg.norm(p - median, axis=-1)
        median = _weighted_mean(p, w / jnp.maximum(norms, eps))
        return i + 1, median, _objective(median, p, w), obj

    _, median, _, _ = jax.lax.while_loop(cond, body, (0, median0, obj0, obj0))
    return median

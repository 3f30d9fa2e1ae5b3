"""The one custom-VJP scaffold of the dispatched sparse products.

`sparsejax.ops.api` (block-sparse and N:M), `sparsejax.ops.csr` and `sparsejax.ops.sparse_input`
each define products ``f(backend, interpret, *operands)`` that run the implementation registered
for a resolved backend (`sparsejax._backend.IMPLEMENTATIONS`) and differentiate through a rule
made of the other products of the same backend. `dispatched_vjp` builds such a function from its
forward (an op name or a callable) and its backward rule; `run` fetches an implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jaxtyping import Array

from sparsejax._backend import Resolved, implementation

__all__ = ["dispatched_vjp", "float0_like", "run"]


def run(backend: Resolved, op: str, interpret: Any) -> Callable:
    """The registered implementation of ``op`` for a resolved ``backend``.

    Args:
        backend: the `sparsejax._backend.Resolved` backend.
        op: the op name in `sparsejax._backend.IMPLEMENTATIONS` (``"bsr_matmul"``, ...).
        interpret: a Pallas kernel's ``interpret=`` (``None``: interpret on CPU only).

    Returns:
        The function computing ``op``.
    """
    return implementation(op, backend, interpret=interpret)


def float0_like(x: Array) -> np.ndarray:
    """The ``float0`` cotangent of an integer leaf ``x`` (same shape)."""
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def dispatched_vjp(forward: str | Callable[..., Any],
                   backward: Callable[[Resolved, Any, tuple, Any], tuple]) -> Callable[..., Any]:
    """A ``jax.custom_vjp`` product ``f(backend, interpret, *operands)`` with operands as residuals.

    Args:
        forward: an op name (``f`` runs ``run(backend, forward, interpret)(*operands)``) or a
            callable ``(backend, interpret, *operands) -> output``.
        backward: ``(backend, interpret, operands, g) -> cotangents``, one per operand.

    Returns:
        ``f``; ``backend`` and ``interpret`` are non-differentiable (static) arguments.
    """
    if isinstance(forward, str):
        name = forward

        def forward(backend, interpret, *operands):
            return run(backend, name, interpret)(*operands)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
    def product(backend, interpret, *operands):
        return forward(backend, interpret, *operands)

    def fwd(backend, interpret, *operands):
        return product(backend, interpret, *operands), operands

    product.defvjp(fwd, backward)
    return product

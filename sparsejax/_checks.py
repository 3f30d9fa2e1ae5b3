"""Eager argument validation shared by the public functions.

Every check raises ``ValueError``/``TypeError`` naming the argument, the value received and what
is allowed. Checks on values only run when the value is concrete (not a tracer under ``jit``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value known now (not an abstract tracer under ``jit``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_array(x: Any, name: str) -> jax.Array:
    """``x`` as an array; ``TypeError`` unless its dtype is floating point."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float16, bfloat16, float32, float64), "
            f"got dtype {x.dtype}")
    return x


def check_sparsity(sparsity: Any, name: str = "sparsity") -> Any:
    """Validate a scalar sparsity: in [0, 1] when concrete; tracers pass (clipped by callers)."""
    if isinstance(sparsity, bool) or sparsity is None:
        raise TypeError(f"{name} must be a float in [0, 1], got {sparsity!r}")
    if is_concrete(sparsity):
        arr = np.asarray(sparsity)
        if arr.ndim != 0:
            raise ValueError(f"{name} must be a scalar in [0, 1], got an array of shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be a float in [0, 1], got {sparsity!r}")
        value = float(arr)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    elif jnp.ndim(sparsity) != 0:
        raise ValueError(f"{name} must be a scalar in [0, 1], got shape {jnp.shape(sparsity)}")
    return sparsity


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """A Python int (static argument) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a Python int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """A non-negative axis index for an array of rank ``ndim``."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for an array of rank {ndim}, "
                         f"got {axis}")
    return axis % ndim


def check_bool_array(x: Any, name: str) -> jax.Array:
    """``x`` as an array; ``TypeError`` unless its dtype is bool."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if x.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a bool array; got dtype {x.dtype}.")
    return x


def check_int_tuple(value: Any, name: str, length: int, *, minimum: int | None = None
                    ) -> tuple[int, ...]:
    """A tuple/list of ``length`` Python ints, each at least ``minimum``."""
    if not isinstance(value, tuple | list) or len(value) != length:
        raise TypeError(f"`{name}` must be a tuple of {length} ints; got {value!r}.")
    return tuple(check_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(value))

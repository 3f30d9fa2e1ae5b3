"""Eager argument validation: the one place sparsejax checks its inputs.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
with one message format::

    `name` must be <what is allowed>; got <value>.

Build messages with `must_be` so code outside this module keeps that format. Checks on *values*
only run when the value is concrete (not a tracer under ``jit``/``vmap``); shape and dtype checks
always run. Static arguments (ints, floats, strings) are returned normalised (``np.int64`` -> ``int``).

Generic validators, for any module:

* scalars: `check_int`, `check_positive_int`, `check_float`, `check_positive_float`, `check_bool`,
  `check_choice`, `check_callable`, `check_sparsity`;
* arrays: `check_float_array`, `check_bool_array`, `check_shape`, `check_last_dim`,
  `check_divisible`;
* layout: `normalize_axis`, `check_nm`, `check_nm_axis`, `check_block_shape`;
* pytrees: `mirrors` (a tree, not a function: decided by structure), `check_same_structure`
  (names the first differing path), `check_mask_tree`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _is_none(x: Any) -> bool:
    return x is None


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value known now (not an abstract tracer under ``jit``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def _show(value: Any) -> str:
    if isinstance(value, jax.Array | np.ndarray) and getattr(value, "ndim", 0) > 0:
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, str):
        return repr(value)
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def must_be(name: str, allowed: str, got: Any, *, raw: bool = False) -> str:
    """The house error message: ``"`name` must be <allowed>; got <got>."``.

    Args:
        name: the argument's name (written between backticks).
        allowed: what is allowed, e.g. ``"an int >= 1"``.
        got: the value received (shown with ``repr``, arrays by shape and dtype), or a
            ready-made description when ``raw=True``.
        raw: ``got`` is already a description, not a value.
    """
    return f"`{name}` must be {allowed}; got {got if raw else _show(got)}."


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(value: Any, name: str, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """A Python int (static argument) in ``[minimum, maximum]`` (either bound optional).

    Accepts ``int`` and NumPy integers (not ``bool``); returns a Python ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(must_be(name, "a Python int", f"{_show(value)} ({_type_name(value)})",
                                raw=True))
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(must_be(name, f">= {minimum}", value))
    if maximum is not None and value > maximum:
        raise ValueError(must_be(name, f"<= {maximum}", value))
    return value


def check_positive_int(value: Any, name: str) -> int:
    """A Python int ``>= 1``."""
    return check_int(value, name, minimum=1)


def check_float(value: Any, name: str, *, minimum: float | None = None,
                exclusive_minimum: bool = False, maximum: float | None = None,
                exclusive_maximum: bool = False) -> float:
    """A finite Python float (static argument; ints accepted) within optional bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(must_be(name, "a Python float", f"{_show(value)} ({_type_name(value)})",
                                raw=True))
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(must_be(name, "finite", value))
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ValueError(must_be(name, f"> {minimum}", value))
        if not exclusive_minimum and value < minimum:
            raise ValueError(must_be(name, f">= {minimum}", value))
    if maximum is not None:
        if exclusive_maximum and value >= maximum:
            raise ValueError(must_be(name, f"< {maximum}", value))
        if not exclusive_maximum and value > maximum:
            raise ValueError(must_be(name, f"<= {maximum}", value))
    return value


def check_positive_float(value: Any, name: str) -> float:
    """A finite Python float ``> 0``."""
    return check_float(value, name, minimum=0.0, exclusive_minimum=True)


def check_bool(value: Any, name: str) -> bool:
    """A Python ``bool`` (or NumPy bool) static flag."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(must_be(name, "a bool (True or False)", value))
    return bool(value)


def check_choice(value: Any, name: str, allowed: Sequence[Any]) -> Any:
    """One of ``allowed`` (compared with ``==``)."""
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable / incomparable values
        ok = False
    if not ok:
        raise ValueError(must_be(name, f"one of {allowed}", value))
    return value


def check_callable(value: Any, name: str, what: str = "a callable") -> Callable:
    """A callable; ``what`` describes the expected signature in the message."""
    if not callable(value):
        raise TypeError(must_be(name, what, value))
    return value


_SPARSITY_CHECKED = contextvars.ContextVar("sparsejax_sparsity_checked", default=False)


@contextlib.contextmanager
def sparsity_checked() -> Iterator[None]:
    """Trace-time scope whose traced sparsities are already known to be in ``[0, 1]``.

    Inside it `check_sparsity` registers no ``checkify`` check on a traced value: the value was
    checked once where it entered (a training transform checks its schedule's value before it
    computes masks from it), or is in range by construction (`in_unit_interval`). Each registered
    check is a JAX effect that takes the jitted caller off JAX's C++ fast dispatch path (a
    256 x 256 `sparsejax.training.prune` step: about 0.3 ms per call), so it is registered once at
    the boundary, not again in every mask function below it.
    """
    token = _SPARSITY_CHECKED.set(True)
    try:
        yield
    finally:
        _SPARSITY_CHECKED.reset(token)


def in_unit_interval(schedule: Callable) -> Callable:
    """Mark ``schedule`` (``step -> sparsity``) as giving values in ``[0, 1]`` at every step by
    construction (its parameters were checked eagerly): a transform evaluating it under ``jit``
    registers no ``checkify`` check on its value (`sparsity_checked`). Returns ``schedule``."""
    schedule.in_unit_interval = True
    return schedule


def check_sparsity(sparsity: Any, name: str = "sparsity") -> Any:
    """A scalar sparsity in ``[0, 1]``.

    A concrete value outside ``[0, 1]`` (or ``NaN``) raises ``ValueError`` now. A traced value
    passes unchanged (the mask functions clamp it into ``[0, 1]`` and count ``NaN`` as ``0``), and
    registers a ``jax.experimental.checkify`` user check: under
    ``checkify.checkify(f, errors=checkify.user_checks)`` an out-of-range or ``NaN`` traced
    sparsity becomes an error (``err.throw()`` raises it); without ``checkify`` it computes
    nothing, but (as any JAX effect) it takes the jitted caller off JAX's C++ fast dispatch path.
    Inside `sparsity_checked` (a value checked upstream) a traced value registers nothing.
    """
    if isinstance(sparsity, bool) or sparsity is None:
        raise TypeError(must_be(name, "a float in [0, 1]", sparsity))
    if is_concrete(sparsity):
        arr = np.asarray(sparsity)
        if arr.ndim != 0:
            raise ValueError(must_be(name, "a scalar in [0, 1]", f"shape {arr.shape}", raw=True))
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(must_be(name, "a float in [0, 1]", sparsity))
        value = float(arr)
        if not 0.0 <= value <= 1.0:
            raise ValueError(must_be(name, "in [0, 1]", value))
    else:
        if jnp.ndim(sparsity) != 0:
            raise ValueError(must_be(name, "a scalar in [0, 1]", f"shape {jnp.shape(sparsity)}",
                                     raw=True))
        if _SPARSITY_CHECKED.get():
            return sparsity
        # A no-op unless the caller wraps with checkify.checkify(..., errors=user_checks).
        safe = name.replace("{", "{{").replace("}", "}}")
        checkify.debug_check((sparsity >= 0) & (sparsity <= 1),
                             f"`{safe}` must be in [0, 1]; got {{}} (traced).", sparsity)
    return sparsity


def check_float_array(x: Any, name: str, *, min_ndim: int = 0) -> jax.Array:
    """``x`` as an array; ``TypeError`` unless floating point, ``ValueError`` if ``ndim < min_ndim``."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(must_be(name, "a floating-point array (float16, bfloat16, float32, "
                                "float64)", f"dtype {x.dtype}", raw=True))
    if x.ndim < min_ndim:
        raise ValueError(must_be(name, f"an array with at least {min_ndim} dimension(s)",
                                 f"shape {tuple(x.shape)}", raw=True))
    return x


def check_bool_array(x: Any, name: str) -> jax.Array:
    """``x`` as an array; ``TypeError`` unless its dtype is ``bool``."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if x.dtype != jnp.bool_:
        raise TypeError(must_be(name, "a bool array", f"dtype {x.dtype}", raw=True))
    return x


def check_shape(x: Any, shape: tuple[int, ...], name: str) -> None:
    """``ValueError`` unless ``x.shape == shape``."""
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(must_be(name, f"of shape {tuple(shape)}", f"shape {tuple(jnp.shape(x))}",
                                 raw=True))


def check_last_dim(x: jax.Array, size: int, name: str, what: str) -> None:
    """``ValueError`` unless ``x.shape[-1] == size`` (``what`` names the size, e.g. ``"d_in"``)."""
    if x.shape[-1] != size:
        raise ValueError(must_be(name, f"an array with last dimension {what}={size}",
                                 f"shape {tuple(x.shape)}", raw=True))


def check_divisible(length: int, divisor: int, name: str, divisor_name: str) -> None:
    """``ValueError`` unless ``length % divisor == 0`` (e.g. a dimension and a block size)."""
    if length % divisor:
        raise ValueError(must_be(name, f"divisible by `{divisor_name}`={divisor}", length))


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """A non-negative axis index for an array of rank ``ndim``."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(must_be(name, f"in [{-ndim}, {ndim - 1}] for an array of rank {ndim}",
                                 axis))
    return axis % ndim


def check_nm(n: Any, m: Any, *, max_m: int | None = None) -> tuple[int, int]:
    """An N:M pair: ``n`` kept entries per group of ``m``, ``0 <= n <= m``, ``1 <= m <= max_m``."""
    m = check_int(m, "m", minimum=1, maximum=max_m)
    n = check_int(n, "n")
    if not 0 <= n <= m:
        raise ValueError(must_be("n", f"in [0, m={m}] (n counts kept entries per group)", n))
    return n, m


NM_AXIS_HELP = ("given for pattern 'nm': the axis along which groups of m consecutive entries "
                "are formed, the reduction axis of the sparse operand (axis=0 for a Flax "
                "[in, out] kernel, -2 for a conv [kh, kw, in, out] kernel, 1 for an Equinox or "
                "torch [out, in] weight)")


def check_nm_axis(axis: Any, ndim: int | None = None, name: str = "axis", *,
                  extra: str = "") -> int | None:
    """The required N:M grouping (reduction) axis: ``ValueError`` when ``None``.

    With ``ndim`` the axis is also range-checked and returned non-negative. ``extra`` is appended
    to what is allowed (e.g. the per-leaf rule forms `compute_masks` accepts).
    """
    if axis is None:
        raise ValueError(must_be(name, NM_AXIS_HELP + extra, None))
    return axis if ndim is None else normalize_axis(axis, ndim, name)


def check_block_shape(block_shape: Any, name: str = "block_shape", *,
                      ndim: int | None = None) -> tuple[int, ...]:
    """A tuple of ints ``>= 1`` (exactly ``ndim`` of them when given)."""
    if not isinstance(block_shape, tuple | list):
        raise TypeError(must_be(name, "a tuple of ints", block_shape))
    if ndim is not None and len(block_shape) != ndim:
        raise ValueError(must_be(name, f"a tuple of {ndim} ints", tuple(block_shape)))
    for b in block_shape:
        if isinstance(b, bool) or not isinstance(b, int | np.integer):
            raise TypeError(must_be(name, "a tuple of ints", tuple(block_shape)))
        if b < 1:
            raise ValueError(must_be(name, "a tuple of ints >= 1", tuple(block_shape)))
    return tuple(int(b) for b in block_shape)


def _path_str(path: tuple) -> str:
    from sparsejax.select import path_str  # select imports this module

    return path_str(path)


def _leaf_paths(tree: Any) -> list[tuple]:
    return [p for p, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]]


def mirrors(other: Any, tree: Any) -> bool:
    """Whether ``other`` is a tree with the pytree structure of ``tree`` (``None`` = a leaf).

    The test that tells a tree argument (scores, sparsities, masks) from a function argument:
    by structure, never by ``callable()``, since an Equinox module is both a pytree and callable.
    """
    try:
        return (jax.tree.structure(other, is_leaf=_is_none)
                == jax.tree.structure(tree, is_leaf=_is_none))
    except Exception:  # noqa: BLE001 - an unflattenable object is not a mirroring tree
        return False


def is_function(value: Any, tree: Any = None) -> bool:
    """``value`` is a function to call, not a tree: callable, not `mirrors` of ``tree`` (when
    given), and without array leaves.

    A callable pytree with array leaves (an Equinox module, even one that does not mirror
    ``tree``) is never taken for a function: it is a tree (a mistaken one is reported as such).
    """
    if not callable(value):
        return False
    if tree is not None and not jax.tree_util.treedef_is_leaf(jax.tree.structure(value)) \
            and mirrors(value, tree):
        return False  # a callable container shaped like the tree (an Equinox module): a tree
    return not any(isinstance(x, jax.Array | np.ndarray) for x in jax.tree.leaves(value))


def check_same_structure(tree: Any, other: Any, name: str = "masks",
                         tree_name: str = "params") -> None:
    """``ValueError`` unless ``other`` has the pytree structure of ``tree`` (``None`` = a leaf).

    The message names the first differing path (e.g. ``params has 'l1/kernel' where masks has
    nothing``), never a raw ``PyTreeDef``.
    """
    a = jax.tree.structure(tree, is_leaf=_is_none)
    b = jax.tree.structure(other, is_leaf=_is_none)
    if a == b:
        return
    pa, pb = _leaf_paths(tree), _leaf_paths(other)
    sa, sb = {_path_str(p) for p in pa}, {_path_str(p) for p in pb}
    missing = [_path_str(p) for p in pa if _path_str(p) not in sb]
    extra = [_path_str(p) for p in pb if _path_str(p) not in sa]
    if missing:
        detail = f"{tree_name} has {missing[0]!r} where {name} has nothing"
    elif extra:
        detail = f"{name} has {extra[0]!r} where {tree_name} has nothing"
    else:
        detail = (f"both have the same {len(pa)} leaf paths but different containers "
                  f"({type(tree).__name__} vs {type(other).__name__} at the root, or a list "
                  f"where the other has a tuple, a dict where the other has a State, ...)")
    raise ValueError(must_be(name, f"a tree mirroring {tree_name} (one entry per leaf of "
                                   f"{tree_name}, None where unused)", detail, raw=True))


def check_mask_tree(masks: Any, name: str = "masks") -> None:
    """``TypeError`` unless every leaf of ``masks`` is ``None`` or a bool array (names the leaf)."""
    for path, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)[0]:
        if m is None:
            continue
        dtype = getattr(m, "dtype", None)
        if dtype is None or dtype != jnp.bool_:
            got = f"dtype {dtype}" if dtype is not None else f"{_show(m)} ({_type_name(m)})"
            raise TypeError(must_be(f"{name}[{_path_str(path)!r}]",
                                    "a bool array (True = kept) or None", got, raw=True))

"""One backend dispatcher for the kernel-backed ops (`sparsejax.ops`) and `sparsejax.attention`.

Every kernel-backed public function takes the same two keyword-only arguments:

* ``backend=``: ``"reference"`` (densify + ``jnp``, the test oracle), ``"xla"`` (cost scales with
  the kept blocks; the CPU default), ``"pallas_tpu"``, ``"pallas_gpu"`` or ``"auto"``, which
  stands for ``pallas_tpu`` on TPU, ``pallas_gpu`` on GPU (platforms `GPU_PLATFORMS`) and
  ``xla`` elsewhere (`resolve_backend`);
* ``interpret=``: ``None`` (default) runs a Pallas kernel in interpret mode exactly when JAX's
  default platform is the CPU, ``True``/``False`` force it (``pltpu.InterpretParams()`` is passed
  through to the TPU kernels).

**Fallback.** A Pallas kernel raises `NotSupportedError` (eagerly, before anything is traced into
a ``pallas_call``) for operands it cannot run: a block shape, tile or dtype it cannot lower. Under
``backend="auto"`` such a call falls back to ``xla``; naming the Pallas backend explicitly raises
the error. Any other error (bad input) propagates under every backend. The backend modules of
both packages have the same names: ``reference``, ``xla``, ``pallas_tpu``, ``pallas_gpu``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax

BACKENDS = ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")
"""Accepted values of ``backend=``."""

GPU_PLATFORMS = ("gpu", "cuda", "rocm")
"""`jax.default_backend` names on which ``"auto"`` picks ``pallas_gpu``."""


class NotSupportedError(Exception):
    """A Pallas kernel cannot run these operands (block shape, tile, dtype): ``auto`` uses ``xla``.

    Raised as `UnsupportedShapeError` (also a ``ValueError``) or `UnsupportedDtypeError` (also a
    ``TypeError``), so callers that name a Pallas backend see the usual error classes.
    """


class UnsupportedShapeError(NotSupportedError, ValueError):
    """A block shape or tile the kernel cannot lower (e.g. not a power of two for Triton)."""


class UnsupportedDtypeError(NotSupportedError, TypeError):
    """A dtype the kernel does not implement (the kernels take float32, bfloat16, float16)."""


def platform() -> str:
    """JAX's default platform (`jax.default_backend`): ``"cpu"``, ``"gpu"``, ``"tpu"``, ..."""
    return jax.default_backend()


def check_backend(backend: Any, allowed: tuple[str, ...] = BACKENDS) -> str:
    """``backend`` if it is one of ``allowed``; ``ValueError`` otherwise."""
    if backend not in allowed:
        raise ValueError(f"`backend` must be one of {allowed}; got {backend!r}.")
    return backend


def resolve_backend(backend: str = "auto", *, allowed: tuple[str, ...] = BACKENDS) -> str:
    """The concrete backend ``backend`` stands for on JAX's default platform.

    Args:
        backend: one of ``allowed``; ``"auto"`` becomes ``pallas_tpu`` on TPU, ``pallas_gpu`` on a
            GPU platform (when ``allowed`` has it; otherwise ``xla``) and ``xla`` elsewhere.
        allowed: the backends the caller implements.

    Returns:
        A backend name other than ``"auto"``.

    Raises:
        ValueError: ``backend`` not in ``allowed``.
    """
    check_backend(backend, allowed)
    if backend != "auto":
        return backend
    where = platform()
    pick = "pallas_tpu" if where == "tpu" else ("pallas_gpu" if where in GPU_PLATFORMS else "xla")
    return pick if pick in allowed else "xla"


def resolve_interpret(interpret: Any) -> Any:
    """``interpret=None`` -> interpret exactly on CPU; anything else is passed through."""
    if interpret is None:
        return platform() == "cpu"
    return interpret


def backend_module(package: str, backend: str) -> ModuleType:
    """The implementation module ``<package>.<backend>`` (imported lazily: Pallas only on use)."""
    return importlib.import_module(f"{package}.{backend}")


def with_fallback(kernel: Callable, fallback: Callable, *, auto: bool) -> Callable:
    """``kernel``, or under ``auto`` a function that calls ``fallback`` on `NotSupportedError`."""
    if not auto:
        return kernel

    def run(*args, **kwargs):
        try:
            return kernel(*args, **kwargs)
        except NotSupportedError:
            return fallback(*args, **kwargs)

    return run


__all__ = [
    "BACKENDS",
    "GPU_PLATFORMS",
    "NotSupportedError",
    "UnsupportedDtypeError",
    "UnsupportedShapeError",
    "backend_module",
    "check_backend",
    "platform",
    "resolve_backend",
    "resolve_interpret",
    "with_fallback",
]

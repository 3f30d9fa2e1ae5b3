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

**Registry.** Every op's implementations are listed in one table, `IMPLEMENTATIONS`
(``{op: {backend: Implementation}}``, as tokamax lists each op's implementations), and looked up
with `implementation` (``(op, backend) -> callable``, ``auto`` and its fallback included) or
`resolve` (``(op, backend) -> Resolved``, for code that must keep the choice static, e.g. as a
``custom_vjp`` argument). ``backend="auto"`` tries the op's backends in table order and takes the
first whose ``platforms`` include `platform` (``None``: any platform). To add an op (or a backend
of an op), append one entry::

    register("my_op", "xla", "sparsejax.ops.xla", "my_op")                # any platform
    register("my_op", "pallas_gpu", "sparsejax.ops.pallas_gpu", "my_op",
             platforms=GPU_PLATFORMS, kernel=True)                          # takes interpret=

in the table below (Pallas entries first, so ``auto`` prefers them where they run), then call
``implementation("my_op", backend, interpret=interpret)`` from the public function and validate
``backend`` with ``backends("my_op")``. A ``kernel=True`` entry receives ``interpret=`` and, under
``auto``, falls back to the op's ``fallback`` backend (default ``"xla"``) on `NotSupportedError`.
Modules are imported on first use only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

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


# --------------------------------------------------------------------------------------------
# the registry: one table of every op's implementations
# --------------------------------------------------------------------------------------------

TPU_PLATFORMS = ("tpu",)
"""`jax.default_backend` names on which ``"auto"`` picks a TPU-only implementation."""

ACCELERATORS = GPU_PLATFORMS + TPU_PLATFORMS
"""GPU and TPU platforms."""


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One backend of one op.

    Attributes:
        module: dotted module path, imported on first use.
        attr: the function's name in ``module``.
        platforms: platforms on which ``auto`` may pick it (``None``: any).
        kernel: a Pallas kernel: called with ``interpret=`` and may raise `NotSupportedError`.
        fallback: the backend ``auto`` falls back to on `NotSupportedError` (kernels only).
    """

    module: str
    attr: str
    platforms: tuple[str, ...] | None = None
    kernel: bool = False
    fallback: str = "xla"

    def load(self) -> Callable:
        """The function (importing its module)."""
        return getattr(importlib.import_module(self.module), self.attr)


IMPLEMENTATIONS: dict[str, dict[str, Implementation]] = {}
"""``{op: {backend: Implementation}}`` in ``auto`` preference order (see the module docstring)."""


class Resolved(NamedTuple):
    """A concrete backend of an op and whether it was chosen by ``"auto"`` (then a kernel's
    `NotSupportedError` falls back). Hashable: a static argument under ``jit``/``custom_vjp``."""

    name: str
    auto: bool = False


def register(op: str, backend: str, module: str, attr: str | None = None, *,
             platforms: tuple[str, ...] | None = None, kernel: bool = False,
             fallback: str = "xla") -> None:
    """Add ``backend`` of ``op`` to `IMPLEMENTATIONS` (``attr`` defaults to ``op``)."""
    IMPLEMENTATIONS.setdefault(op, {})[backend] = Implementation(
        module, op if attr is None else attr, platforms, kernel, fallback)


def backends(op: str) -> tuple[str, ...]:
    """``("auto", *registered backends of op)``: the accepted ``backend=`` values."""
    if op not in IMPLEMENTATIONS:
        raise ValueError(f"`op` must be one of {tuple(IMPLEMENTATIONS)}; got {op!r}.")
    names = list(IMPLEMENTATIONS[op])  # the shared names in `BACKENDS` order, then the rest
    known = sorted((n for n in names if n in BACKENDS), key=BACKENDS.index)
    return ("auto", *known, *(n for n in names if n not in BACKENDS))


def resolve(op: str, backend: str = "auto") -> Resolved:
    """The concrete backend ``backend`` stands for, for ``op`` on JAX's default platform.

    Raises:
        ValueError: ``backend`` is not ``"auto"`` or a registered backend of ``op``.
    """
    check_backend(backend, backends(op))
    if backend != "auto":
        return Resolved(backend, False)
    where = platform()
    for name, impl in IMPLEMENTATIONS[op].items():
        if impl.platforms is None or where in impl.platforms:
            return Resolved(name, True)
    raise ValueError(f"no backend of {op!r} runs on platform {where!r}.")  # pragma: no cover


def implementation(op: str, backend: str | Resolved = "auto", *, interpret: Any = None
                   ) -> Callable:
    """The function that computes ``op`` with ``backend`` (a name or a `Resolved`).

    A kernel gets ``interpret=`` (`resolve_interpret`); one chosen by ``auto`` falls back to
    its ``fallback`` backend on `NotSupportedError`.
    """
    choice = backend if isinstance(backend, Resolved) else resolve(op, backend)
    impl = IMPLEMENTATIONS[op][choice.name]
    fn = impl.load()
    if not impl.kernel:
        return fn
    kernel = functools.partial(fn, interpret=resolve_interpret(interpret))
    return with_fallback(kernel, IMPLEMENTATIONS[op][impl.fallback].load(), auto=choice.auto)


def _register_all() -> None:
    for op in ("bsr_matmul", "dense_bsr_matmul", "sddmm"):
        register(op, "pallas_tpu", "sparsejax.ops.pallas_tpu", platforms=TPU_PLATFORMS,
                 kernel=True)
        register(op, "pallas_gpu", "sparsejax.ops.pallas_gpu", platforms=GPU_PLATFORMS,
                 kernel=True)
        register(op, "xla", "sparsejax.ops.xla")
        register(op, "reference", "sparsejax.ops.reference", platforms=())
    register("nm_matmul", "pallas_gpu", "sparsejax.ops.pallas_gpu", platforms=GPU_PLATFORMS,
             kernel=True)
    register("nm_matmul", "xla", "sparsejax.ops.xla")
    register("nm_matmul", "reference", "sparsejax.ops.reference", platforms=())
    register("attention", "pallas_tpu", "sparsejax.attention.pallas_tpu",
             platforms=TPU_PLATFORMS, kernel=True)
    register("attention", "pallas_gpu", "sparsejax.attention.pallas_gpu",
             platforms=GPU_PLATFORMS, kernel=True)
    register("attention", "xla", "sparsejax.attention.xla")
    register("attention", "reference", "sparsejax.attention.reference", platforms=())
    register("sparse_input_matmul", "pallas_tpu", "sparsejax.ops.sparse_input_tpu",
             platforms=TPU_PLATFORMS, kernel=True)
    register("sparse_input_matmul", "pallas_gpu", "sparsejax.ops.sparse_input_gpu",
             platforms=GPU_PLATFORMS, kernel=True)
    register("sparse_input_matmul", "xla", "sparsejax.ops.sparse_input", "_xla")
    register("sparse_input_matmul", "reference", "sparsejax.ops.sparse_input", "_reference",
             platforms=())
    # grouped matmul: XLA's native ragged_dot on accelerators; on CPU it lowers to a dense
    # product per group, so the tiled loop is the CPU choice.
    register("gmm", "ragged_dot", "sparsejax.moe.gmm", "gmm_ragged_dot", platforms=ACCELERATORS)
    register("gmm", "xla", "sparsejax.moe.gmm", "gmm_xla")
    # the MoE feed-forward: one backend names layout + kernel
    register("moe_ffn", "ragged_dot", "sparsejax.moe.dispatch", "ragged_dot_ffn",
             platforms=ACCELERATORS)
    register("moe_ffn", "ragged_xla", "sparsejax.moe.dispatch", "ragged_xla_ffn")
    register("moe_ffn", "einsum", "sparsejax.moe.dispatch", "einsum_ffn", platforms=())
    for name in ("xla", "reference", "pallas_tpu", "pallas_gpu"):
        register("moe_ffn", f"block_sparse_{name}", "sparsejax.moe.dispatch",
                 f"block_sparse_{name}_ffn", platforms=())
    # variable-size all-to-all of dropless expert parallelism: XLA:CPU lacks the ragged op
    register("ragged_all_to_all", "ragged_all_to_all", "sparsejax.moe.exchange",
             "exchange_ragged", platforms=ACCELERATORS)
    register("ragged_all_to_all", "all_to_all", "sparsejax.moe.exchange", "exchange_dense")
    # unstructured (CSR) products: Triton row-split kernel on GPU, segment sums elsewhere
    register("csr_matmul", "pallas_tpu", "sparsejax.ops.csr_pallas_tpu", platforms=TPU_PLATFORMS,
             kernel=True)
    register("csr_sddmm", "pallas_tpu", "sparsejax.ops.csr_pallas_tpu", platforms=(), kernel=True)
    for op in ("csr_matmul", "csr_sddmm"):
        register(op, "pallas_gpu", "sparsejax.ops.csr_pallas_gpu", platforms=GPU_PLATFORMS,
                 kernel=True)
        register(op, "xla", "sparsejax.ops.csr_xla", f"xla_{op}")
        register(op, "reference", "sparsejax.ops.csr_xla", f"reference_{op}", platforms=())


_register_all()


__all__ = [
    "ACCELERATORS",
    "BACKENDS",
    "GPU_PLATFORMS",
    "IMPLEMENTATIONS",
    "Implementation",
    "NotSupportedError",
    "Resolved",
    "TPU_PLATFORMS",
    "UnsupportedDtypeError",
    "UnsupportedShapeError",
    "backend_module",
    "backends",
    "check_backend",
    "implementation",
    "platform",
    "register",
    "resolve",
    "resolve_backend",
    "resolve_interpret",
    "with_fallback",
]

"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged with all-to-all.

With ``n`` devices on ``axis_name``, tokens (and their router logits) are split into ``n``
groups, one per device, and the experts into ``n`` slices of ``E / n``. Under
``jax.shard_map`` each device routes its own tokens, packs them into the ``[E, C, d]`` capacity
buffers of the einsum dispatch (`sparsejax.moe.dispatch_tensors`), sends each expert slice to
the device that holds it with ``lax.all_to_all`` (GShard), runs its ``E / n`` experts on the
``[E / n, n * C, d]`` rows it received, returns them with a second ``all_to_all`` and combines
locally. The result equals the single-device layer that routes each group of ``T / n`` tokens
separately (identical for dropless routing, where grouping does not matter).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array
from sparsejax.moe.dispatch import dispatch_tensors, expert_buffers_ffn
from sparsejax.moe.routing import Routing

__all__ = ["expert_parallel_moe_ffn"]

_HI = jax.lax.Precision.HIGHEST


def expert_parallel_moe_ffn(
    x: Float[Array, "T d"],
    logits: Float[Array, "T E"],
    w1: Float[Array, "E d F"],
    w2: Float[Array, "E F d"],
    w3: Float[Array, "E d F"] | None = None,
    *,
    mesh: Mesh,
    axis_name: str,
    router: Callable[[Array], Routing],
    activation: Callable[[Array], Array] = jax.nn.gelu,
) -> Float[Array, "T d"]:
    """The MoE feed-forward with experts sharded over ``mesh`` axis ``axis_name``.

    Args:
        x: ``[T, d]`` tokens (sharded or not; split into ``n`` groups along ``T``).
        logits: ``[T, E]`` router logits.
        w1: ``[E, d, F]`` experts' first layer (split into ``n`` slices along ``E``).
        w2: ``[E, F, d]`` experts' second layer.
        w3: ``[E, d, F]`` up projection of gated experts (see `sparsejax.moe.moe_ffn`), or
            ``None``.
        mesh: a ``jax.sharding.Mesh``.
        axis_name: the mesh axis of size ``n`` the experts and token groups are split over.
        router: ``logits [T / n, E] -> Routing`` applied per group, e.g.
            ``functools.partial(top_k_routing, k=2, capacity_factor=1.25)``.
        activation: elementwise hidden activation.

    Returns:
        ``[T, d]``, sharded along ``T`` over ``axis_name``.

    Raises:
        ValueError: ``axis_name`` not in the mesh, ``E`` or ``T`` not divisible by its size,
            mismatched shapes.
    """
    x = check_float_array(x, "x")
    logits = check_float_array(logits, "logits")
    w1 = check_float_array(w1, "w1")
    w2 = check_float_array(w2, "w2")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis_name not in mesh.shape:
        raise ValueError(f"`axis_name` must be one of the mesh axes {tuple(mesh.shape)}; got "
                         f"{axis_name!r}.")
    n = mesh.shape[axis_name]
    if w1.ndim != 3 or w2.shape != (w1.shape[0], w1.shape[2], w1.shape[1]):
        raise ValueError(f"`w1` must be [E, d, F] and `w2` [E, F, d]; got {w1.shape} and "
                         f"{w2.shape}.")
    e, d, _ = w1.shape
    if w3 is not None:
        w3 = check_float_array(w3, "w3")
        if w3.shape != w1.shape:
            raise ValueError(f"`w3` must have w1's shape {w1.shape}; got {w3.shape}.")
    if x.ndim != 2 or x.shape[1] != d or logits.shape != (x.shape[0], e):
        raise ValueError(f"`x` must be [T, {d}] and `logits` [T, {e}] (the experts' axis); got "
                         f"x {x.shape} and logits {logits.shape}.")
    if e % n:
        raise ValueError(f"the number of experts {e} must be divisible by the size {n} of mesh "
                         f"axis {axis_name!r}.")
    if x.shape[0] % n:
        raise ValueError(f"the number of tokens {x.shape[0]} must be divisible by the size {n} "
                         f"of mesh axis {axis_name!r}.")
    spec = PartitionSpec(axis_name)

    def local(x, logits, w1, w2, w3):
        routing = router(logits)
        if not isinstance(routing, Routing) or routing.num_experts != e:
            raise ValueError(f"`router` must return a Routing over {e} experts.")
        dispatch, combine = dispatch_tensors(routing)  # [T/n, E, C]
        dt = jnp.result_type(x, w1, w2)
        xin = jnp.einsum("tec,td->ecd", dispatch.astype(dt), x, precision=_HI)
        xin = jax.lax.all_to_all(xin, axis_name, 0, 1, tiled=True)  # [E/n, n*C, d]
        out = expert_buffers_ffn(xin, w1, w2, activation, w3)
        out = jax.lax.all_to_all(out, axis_name, 1, 0, tiled=True)  # [E, C, d]
        y = jnp.einsum("tec,ecd->td", combine.astype(dt), out, precision=_HI)
        return y.astype(x.dtype)

    w3_spec = None if w3 is None else spec
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, spec, w3_spec),
                       out_specs=spec)
    return fn(x, logits, w1, w2, w3)

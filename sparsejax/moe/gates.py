"""COMET tree gating: a learned, differentiable top-k gate beyond a linear router.

COMET (Ibrahim et al., KDD 2023; mazumder-lab/COMET ``model/gates/comet.py``): ``k``
differentiable binary trees whose ``E`` leaves are the experts. Internal node ``p`` of tree ``j``
sends a token left with probability ``S(<w_jp, x> + b_jp)``, where ``S`` is the smooth-step

    S(z) = 0 (z <= -gamma/2),  1 (z >= gamma/2),  -2 z^3 / gamma^3 + 3 z / (2 gamma) + 1/2 otherwise,

so a leaf's reach probability ``P_jl`` (the product along its path) becomes exactly 0 or 1 once
the splits leave the polynomial band: each tree then reaches one expert. With leaf scores
``a_jl = <u_jl, x> + c_jl`` the gate is ``g_l = sum_j softmax_{(j, l)}(a_jl + log P_jl)``
(softmax over all ``k * E`` tree-leaf pairs), a point of the simplex with at most ``k``
nonzeros when the trees are hard. Trees use heap numbering: internal nodes ``0 .. E-2``, expert
``l`` is node ``E - 1 + l`` (any ``E >= 1``, not only powers of two). COMET's permutation-based
local search is not included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, check_int, check_positive_float
from sparsejax.moe.routing import Routing, _assign, expert_capacity

__all__ = [
    "comet_gates",
    "comet_init",
    "comet_routing",
    "smooth_step",
]


def smooth_step(z: Float[Array, "*s"], gamma: float = 1.0) -> Float[Array, "*s"]:
    """COMET's smooth-step: 0 below ``-gamma/2``, 1 above ``gamma/2``, a cubic in between."""
    cubic = -2.0 / gamma ** 3 * z ** 3 + 3.0 / (2.0 * gamma) * z + 0.5
    return jnp.where(z <= -gamma / 2, 0.0, jnp.where(z >= gamma / 2, 1.0, cubic)).astype(z.dtype)


def comet_init(key: Array, d_model: int, num_experts: int, k: int, *, gamma: float = 1.0,
               dtype=jnp.float32) -> dict[str, Array]:
    """COMET gate parameters (the reference's initialisers).

    Returns:
        ``{"split_w": [k, E-1, d], "split_b": [k, E-1]}`` uniform in ``+-gamma/100`` (splits
        start soft) and ``{"leaf_w": [k, E, d], "leaf_b": [k, E]}`` uniform in ``+-0.05``.

    Raises:
        ValueError: ``k`` outside ``[1, E]``, non-positive sizes or ``gamma``.
    """
    d_model = check_int(d_model, "d_model", minimum=1)
    num_experts = check_int(num_experts, "num_experts", minimum=1)
    k = check_int(k, "k", minimum=1, maximum=num_experts)
    gamma = check_positive_float(gamma, "gamma")
    ks = jax.random.split(key, 4)
    s, e = gamma / 100, num_experts
    u = functools.partial(jax.random.uniform, dtype=dtype)
    return {
        "split_w": u(ks[0], (k, e - 1, d_model), minval=-s, maxval=s),
        "split_b": u(ks[1], (k, e - 1), minval=-s, maxval=s),
        "leaf_w": u(ks[2], (k, e, d_model), minval=-0.05, maxval=0.05),
        "leaf_b": u(ks[3], (k, e), minval=-0.05, maxval=0.05),
    }


@functools.cache
def _paths(num_experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per expert leaf: ancestor node, went-left flag, valid flag, each ``[E, depth]``."""
    e = num_experts
    paths = []
    for leaf in range(e):
        node, steps = e - 1 + leaf, []
        while node > 0:
            parent = (node - 1) // 2
            steps.append((parent, node == 2 * parent + 1))
            node = parent
        paths.append(steps[::-1])
    depth = max(1, max(len(p) for p in paths))
    anc = np.zeros((e, depth), np.int32)
    left = np.zeros((e, depth), bool)
    valid = np.zeros((e, depth), bool)
    for leaf, steps in enumerate(paths):
        for i, (p, is_left) in enumerate(steps):
            anc[leaf, i], left[leaf, i], valid[leaf, i] = p, is_left, True
    return anc, left, valid


def _check_comet(params: dict, x: Array) -> tuple[Array, int, int]:
    x = check_float_array(x, "x")
    need = ("split_w", "split_b", "leaf_w", "leaf_b")
    if not isinstance(params, dict) or any(n not in params for n in need):
        raise TypeError(f"`params` must be the dict of comet_init with keys {need}; got "
                        f"{type(params).__name__}.")
    k, e, d = params["leaf_w"].shape
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"`x` must have shape [tokens, {d}] (the gate's d_model); got {x.shape}.")
    return x, k, e


def comet_gates(params: dict[str, Array], x: Float[Array, "T d"], *, gamma: float = 1.0
                ) -> tuple[Float[Array, "T E"], Float[Array, "T k E"]]:
    """The COMET gate ``g [T, E]`` and each tree's leaf reach probabilities ``P [T, k, E]``.

    Args:
        params: from `comet_init`.
        x: ``[T, d]`` tokens.
        gamma: smooth-step width (``> 0``).

    Returns:
        ``(g, P)``: ``g`` rows are on the simplex with at most ``k`` nonzeros when every split is
        outside the band ``|z| < gamma/2``; ``P`` sums to 1 over experts per tree (COMET's
        entropy regulariser is ``mean_t sum_l -P log P``).
    """
    x, k, e = _check_comet(params, x)
    gamma = check_positive_float(gamma, "gamma")
    return _comet_gates(params, x, gamma)


@functools.partial(jax.jit, static_argnums=(2,))
def _comet_gates(params, x, gamma):
    k, e, _ = params["leaf_w"].shape
    anc, left, valid = (jnp.asarray(a) for a in _paths(e))
    if e > 1:
        z = jnp.einsum("td,knd->tkn", x, params["split_w"]) + params["split_b"]
        go_left = smooth_step(z, gamma)  # [T, k, E-1]
        p_anc = go_left[:, :, anc]  # [T, k, E, depth]
        factor = jnp.where(left, p_anc, 1.0 - p_anc)
        reach = jnp.prod(jnp.where(valid, factor, 1.0), axis=-1)  # [T, k, E]
    else:
        reach = jnp.ones((x.shape[0], k, 1), x.dtype)
    a = jnp.einsum("td,kld->tkl", x, params["leaf_w"]) + params["leaf_b"]
    pos = reach > 0
    score = jnp.where(pos, a + jnp.log(jnp.where(pos, reach, 1.0)), -jnp.inf)
    g = jax.nn.softmax(score.reshape(x.shape[0], k * e), axis=-1).reshape(-1, k, e)
    return jnp.sum(g, axis=1), reach


def comet_routing(params: dict[str, Array], x: Float[Array, "T d"], *, gamma: float = 1.0,
                  capacity_factor: float | None = None) -> Routing:
    """COMET routing: ``k`` slots per token, the ``k`` largest gates, renormalised.

    When the trees are hard (at most ``k`` nonzero gates, the regime COMET trains into) the
    routing reproduces the gate exactly (``Routing.gates() == g``); while splits are still soft
    the gate is truncated to its ``k`` largest entries. The routing always holds exactly ``k``
    distinct experts per token; slots beyond the gate's support get weight 0, are not kept and
    take no capacity (a hard tree's unused slot never drops another token's assignment).

    Args:
        params: from `comet_init`.
        x: ``[T, d]`` tokens.
        gamma: smooth-step width.
        capacity_factor: ``> 0`` to drop beyond `expert_capacity`, ``None`` for dropless.

    Returns:
        The `Routing`.
    """
    x, k, e = _check_comet(params, x)
    gamma = check_positive_float(gamma, "gamma")
    t = x.shape[0]
    capacity = t if capacity_factor is None else expert_capacity(
        t, e, k, check_positive_float(capacity_factor, "capacity_factor"))
    g, _ = _comet_gates(params, x, gamma)
    return _comet_assign(g, k, capacity)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _comet_assign(g, k, capacity):
    weights, index = jax.lax.top_k(g, k)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    # A slot the gate does not reach (weight 0) is not routed: it takes no buffer row.
    return _assign(index, weights, g.shape[1], capacity, active=weights > 0)

"""Lasso sparse coding: ISTA, FISTA (fixed step or backtracking), the elastic net on the same
FISTA core, and trainable LISTA.

All solvers minimise, independently for every signal ``y``,

    ``0.5 * ||y - D z||^2 + alpha * ||z||_1``,

which is scikit-learn's ``sparse_encode(..., algorithm="lasso_cd", alpha=alpha)`` and
``Lasso(alpha=alpha / n_features, fit_intercept=False)`` (sklearn's Lasso divides the squared error
by ``n_samples``, here ``n_features``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_float, check_int

__all__ = [
    "elastic_net",
    "fista",
    "ista",
    "lasso_objective",
    "lipschitz_constant",
    "lista_apply",
    "lista_init",
    "soft_threshold",
]


def soft_threshold(
    x: Float[Array, "..."], threshold: Float[Array, "..."] | float
) -> Float[Array, "..."]:
    """``sign(x) * max(|x| - threshold, 0)``, the proximal operator of ``threshold * ||.||_1``."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


def lasso_objective(
    dictionary: Float[Array, "n_features n_atoms"],
    signals: Float[Array, "... n_features"],
    codes: Float[Array, "... n_atoms"],
    alpha: float | Float[Array, ""],
) -> Float[Array, "..."]:
    """``0.5 * ||y - D z||^2 + alpha * ||z||_1`` per signal, shape ``[...]``."""
    r = signals - codes @ dictionary.T
    return 0.5 * jnp.sum(r * r, axis=-1) + alpha * jnp.sum(jnp.abs(codes), axis=-1)


def lipschitz_constant(dictionary: Float[Array, "n_features n_atoms"]) -> Float[Array, ""]:
    """``L = ||D||_2^2``, the Lipschitz constant of the smooth part's gradient ``D^T (D z - y)``."""
    return jnp.linalg.norm(dictionary.astype(jnp.promote_types(dictionary.dtype, jnp.float32)),
                           ord=2) ** 2


def _validate(name, dictionary, signals, alpha, n_iter, init=None):
    if not hasattr(dictionary, "ndim") or dictionary.ndim != 2:
        raise ValueError(
            f"`dictionary` must be a 2-D array [n_features, n_atoms]; got "
            f"{getattr(dictionary, 'shape', type(dictionary).__name__)}"
        )
    n_features, n_atoms = dictionary.shape
    if not hasattr(signals, "ndim") or signals.ndim < 1 or signals.shape[-1] != n_features:
        raise ValueError(
            f"`signals` must have shape [..., n_features={n_features}]; got "
            f"{getattr(signals, 'shape', type(signals).__name__)}"
        )
    for arg, arr in (("dictionary", dictionary), ("signals", signals)):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"`{arg}` must be a floating array; got dtype {arr.dtype}")
    if isinstance(alpha, int | float) and not alpha >= 0:
        raise ValueError(f"`alpha` must be >= 0; got {alpha}")
    check_int(n_iter, "n_iter", minimum=1)
    if init is not None and tuple(init.shape) != (*signals.shape[:-1], n_atoms):
        raise ValueError(
            f"`init` must have shape {(*signals.shape[:-1], n_atoms)}; got "
            f"{tuple(init.shape)}"
        )


def _prep(dictionary, signals, init):
    dtype = jnp.promote_types(jnp.result_type(dictionary.dtype, signals.dtype), jnp.float32)
    d = dictionary.astype(dtype)
    y = signals.astype(dtype)
    z0 = jnp.zeros((*y.shape[:-1], d.shape[1]), dtype) if init is None else init.astype(dtype)
    return d, y, z0


@functools.partial(jax.jit, static_argnames=("n_iter", "positive"))
def _ista(d, y, z0, alpha, step, *, n_iter, positive):
    dty = y @ d
    gram = d.T @ d

    def body(_, z):
        z = z - step * (z @ gram - dty)
        z = soft_threshold(z, step * alpha)
        return jnp.maximum(z, 0) if positive else z

    return jax.lax.fori_loop(0, n_iter, body, z0)


def ista(
    dictionary: Float[Array, "n_features n_atoms"],
    signals: Float[Array, "... n_features"],
    alpha: float | Float[Array, ""],
    *,
    n_iter: int = 500,
    step_size: float | Float[Array, ""] | None = None,
    positive: bool = False,
    init: Float[Array, "... n_atoms"] | None = None,
) -> Float[Array, "... n_atoms"]:
    """Iterative shrinkage-thresholding: ``z <- S_{alpha/L}(z + D^T (y - D z) / L)``.

    Args:
        dictionary: ``[n_features, n_atoms]``.
        signals: ``[..., n_features]``.
        alpha: L1 weight (scikit-learn ``sparse_encode``'s ``alpha``; ``Lasso``'s ``alpha`` times
            ``n_features``).
        n_iter: number of iterations (static).
        step_size: fixed step; default ``1 / L`` with ``L = ||D||_2^2``.
        positive: project onto ``z >= 0`` (non-negative Lasso).
        init: warm start ``[..., n_atoms]``; default zeros.

    Returns:
        Codes ``[..., n_atoms]`` in the promoted input dtype (at least float32).
    """
    _validate("ista", dictionary, signals, alpha, n_iter, init)
    d, y, z0 = _prep(dictionary, signals, init)
    step = 1 / lipschitz_constant(d) if step_size is None else jnp.asarray(step_size, d.dtype)
    return _ista(d, y, z0, jnp.asarray(alpha, d.dtype), step.astype(d.dtype),
                 n_iter=n_iter, positive=positive)


@functools.partial(jax.jit, static_argnames=("n_iter", "positive", "backtracking"))
def _fista(d, y, z0, alpha, lipschitz, eta, *, n_iter, positive, backtracking):
    dty = y @ d
    gram = d.T @ d
    batch = y.shape[:-1]

    def prox(v, lip):
        z = soft_threshold(v, (alpha / lip)[..., None])
        return jnp.maximum(z, 0) if positive else z

    def smooth(z):  # 0.5 ||y - D z||^2 from the Gram form (y.y dropped: it cancels in comparisons)
        return 0.5 * jnp.sum((z @ gram) * z, -1) - jnp.sum(z * dty, -1)

    def grad(z):
        return z @ gram - dty

    def step(carry, _):
        z, v, t, lip = carry
        g = grad(v)
        if backtracking:
            fv = smooth(v)

            def ok(lip):
                p = prox(v - g / lip[..., None], lip)
                diff = p - v
                quad = fv + jnp.sum(diff * g, -1) + 0.5 * lip * jnp.sum(diff * diff, -1)
                return smooth(p) <= quad + 1e-12 * jnp.abs(quad)

            lip = jax.lax.while_loop(
                lambda lip: ~jnp.all(ok(lip)), lambda lip: jnp.where(ok(lip), lip, lip * eta), lip
            )
        z_new = prox(v - g / lip[..., None], lip)
        t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        v_new = z_new + ((t - 1) / t_new) * (z_new - z)
        return (z_new, v_new, t_new, lip), None

    lip0 = jnp.broadcast_to(lipschitz, batch)
    (z, _, _, _), _ = jax.lax.scan(step, (z0, z0, jnp.ones((), d.dtype), lip0), None, length=n_iter)
    return z


def fista(
    dictionary: Float[Array, "n_features n_atoms"],
    signals: Float[Array, "... n_features"],
    alpha: float | Float[Array, ""],
    *,
    n_iter: int = 200,
    backtracking: bool = False,
    lipschitz: float | Float[Array, ""] | None = None,
    eta: float = 2.0,
    positive: bool = False,
    init: Float[Array, "... n_atoms"] | None = None,
) -> Float[Array, "... n_atoms"]:
    """FISTA (Beck and Teboulle, 2009): ISTA steps from an extrapolated point with momentum
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``.

    Args:
        dictionary: ``[n_features, n_atoms]``.
        signals: ``[..., n_features]``.
        alpha: L1 weight (as in `ista`).
        n_iter: number of iterations (static).
        backtracking: if True, each signal keeps its own step ``1 / L_k``: starting from
            ``lipschitz`` (default ``||D||_2^2 / 100``), ``L_k`` is multiplied by ``eta`` until the
            quadratic upper bound holds (Beck and Teboulle's backtracking rule; ``L_k`` never
            decreases). Otherwise the fixed step ``1 / L`` with ``L = lipschitz`` (default
            ``||D||_2^2``).
        lipschitz: see ``backtracking``.
        eta: backtracking growth factor (> 1).
        positive: project onto ``z >= 0``.
        init: warm start ``[..., n_atoms]``; default zeros.

    Returns:
        Codes ``[..., n_atoms]`` in the promoted input dtype (at least float32).
    """
    _validate("fista", dictionary, signals, alpha, n_iter, init)
    if not eta > 1:
        raise ValueError(f"`eta` must be > 1; got {eta}")
    if isinstance(lipschitz, int | float) and not lipschitz > 0:
        raise ValueError(f"`lipschitz` must be > 0; got {lipschitz}")
    d, y, z0 = _prep(dictionary, signals, init)
    if lipschitz is None:
        lip = lipschitz_constant(d) / (100.0 if backtracking else 1.0)
    else:
        lip = jnp.asarray(lipschitz)
    return _fista(d, y, z0, jnp.asarray(alpha, d.dtype), lip.astype(d.dtype),
                  jnp.asarray(eta, d.dtype), n_iter=n_iter, positive=positive,
                  backtracking=backtracking)


def elastic_net(
    dictionary: Float[Array, "n_features n_atoms"],
    signals: Float[Array, "... n_features"],
    alpha: float,
    l1_ratio: float = 0.5,
    *,
    n_iter: int = 1000,
    positive: bool = False,
    init: Float[Array, "... n_atoms"] | None = None,
) -> Float[Array, "... n_atoms"]:
    """Elastic-net codes, scikit-learn's ``ElasticNet(alpha, l1_ratio, fit_intercept=False)``.

    Minimises, for every signal ``y`` (``n = n_features``),

        ``||y - D z||^2 / (2 n) + alpha * l1_ratio * ||z||_1 + alpha * (1 - l1_ratio) / 2 * ||z||^2``

    as `fista` on the augmented Lasso ``[D; sqrt(n alpha (1 - l1_ratio)) I]``, ``[y; 0]`` with L1
    weight ``n alpha l1_ratio`` (an exact rewriting; the ridge part makes the problem strongly
    convex, so FISTA converges linearly).

    Args:
        dictionary: ``[n_features, n_atoms]`` (sklearn's ``X``).
        signals: ``[..., n_features]`` (sklearn's ``y``, one fit per signal).
        alpha: overall penalty, ``>= 0``.
        l1_ratio: the L1 share, in ``[0, 1]`` (1 is the Lasso).
        n_iter: FISTA iterations (static).
        positive: constrain ``z >= 0`` (sklearn's ``positive=True``).
        init: warm start ``[..., n_atoms]``.

    Returns:
        Codes ``[..., n_atoms]`` (sklearn's ``coef_``).
    """
    alpha = check_float(alpha, "alpha", minimum=0.0)
    l1_ratio = check_float(l1_ratio, "l1_ratio", minimum=0.0, maximum=1.0)
    _validate("elastic_net", dictionary, signals, alpha, n_iter, init)
    n_features, n_atoms = dictionary.shape
    d, y, z0 = _prep(dictionary, signals, init)
    ridge = jnp.sqrt(jnp.asarray(n_features * alpha * (1.0 - l1_ratio), d.dtype))
    d_aug = jnp.concatenate([d, ridge * jnp.eye(n_atoms, dtype=d.dtype)])
    y_aug = jnp.concatenate([y, jnp.zeros((*y.shape[:-1], n_atoms), y.dtype)], axis=-1)
    return fista(d_aug, y_aug, n_features * alpha * l1_ratio, n_iter=n_iter, positive=positive,
                 init=z0)


# ----------------------------------------------------------------------------------------------
# LISTA (Gregor and LeCun, 2010): T unrolled ISTA steps with learned matrices and thresholds.


def lista_init(
    dictionary: Float[Array, "n_features n_atoms"],
    alpha: float,
    n_layers: int,
) -> dict[str, Array]:
    """Parameters that make `lista_apply` equal ``n_layers`` ISTA steps from zero.

    Returns:
        ``{"encoder": D / L [n_features, n_atoms], "lateral": I - D^T D / L [n_atoms, n_atoms],
        "threshold": alpha / L [n_layers]}``.
    """
    check_int(n_layers, "n_layers", minimum=1)
    if not hasattr(dictionary, "ndim") or dictionary.ndim != 2:
        raise ValueError(
            "`dictionary` must be 2-D [n_features, n_atoms]; got "
            f"{getattr(dictionary, 'shape', type(dictionary).__name__)}"
        )
    if not alpha >= 0:
        raise ValueError(f"`alpha` must be >= 0; got {alpha}")
    d = jnp.asarray(dictionary, jnp.promote_types(dictionary.dtype, jnp.float32))
    lip = lipschitz_constant(d)
    return {
        "encoder": d / lip,
        "lateral": jnp.eye(d.shape[1], dtype=d.dtype) - (d.T @ d) / lip,
        "threshold": jnp.full((n_layers,), alpha / lip, d.dtype),
    }


def lista_apply(
    params: dict[str, Any], signals: Float[Array, "... n_features"]
) -> Float[Array, "... n_atoms"]:
    """LISTA forward pass: ``b = y W``, ``z_1 = S_{theta_1}(b)``,
    ``z_{t+1} = S_{theta_t}(b + z_t S)``.

    ``W`` is ``params["encoder"]``, ``S`` is ``params["lateral"]`` (symmetric at init) and
    ``theta`` is ``params["threshold"]`` (one per layer). Differentiable in ``params``.
    """
    b = signals @ params["encoder"]
    thresholds = params["threshold"]
    z = soft_threshold(b, thresholds[0])
    return _lista_layers(b, z, params["lateral"], thresholds[1:])


@jax.jit
def _lista_layers(b, z, lateral, thresholds):
    """`lista_apply`'s layers after the first: one ``lax.scan``, compiled once per shapes (an eager
    scan over a fresh closure recompiled on every call)."""
    def layer(z, theta):
        return soft_threshold(b + z @ lateral, theta), None

    return jax.lax.scan(layer, z, thresholds)[0]

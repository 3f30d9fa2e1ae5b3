"""Auxiliary SAE losses: decoder-norm-weighted L1, AuxK on dead latents, aux_zipf on
underutilised latents.

AuxK (Gao et al. 2024; openai/sparse_autoencoder, EleutherAI/sparsify, SAELens ``TopKTrainingSAE``):
the ``k_aux`` largest ReLU'd pre-activations among *dead* latents reconstruct the residual
``e = y - y_hat`` of the main reconstruction through the decoder *without* its bias, as in openai's
code and the current sparsify and SAELens releases (none of them adds ``b_dec`` to the auxiliary
reconstruction). One difference remains with SAELens: it decodes the *raw* (un-ReLU'd) dead
pre-activations, so negative values can enter its ``e_hat``; here, as in openai and sparsify, they
are ReLU'd first (``signed=True`` instead ranks by ``|pre|`` and keeps the sign, for AbsTopK).
The loss is scaled by ``min(n_dead / k_aux, 1)``; with ``k_aux > n_dead`` only the dead latents
are used. ``e`` is held constant (stop-gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_float, check_float_array, check_int, check_shape

__all__ = [
    "auxk_loss",
    "aux_zipf_loss",
    "decoder_weighted_l1",
    "underutilised_mask",
]


def decoder_weighted_l1(codes: Float[Array, "... d_sae"], w_dec: Float[Array, "d_sae d_out"]
                        ) -> Float[Array, ""]:
    """``mean_tokens sum_i |f_i| * ||W_dec[i]||`` (SAELens standard SAE; Anthropic April 2024).

    Args:
        codes: ``[..., d_sae]``.
        w_dec: decoder ``[d_sae, d_out]``.
    """
    norms = jnp.linalg.norm(w_dec, axis=-1)
    per_token = jnp.sum(jnp.abs(codes) * norms, axis=-1)
    return jnp.mean(per_token)


def _aux_reconstruction(pre, residual, w_dec, mask, k_aux, signed):
    values = pre if signed else jax.nn.relu(pre)
    scores = jnp.abs(pre) if signed else values
    _, idx = jax.lax.top_k(jnp.where(mask, scores, -jnp.inf), k_aux)
    flat = idx.reshape(-1, k_aux)
    rows = jnp.arange(flat.shape[0])[:, None]
    chosen = jnp.zeros((flat.shape[0], pre.shape[-1]), bool).at[rows, flat].set(True)
    chosen = chosen.reshape(pre.shape) & mask
    e_hat = jnp.where(chosen, values, jnp.zeros((), values.dtype)) @ w_dec
    e = jax.lax.stop_gradient(residual)
    return jnp.mean(jnp.sum((e_hat - e) ** 2, axis=-1))


def auxk_loss(
    pre: Float[Array, "n d_sae"],
    residual: Float[Array, "n d_out"],
    w_dec: Float[Array, "d_sae d_out"],
    dead_mask: Bool[Array, " d_sae"],
    k_aux: int,
    *,
    signed: bool = False,
) -> Float[Array, ""]:
    """AuxK loss: the top ``k_aux`` dead latents reconstruct the (stop-gradient) residual.

    Args:
        pre: pre-activations ``[n, d_sae]``.
        residual: ``y - y_hat`` ``[n, d_out]`` of the main reconstruction.
        w_dec: decoder ``[d_sae, d_out]`` (bias not added).
        dead_mask: bool ``[d_sae]``, True for dead latents.
        k_aux: auxiliary latents per token, ``1 <= k_aux <= d_sae`` (openai uses 256, sparsify and
            SAELens ``d_in // 2``).
        signed: rank by ``|pre|`` and keep signs (for AbsTopK SAEs) instead of ReLU.

    Returns:
        ``min(n_dead / k_aux, 1) * mean_tokens ||e_hat - e||^2``; 0 when no latent is dead.
    """
    pre = check_float_array(pre, "pre", min_ndim=2)
    k_aux = check_int(k_aux, "k_aux", minimum=1, maximum=pre.shape[-1])
    dead_mask = jnp.asarray(dead_mask, bool)
    if dead_mask.shape != (pre.shape[-1],):
        check_shape(dead_mask, (pre.shape[-1],), "dead_mask")
    n_dead = jnp.sum(dead_mask)
    dtype = jnp.promote_types(pre.dtype, jnp.float32)
    scale = jnp.minimum(n_dead / k_aux, 1.0).astype(dtype)
    return _scaled_aux(n_dead, scale, pre, residual, w_dec, dead_mask, k_aux=k_aux, signed=signed,
                       dtype=dtype)


@functools.partial(jax.jit, static_argnames=("k_aux", "signed", "dtype"))
def _scaled_aux(n_dead, scale, pre, residual, w_dec, dead_mask, *, k_aux, signed, dtype):
    """`auxk_loss`'s ``scale * reconstruction``, skipped entirely (``lax.cond``) while no latent is
    dead; compiled once per shapes and options (an eager ``lax.cond`` over fresh closures
    recompiled on every call)."""
    return jax.lax.cond(
        n_dead > 0,
        lambda: (scale * _aux_reconstruction(pre, residual, w_dec, dead_mask, k_aux,
                                             signed)).astype(dtype),
        lambda: jnp.zeros((), dtype))


def underutilised_mask(density: Float[Array, " d_sae"], *, fraction: float = 0.5
                       ) -> Bool[Array, " d_sae"]:
    """Latents firing less often than ``fraction`` times a Zipf law fitted to the densities.

    Densities are sorted in decreasing order, ``log density ~ a - s log rank`` is fitted by
    least squares over the latents that fire, and latent ``i`` is underutilised when
    ``density_i < fraction * exp(a) * rank_i^(-s)``; dead latents (density 0) always are.

    Args:
        density: firing frequency per latent ``[d_sae]`` (e.g. an EMA of ``mean(codes != 0)``).
        fraction: how far below the fitted curve counts as underutilised, in ``(0, 1]``.
    """
    density = check_float_array(density, "density", min_ndim=1)
    fraction = check_float(fraction, "fraction", minimum=0.0, exclusive_minimum=True, maximum=1.0)
    d = density.astype(jnp.float32)
    order = jnp.argsort(-d)
    rank = jnp.empty_like(order).at[order].set(jnp.arange(1, d.shape[0] + 1))
    alive = d > 0
    lx = jnp.log(rank.astype(jnp.float32))
    ly = jnp.log(jnp.where(alive, d, 1.0))
    w = alive.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mx, my = jnp.sum(w * lx) / n, jnp.sum(w * ly) / n
    var = jnp.sum(w * (lx - mx) ** 2)
    slope = jnp.where(var > 0, jnp.sum(w * (lx - mx) * (ly - my)) / jnp.maximum(var, 1e-30), 0.0)
    expected = jnp.exp(my + slope * (lx - mx))
    return (~alive) | (d < fraction * expected)


def aux_zipf_loss(
    pre: Float[Array, "n d_sae"],
    residual: Float[Array, "n d_out"],
    w_dec: Float[Array, "d_sae d_out"],
    density: Float[Array, " d_sae"],
    k_aux: int,
    *,
    fraction: float = 0.5,
) -> Float[Array, ""]:
    """aux_zipf loss: AuxK over dead *and underutilised* latents (Ayonrinde 2024).

    The paper generalises AuxK from dead latents to latents used less than a Zipf law fitted to the
    feature densities predicts; no reference code is public, so this is our reading: the auxiliary
    latents are `underutilised_mask` ``(density, fraction)`` and the loss is `auxk_loss`
    over them (same scale ``min(n / k_aux, 1)``).

    Args:
        pre: pre-activations ``[n, d_sae]``.
        residual: ``y - y_hat`` ``[n, d_out]``.
        w_dec: decoder ``[d_sae, d_out]``.
        density: firing frequency per latent ``[d_sae]``.
        k_aux: auxiliary latents per token.
        fraction: see `underutilised_mask`.
    """
    mask = underutilised_mask(density, fraction=fraction)
    return auxk_loss(pre, residual, w_dec, mask, k_aux)

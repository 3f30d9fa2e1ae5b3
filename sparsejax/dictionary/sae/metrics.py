"""SAE evaluation metrics: FVU / explained variance, L0, dead-latent fraction, CE loss recovered."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_choice, check_float_array

__all__ = ["ce_loss_recovered", "dead_fraction", "explained_variance", "fvu", "l0"]


def _check_pair(x, x_hat):
    x = check_float_array(x, "x", min_ndim=2)
    x_hat = check_float_array(x_hat, "x_hat", min_ndim=2)
    if x.shape != x_hat.shape:
        raise ValueError(f"`x_hat` must have the shape of `x` {x.shape}; got {x_hat.shape}")
    return x, x_hat


def fvu(x: Float[Array, "n d"], x_hat: Float[Array, "n d"]) -> Float[Array, ""]:
    """Fraction of variance unexplained ``||x - x_hat||^2 / ||x - mean(x)||^2``.

    Pooled over the batch (EleutherAI/sparsify): the mean is over the token axis (all leading
    axes), the sums over every entry. Accumulates in float32 at least.

    Args:
        x: targets ``[..., d]`` (at least 2-D).
        x_hat: reconstructions of the same shape.
    """
    x, x_hat = _check_pair(x, x_hat)
    dt = jnp.promote_types(x.dtype, jnp.float32)
    x2 = x.reshape(-1, x.shape[-1]).astype(dt)
    r2 = x_hat.reshape(-1, x.shape[-1]).astype(dt)
    total = jnp.sum((x2 - x2.mean(0)) ** 2)
    return jnp.sum((x2 - r2) ** 2) / total


def explained_variance(x: Float[Array, "n d"], x_hat: Float[Array, "n d"]) -> Float[Array, ""]:
    """``1 - fvu(x, x_hat)``."""
    return 1.0 - fvu(x, x_hat)


def l0(codes: Float[Array, "... d_sae"]) -> Float[Array, ""]:
    """Mean number of nonzero latents per row, counted with ``!= 0`` (so signed codes count)."""
    codes = check_float_array(codes, "codes", min_ndim=1)
    return jnp.mean(jnp.sum(codes != 0, axis=-1).astype(jnp.float32))


def dead_fraction(codes: Float[Array, "... d_sae"]) -> Float[Array, ""]:
    """Fraction of latents that are zero on every row of ``codes``.

    For a fraction over a training window use the tracker in the SAE state
    (`sparsejax.dictionary.sae.dead_mask`).
    """
    codes = check_float_array(codes, "codes", min_ndim=1)
    fired = jnp.any(codes.reshape(-1, codes.shape[-1]) != 0, axis=0)
    return 1.0 - jnp.mean(fired.astype(jnp.float32))


def ce_loss_recovered(
    loss_fn: Callable[[Array], Array],
    x: Float[Array, "... d"],
    x_hat: Float[Array, "... d"],
    *,
    ablation: str = "zero",
) -> dict[str, Array]:
    """Fraction of the cross-entropy lost by ablation that splicing in the SAE recovers.

    ``(L_ablated - L_sae) / (L_ablated - L_clean)`` with ``L_clean = loss_fn(x)``,
    ``L_sae = loss_fn(x_hat)`` and ``L_ablated = loss_fn(zeros)`` (SAELens' ``ce_loss_score``) or
    ``loss_fn(mean of x over tokens)`` with ``ablation="mean"``. 1 is perfect, 0 is no better than
    ablation.

    Args:
        loss_fn: the rest of the model from the hooked activations to a scalar loss (e.g. the CE
            of the logits computed from them against the labels).
        x: clean activations.
        x_hat: SAE reconstructions, same shape.
        ablation: ``"zero"`` or ``"mean"``.

    Returns:
        dict with ``score``, ``clean``, ``sae`` and ``ablated`` losses (scalars).
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}")
    x, x_hat = _check_pair(x, x_hat)
    check_choice(ablation, "ablation", ("zero", "mean"))
    if ablation == "zero":
        ablated_in = jnp.zeros_like(x)
    else:
        flat = x.reshape(-1, x.shape[-1])
        ablated_in = jnp.broadcast_to(flat.mean(0), x.shape).astype(x.dtype)
    clean = jnp.asarray(loss_fn(x), jnp.float32)
    sae = jnp.asarray(loss_fn(x_hat), jnp.float32)
    ablated = jnp.asarray(loss_fn(ablated_in), jnp.float32)
    return {"score": (ablated - sae) / (ablated - clean), "clean": clean, "sae": sae,
            "ablated": ablated}

"""Scores: what ranks entries. Each is a pure function returning a float array shaped like the weight.

Higher score = kept first by every pattern in `sparsejax.masks`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, must_be, normalize_axis

__all__ = ["magnitude", "random", "saliency", "wanda", "feature_norms"]


def magnitude(w: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """``|w|``: magnitude pruning's score."""
    return jnp.abs(check_float_array(w, "w"))


def saliency(w: Float[Array, "*shape"], grad: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """``|w * grad|``: first-order Taylor saliency (SNIP-style connection sensitivity).

    Args:
        w: weights.
        grad: gradient of the loss with respect to ``w`` (same shape).
    """
    w = check_float_array(w, "w")
    grad = check_float_array(grad, "grad")
    if w.shape != grad.shape:
        raise ValueError(must_be("grad", f"of the shape of w {tuple(w.shape)}",
                                 f"shape {tuple(grad.shape)}", raw=True))
    return jnp.abs(w * grad)


def random(key: jax.Array, w: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """Uniform random scores in ``[0, 1)`` shaped and typed like ``w`` (float32 for bf16/f16)."""
    w = check_float_array(w, "w")
    dtype = w.dtype if w.dtype in (jnp.float32, jnp.float64) else jnp.float32
    return jax.random.uniform(key, w.shape, dtype)


def feature_norms(inputs: Float[Array, "*batch features"]) -> Float[Array, " features"]:
    """L2 norm of each input feature over all calibration tokens: ``||X_j||_2``.

    Args:
        inputs: calibration activations ``[..., features]`` (any leading batch/sequence dims).

    Returns:
        ``[features]`` float32 norms.
    """
    inputs = check_float_array(inputs, "inputs", min_ndim=1)
    if inputs.size == 0:
        raise ValueError(must_be("inputs", "at least one calibration token (a norm over no "
                                 "tokens ranks nothing)", f"shape {tuple(inputs.shape)}", raw=True))
    x = inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x, axis=0))


def wanda(
    w: Float[Array, "*shape"],
    inputs: Float[Array, "*batch features"] | None = None,
    *,
    norms: Float[Array, " features"] | None = None,
    axis: int | None = None,
) -> Float[Array, "*shape"]:
    """Wanda score ``|W_ij| * ||X_j||_2``: weight magnitude times its input feature's norm.

    Layout convention: ``axis`` is the axis of ``w`` indexed by input features (the reduction
    axis, the same ``axis`` `sparsejax.masks.nm` groups along). It has no default: a Flax
    ``Dense``/``nnx.Linear`` kernel is ``[in, out]`` (``axis=0``); an Equinox or torch
    ``[out, in]`` weight uses ``axis=1``, and a square weight cannot tell them apart. Wanda
    compares scores *per output*: mask with ``sparsejax.masks.unstructured(score, s, axis=axis)``
    to rank each output's inputs separately, as the reference ``prune_wanda`` does.

    Args:
        w: weight matrix.
        inputs: calibration inputs ``[..., features]`` feeding this layer; or give ``norms``.
        norms: precomputed `feature_norms`, ``[features]``.
        axis: the input-feature axis of ``w`` (required).

    Returns:
        float array shaped like ``w`` (float32 or wider).
    """
    w = check_float_array(w, "w")
    if (inputs is None) == (norms is None):
        raise ValueError(must_be("inputs", "given, or norms= instead (exactly one of them)",
                                 "both" if inputs is not None else "neither", raw=True))
    if axis is None:
        raise ValueError(must_be("axis", "given: the input-feature (reduction) axis of w, 0 for a "
                                 "Flax [in, out] kernel, 1 for an Equinox or torch [out, in] "
                                 "weight", None))
    axis = normalize_axis(axis, w.ndim)
    norms = feature_norms(inputs) if norms is None else check_float_array(norms, "norms")
    if norms.shape != (w.shape[axis],):
        raise ValueError(must_be("norms", f"of shape ({w.shape[axis]},), one per input feature "
                                 f"of w (w.shape[{axis}])", f"shape {tuple(norms.shape)}",
                                 raw=True))
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    return jnp.abs(w).astype(jnp.promote_types(w.dtype, jnp.float32)) * norms.reshape(shape)

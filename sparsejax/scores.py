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
    x = inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x, axis=0))


def wanda(
    w: Float[Array, "*shape"],
    inputs: Float[Array, "*batch features"] | None = None,
    *,
    norms: Float[Array, " features"] | None = None,
    in_axis: int = 0,
) -> Float[Array, "*shape"]:
    """Wanda score ``|W_ij| * ||X_j||_2``: weight magnitude times its input feature's norm.

    Layout convention: ``in_axis`` is the axis of ``w`` indexed by input features. A Flax
    ``Dense``/``nnx.Linear`` kernel is ``[in, out]`` (``in_axis=0``, the default); a torch
    ``[out, in]`` weight uses ``in_axis=1``. Wanda compares scores *per output*: mask with
    ``sparsejax.masks.unstructured(score, s, axis=in_axis)`` to rank each output's inputs
    separately, as the reference ``prune_wanda`` does.

    Args:
        w: weight matrix.
        inputs: calibration inputs ``[..., features]`` feeding this layer; or give ``norms``.
        norms: precomputed `feature_norms`, ``[features]``.
        in_axis: the input-feature axis of ``w``.

    Returns:
        float array shaped like ``w`` (float32 or wider).
    """
    w = check_float_array(w, "w")
    if (inputs is None) == (norms is None):
        raise ValueError(must_be("inputs", "given, or norms= instead (exactly one of them)",
                                 "both" if inputs is not None else "neither", raw=True))
    in_axis = normalize_axis(in_axis, w.ndim, "in_axis")
    norms = feature_norms(inputs) if norms is None else check_float_array(norms, "norms")
    if norms.shape != (w.shape[in_axis],):
        raise ValueError(must_be("norms", f"of shape ({w.shape[in_axis]},), one per input feature "
                                 f"of w (w.shape[{in_axis}])", f"shape {tuple(norms.shape)}",
                                 raw=True))
    shape = [1] * w.ndim
    shape[in_axis] = w.shape[in_axis]
    return jnp.abs(w).astype(jnp.promote_types(w.dtype, jnp.float32)) * norms.reshape(shape)

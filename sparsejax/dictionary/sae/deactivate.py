"""Interpret-then-deactivate (ItD; Tian et al. 2025): find the SAE features of a concept, scale
their codes, and apply the edit only to inputs that express the concept.

Transcribed from NANSirun/Interpret-then-deactivate (``generate_images.py``,
``find_the_threshold_for_style`` / ``strength_with_feature_text_batch``):

* **Concept features.** For every input (a sequence of tokens), each latent's largest code
  over the tokens; the input's top ``top_n`` latents. The concept features are the union of the
  concept inputs' top latents minus the union of the retain inputs' top latents. (The reference
  ranks all latents, so an input with fewer than ``top_n`` active latents contributes zeros at
  arbitrary positions; here only latents with a positive code count.)
* **Deactivation.** ``codes[..., f] *= scale`` on the concept features (the reference uses
  negative scales such as -6), then decode: the input is replaced by the edited reconstruction.
* **Gate.** An input is edited only if the edit moves it: the mean squared difference between
  the edited reconstruction and the input, over tokens and features, is at least a threshold,
  set to ``(1 - margin) * min`` of that error over inputs known to express the concept.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from sparsejax._checks import check_float, check_float_array, check_int, check_last_dim
from sparsejax.dictionary.sae.functional import Params, SAEConfig, decode, encode

__all__ = [
    "ConceptEdit",
    "concept_features",
    "deactivate",
    "deactivate_concept",
    "deactivation_error",
    "gate_threshold",
]


class ConceptEdit(NamedTuple):
    """Output of `deactivate_concept`.

    Attributes:
        output: the inputs, with the gated ones replaced by their edited reconstruction.
        edited: bool ``[n_inputs]``, which inputs the gate let through.
        error: ``[n_inputs]``, each input's `deactivation_error`.
    """

    output: Array
    edited: Array
    error: Array


def _as_sequences(codes: Array, name: str) -> Array:
    codes = check_float_array(codes, name, min_ndim=2)
    if codes.ndim > 3:
        raise ValueError(f"`{name}` must have shape [n_inputs, d_sae] or "
                         f"[n_inputs, n_tokens, d_sae]; got {codes.shape}")
    return codes[:, None] if codes.ndim == 2 else codes


def _top_latents(codes: Array, top_n: int) -> Array:
    peak = jnp.max(codes, axis=1)  # [n_inputs, d_sae]
    vals, idx = jax.lax.top_k(peak, top_n)
    rows = jnp.arange(peak.shape[0])[:, None]
    hit = jnp.zeros(peak.shape, bool).at[rows, idx].set(vals > 0)
    return jnp.any(hit, axis=0)


def concept_features(
    concept_codes: Float[Array, "n_concept *tokens d_sae"],
    retain_codes: Float[Array, "n_retain *tokens d_sae"],
    top_n: int,
) -> Bool[Array, " d_sae"]:
    """The concept's features: top latents of the concept inputs, minus those of the retain inputs.

    Args:
        concept_codes: SAE codes of inputs expressing the concept, ``[n_inputs, d_sae]`` or
            ``[n_inputs, n_tokens, d_sae]``.
        retain_codes: codes of inputs to leave alone, same layout and ``d_sae``.
        top_n: latents kept per input, ``1 <= top_n <= d_sae`` (the reference uses 256 or 512
            of a 16k-latent SAE).

    Returns:
        Bool ``[d_sae]``.
    """
    concept_codes = _as_sequences(concept_codes, "concept_codes")
    retain_codes = _as_sequences(retain_codes, "retain_codes")
    d_sae = concept_codes.shape[-1]
    check_last_dim(retain_codes, d_sae, "retain_codes", "d_sae")
    top_n = check_int(top_n, "top_n", minimum=1, maximum=d_sae)
    return _top_latents(concept_codes, top_n) & ~_top_latents(retain_codes, top_n)


def deactivate(codes: Float[Array, "... d_sae"], features: Bool[Array, " d_sae"],
               scale: float | Float[Array, ""]) -> Float[Array, "... d_sae"]:
    """``codes`` with the ``features`` latents multiplied by ``scale`` (0 switches them off)."""
    codes = check_float_array(codes, "codes", min_ndim=1)
    features = jnp.asarray(features)
    if features.dtype != bool or features.shape != codes.shape[-1:]:
        raise ValueError(f"`features` must be a bool array of shape ({codes.shape[-1]},); got "
                         f"{features.dtype} {features.shape}")
    return jnp.where(features, jnp.asarray(scale, codes.dtype) * codes, codes)


def _edited(params, x, config, features, scale):
    return decode(params, deactivate(encode(params, x, config), features, scale), config, x)


def _error(edited_x, x):
    return jnp.mean(((edited_x - x) ** 2).reshape(x.shape[0], -1), axis=-1)


def deactivation_error(params: Params, x: Float[Array, "n_inputs *tokens d_in"],
                       config: SAEConfig, features: Bool[Array, " d_sae"],
                       scale: float | Float[Array, ""]) -> Float[Array, " n_inputs"]:
    """Per input, the mean squared difference between its edited reconstruction and itself.

    Args:
        params: SAE params.
        x: inputs ``[n_inputs, d_in]`` or ``[n_inputs, n_tokens, d_in]``.
        config: the SAE description.
        features: bool ``[d_sae]`` (e.g. `concept_features`).
        scale: the deactivation scale.

    Returns:
        ``[n_inputs]``.
    """
    x = check_float_array(x, "x", min_ndim=2)
    return _error(_edited(params, x, config, features, scale), x)


def gate_threshold(concept_errors: Float[Array, " n"], *, margin: float = 0.01
                   ) -> Float[Array, ""]:
    """``(1 - margin) * min(concept_errors)``: the gate lets every calibration input through.

    Args:
        concept_errors: `deactivation_error` of inputs that express the concept.
        margin: relative slack below the smallest error, in ``[0, 1)`` (reference: 0.01).
    """
    concept_errors = check_float_array(concept_errors, "concept_errors", min_ndim=1)
    margin = check_float(margin, "margin", minimum=0.0, maximum=1.0, exclusive_maximum=True)
    return (1.0 - margin) * jnp.min(concept_errors)


def deactivate_concept(params: Params, x: Float[Array, "n_inputs *tokens d_in"],
                       config: SAEConfig, features: Bool[Array, " d_sae"],
                       scale: float | Float[Array, ""], threshold: float | Float[Array, ""]
                       ) -> ConceptEdit:
    """The gated ItD edit: inputs whose `deactivation_error` is ``>= threshold`` are replaced by
    their edited reconstruction; the others pass through unchanged.

    Args:
        params: SAE params.
        x: inputs ``[n_inputs, d_in]`` or ``[n_inputs, n_tokens, d_in]``.
        config: the SAE description.
        features: bool ``[d_sae]``.
        scale: the deactivation scale.
        threshold: the gate (`gate_threshold`).

    Returns:
        `ConceptEdit` ``(output, edited, error)``.
    """
    x = check_float_array(x, "x", min_ndim=2)
    edited_x = _edited(params, x, config, features, scale)
    error = _error(edited_x, x)
    gate = error >= threshold
    out = jnp.where(gate.reshape((-1,) + (1,) * (x.ndim - 1)), edited_x, x)
    return ConceptEdit(out, gate, error)

"""Concept Lancet (Luo et al., CVPR 2025): decompose a representation over a concept dictionary
by elastic net, then replace, add or remove a concept by editing its coefficient.

A representation ``x`` is written ``x = D w + r`` with ``D = [d_1 .. d_K]`` one unit atom per
concept and ``w`` the elastic-net coefficients (`sparsejax.dictionary.elastic_net`, FISTA);
an edit changes ``w`` to ``w'`` and returns ``x + D (w' - w)`` (the residual ``r`` and every
other concept stay as they were):

* remove concept ``s``: ``w'_s = 0``;
* replace ``s`` by ``t``: ``w'_t = w_t + w_s``, ``w'_s = 0`` (the source's strength moves over);
* add ``t``: ``w'_t = w_t + strength``.

Each atom is the SVD reduction of its concept's stimuli: the leading right singular vector of
the ``[n_stimuli, d]`` stimulus representations, signed to agree with their mean (the published
repository holds no code; this is our reading of the paper's dictionary synthesis).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax._checks import check_float_array, check_int
from sparsejax.dictionary.lasso import elastic_net

__all__ = ["add_concept", "concept_atoms", "concept_coefficients", "remove_concept", "replace_concept"]


def concept_atoms(stimuli: Sequence[Float[Array, "n_i d"]]) -> Float[Array, "d n_concepts"]:
    """The concept dictionary: one unit atom per concept from its stimulus representations.

    Args:
        stimuli: per concept, its stimuli's representations ``[n_i, d]`` (any ``n_i >= 1``).

    Returns:
        ``D`` ``[d, n_concepts]``, column ``k`` the leading right singular vector of
        ``stimuli[k]`` with ``mean(stimuli[k]) . d_k >= 0``.
    """
    if isinstance(stimuli, (str, bytes)) or not isinstance(stimuli, Sequence) or not stimuli:
        raise TypeError(f"`stimuli` must be a non-empty sequence of [n_i, d] arrays; got "
                        f"{type(stimuli).__name__}")
    atoms = []
    for i, s in enumerate(stimuli):
        s = check_float_array(jnp.asarray(s), f"stimuli[{i}]", min_ndim=2)
        if s.ndim != 2 or s.shape[-1] != jnp.shape(stimuli[0])[-1]:
            raise ValueError(f"`stimuli[{i}]` must have shape [n_i, d={jnp.shape(stimuli[0])[-1]}];"
                             f" got {s.shape}")
        _, _, vt = jnp.linalg.svd(s, full_matrices=False)
        v = vt[0]
        atoms.append(jnp.where(jnp.mean(s, 0) @ v < 0, -v, v))
    return jnp.stack(atoms, axis=1)


def concept_coefficients(
    dictionary: Float[Array, "d n_concepts"],
    x: Float[Array, "... d"],
    alpha: float,
    l1_ratio: float = 0.5,
    *,
    n_iter: int = 1000,
) -> Float[Array, "... n_concepts"]:
    """Elastic-net coefficients of ``x`` over the concept atoms (sklearn ``ElasticNet``'s objective).

    Args:
        dictionary: ``[d, n_concepts]`` (e.g. `concept_atoms`).
        x: representations ``[..., d]``.
        alpha: as `sparsejax.dictionary.elastic_net`.
        l1_ratio: as `sparsejax.dictionary.elastic_net`.
        n_iter: FISTA iterations.

    Returns:
        ``w`` ``[..., n_concepts]``.
    """
    return elastic_net(dictionary, x, alpha, l1_ratio, n_iter=n_iter)


def _edit(x, coefficients, dictionary, new):
    return x + (new - coefficients) @ dictionary.T.astype(x.dtype)


def _concept(index, dictionary, name):
    return check_int(index, name, minimum=0, maximum=dictionary.shape[1] - 1)


def _check(x, coefficients, dictionary):
    x = check_float_array(jnp.asarray(x), "x", min_ndim=1)
    dictionary = check_float_array(jnp.asarray(dictionary), "dictionary", min_ndim=2)
    coefficients = check_float_array(jnp.asarray(coefficients), "coefficients", min_ndim=1)
    if dictionary.ndim != 2 or dictionary.shape[0] != x.shape[-1]:
        raise ValueError(f"`dictionary` must have shape [d={x.shape[-1]}, n_concepts]; got "
                         f"{dictionary.shape}")
    if coefficients.shape != (*x.shape[:-1], dictionary.shape[1]):
        raise ValueError(f"`coefficients` must have shape {(*x.shape[:-1], dictionary.shape[1])};"
                         f" got {coefficients.shape}")
    return x, coefficients, dictionary


def remove_concept(x: Float[Array, "... d"], coefficients: Float[Array, "... n_concepts"],
                   dictionary: Float[Array, "d n_concepts"], concept: int) -> Float[Array, "... d"]:
    """``x - w_s d_s``: remove concept ``s = concept`` (see the module docstring)."""
    x, coefficients, dictionary = _check(x, coefficients, dictionary)
    s = _concept(concept, dictionary, "concept")
    return _edit(x, coefficients, dictionary, coefficients.at[..., s].set(0.0))


def replace_concept(x: Float[Array, "... d"], coefficients: Float[Array, "... n_concepts"],
                    dictionary: Float[Array, "d n_concepts"], source: int, target: int
                    ) -> Float[Array, "... d"]:
    """``x + w_s (d_t - d_s)``: the source concept's coefficient moves to the target's atom."""
    x, coefficients, dictionary = _check(x, coefficients, dictionary)
    s = _concept(source, dictionary, "source")
    t = _concept(target, dictionary, "target")
    w_s = coefficients[..., s]
    new = coefficients.at[..., s].set(0.0)
    return _edit(x, coefficients, dictionary, new.at[..., t].add(w_s))


def add_concept(x: Float[Array, "... d"], coefficients: Float[Array, "... n_concepts"],
                dictionary: Float[Array, "d n_concepts"], concept: int, strength: float
                ) -> Float[Array, "... d"]:
    """``x + strength * d_t``: add concept ``t = concept`` with the given strength."""
    x, coefficients, dictionary = _check(x, coefficients, dictionary)
    t = _concept(concept, dictionary, "concept")
    return _edit(x, coefficients, dictionary, coefficients.at[..., t].add(strength))

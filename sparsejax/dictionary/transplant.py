"""Tokenizer transplantation by OMP (mergekit ``tokensurgeon``, ``--approximation-method omp``).

A token that the donor tokenizer has but the base model lacks is coded, in the donor's embedding
space, as a ``k``-sparse combination of the embeddings of tokens both vocabularies share; the same
coefficients applied to those shared tokens' *base* embeddings give its base-space embedding.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_int
from sparsejax.dictionary.omp import omp

__all__ = ["transplant_embeddings"]


def transplant_embeddings(
    donor_embeddings: Float[Array, "donor_vocab d_donor"],
    base_embeddings: Float[Array, "base_vocab d_base"],
    shared_ids: Int[Array, " n_shared"] | Int[Array, "n_shared 2"],
    new_ids: Int[Array, " n_new"],
    k: int = 64,
    *,
    normalize: bool = False,
) -> Float[Array, "n_new d_base"]:
    """Embeddings in the base model's space for donor tokens the base vocabulary lacks.

    Args:
        donor_embeddings: ``[donor_vocab, d_donor]`` embedding table of the donor model.
        base_embeddings: ``[base_vocab, d_base]`` embedding table of the base model.
        shared_ids: tokens in both vocabularies: ``[n_shared, 2]`` rows ``(donor_id, base_id)``,
            or ``[n_shared]`` when a shared token has the same id in both tables.
        new_ids: ``[n_new]`` donor ids of the tokens to transplant.
        k: atoms per token (exactly ``k`` are used, as mergekit's ``batch_omp``); at most
            ``n_shared``.
        normalize: select atoms by cosine (unit-norm shared embeddings) instead of mergekit's raw
            inner product; the coefficients are rescaled so either way
            ``donor[new] ~ sum_j c_j donor[shared_j]``.

    Returns:
        ``[n_new, d_base]`` embeddings ``sum_j c_j base[shared_j]``, in ``base_embeddings``' dtype.
    """
    for name, t in (("donor_embeddings", donor_embeddings), ("base_embeddings", base_embeddings)):
        if not hasattr(t, "ndim") or t.ndim != 2:
            raise ValueError(
                f"`{name}` must be 2-D [vocab, dim]; got "
                f"{getattr(t, 'shape', type(t).__name__)}"
            )
    shared_ids = jnp.asarray(shared_ids)
    new_ids = jnp.asarray(new_ids)
    if not jnp.issubdtype(shared_ids.dtype, jnp.integer) or not jnp.issubdtype(
        new_ids.dtype, jnp.integer
    ):
        raise TypeError(
            "`shared_ids` and `new_ids` must be integer arrays; got "
            f"{shared_ids.dtype} and {new_ids.dtype}"
        )
    if shared_ids.ndim == 1:
        donor_shared, base_shared = shared_ids, shared_ids
    elif shared_ids.ndim == 2 and shared_ids.shape[1] == 2:
        donor_shared, base_shared = shared_ids[:, 0], shared_ids[:, 1]
    else:
        raise ValueError(
            "`shared_ids` must be [n_shared] or [n_shared, 2] "
            f"(donor_id, base_id); got shape {tuple(shared_ids.shape)}"
        )
    if new_ids.ndim != 1:
        raise ValueError(f"`new_ids` must be 1-D; got {new_ids.shape}")
    n_shared = donor_shared.shape[0]
    check_int(k, "k", minimum=1, maximum=n_shared)
    atoms = donor_embeddings[donor_shared].astype(jnp.float32).T  # [d_donor, n_shared]
    targets = donor_embeddings[new_ids].astype(jnp.float32)
    scale = jnp.ones((n_shared,), jnp.float32)
    if normalize:
        scale = 1 / jnp.maximum(jnp.linalg.norm(atoms, axis=0), 1e-12)
        atoms = atoms * scale
    code = omp(atoms, targets, k=k, exact_k=True, return_indices=True)
    coef = code.values * scale[code.indices]
    rows = base_embeddings[base_shared[code.indices]].astype(jnp.float32)  # [n_new, k, d_base]
    return jnp.einsum("nk,nkd->nd", coef, rows).astype(base_embeddings.dtype)

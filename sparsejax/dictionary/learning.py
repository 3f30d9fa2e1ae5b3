"""Dictionary learning: online mini-batch (Mairal et al. 2009, scikit-learn's update) and
approximate K-SVD (Rubinstein, Zibulevsky and Elad 2008), with OMP or Lasso (FISTA) coding.

Layout follows `sparsejax.dictionary.omp`: data ``[n_samples, n_features]`` (batch-first),
the dictionary ``[n_features, n_atoms]`` with unit-norm atoms as columns, codes
``[n_samples, n_atoms]``, so ``data ~ codes @ dictionary.T`` (scikit-learn's ``components_`` is
``dictionary.T``).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_choice, check_float_array, check_int, check_shape, must_be
from sparsejax.dictionary.lasso import fista
from sparsejax.dictionary.omp import omp

__all__ = [
    "OnlineDictionaryState",
    "atom_recovery",
    "init_dictionary",
    "ksvd",
    "ksvd_atom_updates",
    "minibatch_dictionary_learning",
    "online_dictionary_init",
    "online_dictionary_update",
    "sparse_encode",
]

Method = Literal["omp", "lasso"]


class OnlineDictionaryState(NamedTuple):
    """State of online dictionary learning.

    Attributes:
        dictionary: ``[n_features, n_atoms]`` with columns of norm <= 1.
        a: ``[n_atoms, n_atoms]`` running ``sum code^T code`` (scikit-learn's ``A``).
        b: ``[n_features, n_atoms]`` running ``sum x^T code`` (scikit-learn's ``B``).
        step: number of mini-batches seen (int32 scalar).
    """

    dictionary: Float[Array, "n_features n_atoms"]
    a: Float[Array, "n_atoms n_atoms"]
    b: Float[Array, "n_features n_atoms"]
    step: Int[Array, ""]


def _check_data(data):
    data = check_float_array(data, "data")
    if data.ndim != 2:
        raise ValueError(must_be("data", "a 2-D array [n_samples, n_features]",
                                 f"shape {tuple(data.shape)}", raw=True))
    if data.shape[0] == 0:
        raise ValueError(must_be("data", "an array with at least one sample",
                                 f"shape {tuple(data.shape)}", raw=True))


def _check_method(method, k, alpha, n_atoms=None):
    check_choice(method, "method", ("omp", "lasso"))
    if method == "omp":
        check_int(k, "k", minimum=1, maximum=n_atoms)
    elif alpha is None or not alpha >= 0:
        raise ValueError(must_be("alpha", "a float >= 0 (method='lasso' needs it)", alpha))


def _normalize_columns(d, eps=1e-12):
    return d / jnp.maximum(jnp.linalg.norm(d, axis=0, keepdims=True), eps)


def init_dictionary(
    key: Array, data: Float[Array, "n_samples n_features"], n_atoms: int, noise: float = 0.01
) -> Float[Array, "n_features n_atoms"]:
    """Unit-norm atoms drawn from the data: ``n_atoms`` distinct random samples (with replacement
    if there are fewer samples) plus a little Gaussian noise, normalised."""
    _check_data(data)
    check_int(n_atoms, "n_atoms", minimum=1)
    k_pick, k_noise = jax.random.split(key)
    n = data.shape[0]
    idx = jax.random.choice(k_pick, n, (n_atoms,), replace=n_atoms > n)
    atoms = data[idx].T
    scale = noise * (jnp.std(data) + 1e-12)
    atoms = atoms + scale * jax.random.normal(k_noise, atoms.shape, atoms.dtype)
    return _normalize_columns(atoms)


def sparse_encode(
    dictionary: Float[Array, "n_features n_atoms"],
    data: Float[Array, "... n_features"],
    *,
    method: Method = "omp",
    k: int | None = None,
    alpha: float | None = None,
    n_iter: int = 100,
) -> Float[Array, "... n_atoms"]:
    """Codes by OMP with ``k`` atoms, or by Lasso (FISTA, ``n_iter`` steps) with weight
    ``alpha``."""
    _check_method(method, k, alpha)
    if method == "omp":
        return omp(dictionary, data, k=k)
    return fista(dictionary, data, alpha, n_iter=n_iter)


# ----------------------------------------------------------------------------------------------
# Online (mini-batch) dictionary learning.


def online_dictionary_init(
    dictionary: Float[Array, "n_features n_atoms"],
) -> OnlineDictionaryState:
    """Fresh state (zero sufficient statistics) around an initial dictionary."""
    n_features, n_atoms = dictionary.shape
    return OnlineDictionaryState(
        dictionary,
        jnp.zeros((n_atoms, n_atoms), dictionary.dtype),
        jnp.zeros((n_features, n_atoms), dictionary.dtype),
        jnp.zeros((), jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("positive",))
def online_dictionary_update(
    state: OnlineDictionaryState,
    batch: Float[Array, "batch n_features"],
    codes: Float[Array, "batch n_atoms"],
    key: Array,
    *,
    positive: bool = False,
) -> OnlineDictionaryState:
    """One mini-batch update, as scikit-learn's ``MiniBatchDictionaryLearning``.

    Sufficient statistics with scikit-learn's forgetting factor: with ``b`` the batch size and
    ``theta = (step + 1) b`` while ``step < b - 1``, else ``b^2 + step + 1 - b``,
    ``beta = (theta + 1 - b) / (theta + 1)``; ``A <- beta A + codes^T codes / b``,
    ``B <- beta B + batch^T codes / b``. Then one pass of block coordinate descent over the atoms:
    ``d_j <- d_j + (B_j - D A_j) / A_jj``, projected onto ``||d_j|| <= 1``. An atom with
    ``A_jj <= 1e-6`` (almost never used) is replaced by a random sample of the batch plus noise of
    1% of its standard deviation.

    Args:
        state: the current `OnlineDictionaryState`.
        batch: ``[batch, n_features]`` samples.
        codes: ``[batch, n_atoms]`` their codes over ``state.dictionary``.
        key: PRNG key for replacing unused atoms.
        positive: clip atoms at zero (non-negative dictionary).

    Returns:
        The updated state.
    """
    d, a, b, step = state
    bs = batch.shape[0]
    theta = jnp.where(step < bs - 1, (step + 1) * bs, bs * bs + step + 1 - bs).astype(d.dtype)
    beta = (theta + 1 - bs) / (theta + 1)
    a = beta * a + codes.T @ codes / bs
    b = beta * b + batch.T @ codes / bs
    keys = jax.random.split(key, d.shape[1])

    def atom(j, d):
        used = a[j, j] > 1e-6
        upd = d[:, j] + (b[:, j] - d @ a[:, j]) / jnp.where(used, a[j, j], 1)
        k_pick, k_noise = jax.random.split(keys[j])
        sample = batch[jax.random.randint(k_pick, (), 0, bs)]
        std = jnp.std(sample)
        noise = 0.01 * jnp.where(std > 0, std, 1) * jax.random.normal(k_noise, sample.shape,
                                                                      d.dtype)
        new = jnp.where(used, upd, sample + noise)
        if positive:
            new = jnp.maximum(new, 0)
        new = new / jnp.maximum(jnp.linalg.norm(new), 1)
        return d.at[:, j].set(new)

    d = jax.lax.fori_loop(0, d.shape[1], atom, d)
    return OnlineDictionaryState(d, a, b, step + 1)


@functools.partial(
    jax.jit, static_argnames=("method", "k", "alpha", "batch_size", "positive")
)
def _online_step(state, data, key, *, method, k, alpha, batch_size, positive):
    k_batch, k_upd = jax.random.split(key)
    idx = jax.random.choice(k_batch, data.shape[0], (batch_size,), replace=False)
    batch = data[idx]
    codes = sparse_encode(state.dictionary, batch, method=method, k=k, alpha=alpha)
    return online_dictionary_update(state, batch, codes, k_upd, positive=positive)


def minibatch_dictionary_learning(
    data: Float[Array, "n_samples n_features"],
    n_atoms: int,
    *,
    key: Array,
    method: Method = "omp",
    k: int | None = None,
    alpha: float | None = None,
    batch_size: int = 256,
    n_steps: int = 200,
    init: Float[Array, "n_features n_atoms"] | None = None,
    positive: bool = False,
    progress: bool = False,
) -> tuple[Float[Array, "n_features n_atoms"], OnlineDictionaryState]:
    """Online dictionary learning over random mini-batches (sampled without replacement within a
    batch) with OMP (``k`` atoms) or Lasso (``alpha``) coding.

    Args:
        data: ``[n_samples, n_features]``.
        n_atoms: dictionary size.
        key: PRNG key (initialisation, batches, unused-atom replacement).
        method: ``"omp"`` or ``"lasso"`` (FISTA, 100 steps).
        k: atoms per code for OMP.
        alpha: L1 weight for Lasso (scikit-learn's ``alpha``).
        batch_size: samples per step.
        n_steps: number of mini-batch steps.
        init: initial dictionary ``[n_features, n_atoms]``; default `init_dictionary`.
        positive: non-negative atoms.
        progress: show a tqdm progress bar.

    Returns:
        ``(dictionary, state)``: the learned unit-norm ``[n_features, n_atoms]`` dictionary and the
        final `OnlineDictionaryState` (to continue training on more data).
    """
    _check_data(data)
    check_int(n_atoms, "n_atoms", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(n_steps, "n_steps", minimum=1)
    _check_method(method, k, alpha, n_atoms)
    if init is not None:
        check_shape(init, (data.shape[1], n_atoms), "init")
    from tqdm.auto import tqdm

    key, k_init = jax.random.split(key)
    dictionary = init_dictionary(k_init, data, n_atoms) if init is None else init
    state = online_dictionary_init(dictionary.astype(data.dtype))
    bs = min(batch_size, data.shape[0])

    for _ in tqdm(range(n_steps), desc="dictionary", disable=not progress, leave=False):
        key, sub = jax.random.split(key)
        state = _online_step(state, data, sub, method=method, k=k, alpha=alpha, batch_size=bs,
                             positive=positive)
    return _normalize_columns(state.dictionary), state


# ----------------------------------------------------------------------------------------------
# Approximate K-SVD.


@jax.jit
def ksvd_atom_updates(
    dictionary: Float[Array, "n_features n_atoms"],
    data: Float[Array, "n_samples n_features"],
    codes: Float[Array, "n_samples n_atoms"],
) -> tuple[Float[Array, "n_features n_atoms"], Float[Array, "n_samples n_atoms"]]:
    """One sweep of approximate K-SVD atom updates (Rubinstein et al. 2008, Algorithm 5).

    For each atom ``j`` in turn, with ``I`` the samples whose code uses it and ``E`` the residual
    without atom ``j`` on ``I``: ``d = E g / ||E g||``, ``g = E^T d`` (one power iteration in place
    of the SVD); the support of the codes is unchanged. An atom used by no sample is replaced by
    the worst-represented sample, normalised.

    Returns:
        ``(dictionary, codes)`` after the sweep.
    """
    resid = data - codes @ dictionary.T

    def atom(j, carry):
        d, x, r = carry
        g = x[:, j]
        used = g != 0
        e = r + jnp.outer(g, d[:, j])
        dn = e.T @ g
        norm = jnp.linalg.norm(dn)
        alive = norm > 0
        worst = r[jnp.argmax(jnp.sum(r * r, axis=1))]
        dn = jnp.where(alive, dn / jnp.where(alive, norm, 1),
                       worst / jnp.maximum(jnp.linalg.norm(worst), 1e-12))
        gn = jnp.where(used & alive, e @ dn, 0)
        r = e - jnp.outer(gn, dn)
        return d.at[:, j].set(dn), x.at[:, j].set(gn), r

    d, x, _ = jax.lax.fori_loop(0, dictionary.shape[1], atom, (dictionary, codes, resid))
    return d, x


def ksvd(
    data: Float[Array, "n_samples n_features"],
    n_atoms: int,
    *,
    key: Array,
    k: int | None = None,
    method: Method = "omp",
    alpha: float | None = None,
    n_iter: int = 20,
    init: Float[Array, "n_features n_atoms"] | None = None,
    progress: bool = False,
) -> tuple[Float[Array, "n_features n_atoms"], Float[Array, "n_samples n_atoms"]]:
    """Approximate K-SVD: alternate sparse coding of all samples (OMP with ``k`` atoms, or Lasso)
    with `ksvd_atom_updates`; between rounds, atoms that duplicate an earlier atom
    (``|cos| > 0.99``) or that no sample uses are replaced by the worst-represented samples.

    Returns:
        ``(dictionary [n_features, n_atoms], codes [n_samples, n_atoms])`` after ``n_iter`` rounds
        (the codes are those of the last atom sweep).
    """
    _check_data(data)
    check_int(n_atoms, "n_atoms", minimum=1)
    check_int(n_iter, "n_iter", minimum=1)
    _check_method(method, k, alpha, n_atoms)
    if init is not None:
        check_shape(init, (data.shape[1], n_atoms), "init")
    from tqdm.auto import tqdm

    d = init_dictionary(key, data, n_atoms) if init is None else _normalize_columns(init)
    codes = None
    for it in range(n_iter) if not progress else tqdm(range(n_iter), desc="k-svd", leave=False):
        codes = sparse_encode(d, data, method=method, k=k, alpha=alpha)
        d, codes = ksvd_atom_updates(d, data, codes)
        if it < n_iter - 1:
            d = _replace_duplicate_atoms(d, data, codes)
    return d, codes


@jax.jit
def _replace_duplicate_atoms(d, data, codes, max_cos=0.99):
    """K-SVD's dictionary clean-up: an atom nearly parallel to an earlier one (``|cos| > max_cos``)
    or used by no sample is replaced by one of the worst-represented samples (normalised)."""
    n_atoms = d.shape[1]
    cos = jnp.abs(d.T @ d)
    earlier = jnp.tril(jnp.ones((n_atoms, n_atoms), bool), -1).T  # [i, j]: i < j
    dup = jnp.any((cos > max_cos) & earlier, axis=0)
    unused = ~jnp.any(codes != 0, axis=0)
    bad = dup | unused
    err = jnp.sum((data - codes @ d.T) ** 2, axis=1)
    order = jnp.argsort(-err)
    rank = jnp.cumsum(bad) - 1  # the r-th bad atom takes the r-th worst sample
    cand = data[order[jnp.clip(rank, 0, data.shape[0] - 1)]].T
    cand = cand / jnp.maximum(jnp.linalg.norm(cand, axis=0, keepdims=True), 1e-12)
    return jnp.where(bad[None, :], cand, d)


def atom_recovery(
    learned: Float[Array, "n_features n_learned"],
    true: Float[Array, "n_features n_true"],
    threshold: float = 0.9,
) -> tuple[float, Float[Array, " n_true"]]:
    """Fraction of true atoms matched by some learned atom with ``|cosine| >= threshold``.

    Returns:
        ``(fraction, best_cosine)`` with ``best_cosine[j] = max_i |cos(learned_i, true_j)|``.
    """
    ln = _normalize_columns(learned)
    tn = _normalize_columns(true)
    best = jnp.max(jnp.abs(ln.T @ tn), axis=0)
    return float(jnp.mean(best >= threshold)), best

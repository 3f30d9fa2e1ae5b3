"""Predictive metrics of Bayesian classifiers and the training-cost estimate of SSVI vs dense VI.

`predict` averages ``K`` Monte-Carlo forward passes into the predictive distribution; `accuracy`,
`nll`, `expected_calibration_error` (15 equal-width confidence bins, Guo et al. 2017) and
`predictive_entropy` score it. `training_flops` counts the matmul FLOPs of one LRT training step for
the masked posterior and for the dense mean-field posterior of the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import _is_none, check_float_array, check_int, is_concrete, must_be
from sparsejax.bayes.posterior import Posterior, _check_posterior

__all__ = [
    "accuracy",
    "expected_calibration_error",
    "nll",
    "predict",
    "predict_model",
    "predictive_entropy",
    "training_flops",
]


def predict(
    fn: Callable[[jax.Array, Any], Float[Array, "*batch k"]],
    key: jax.Array,
    x: Any,
    *,
    samples: int,
) -> Float[Array, "*batch k"]:
    """Monte-Carlo predictive mean ``(1/K) sum_k fn(key_k, x)`` over ``K = samples`` keys.

    Args:
        fn: ``fn(key, x) -> probabilities`` (one stochastic forward pass, e.g. softmax of an LRT
            network).
        key: PRNG key (split into ``samples`` keys).
        x: the inputs passed to ``fn``.
        samples: ``K >= 1``.

    Returns:
        the average of the ``K`` outputs.
    """
    samples = check_int(samples, "samples", minimum=1)
    keys = jax.random.split(key, samples)
    return jnp.mean(jax.vmap(lambda k: fn(k, x))(keys), axis=0)


def predict_model(
    model: Callable[..., Any],
    x: Any,
    key: jax.Array,
    *,
    samples: int,
    link: Callable[[jax.Array], jax.Array] | None = jax.nn.softmax,
) -> Float[Array, "*batch k"]:
    """Monte-Carlo predictive of a whole model: ``(1/K) sum_k link(model(x, key=key_k))``.

    ``model`` is anything called as ``model(x, key=k)`` for one stochastic pass and
    ``model(x)`` for the mean weights: a Flax NNX or Equinox model built from the SSVI layers
    (`sparsejax.nn.SSVILinear`, ...) that passes ``key`` on to them.

    Args:
        model: the model (NNX module, Equinox module or function).
        x: its inputs.
        key: PRNG key, split into ``samples`` keys.
        samples: ``K >= 1``.
        link: applied to each pass before averaging: ``jax.nn.softmax`` (default: class
            probabilities from logits) or ``None`` (average the raw outputs).

    Returns:
        the average of the ``K`` linked outputs.
    """
    if link is not None and not callable(link):
        raise TypeError(must_be("link", "a callable (e.g. jax.nn.softmax) or None", link))
    if not callable(model):
        raise TypeError(must_be("model", "a callable model(x, key=k)", model))
    fn = (lambda out: out) if link is None else link
    return predict(lambda k, xb: fn(model(xb, key=k)), key, x, samples=samples)


def _check_probs(probs, labels=None):
    """Probabilities ``[..., K]`` and integer labels in ``[0, K)``, checked where concrete.

    Under ``jit`` the values are not checked: an out-of-range label indexes out of bounds (``nll``
    of a label ``-1`` scores the last class) and logits give meaningless metrics.
    """
    probs = check_float_array(probs, "probs")
    if probs.ndim < 1:
        raise ValueError(f"`probs` must be [..., classes]; got shape {probs.shape}.")
    if is_concrete(probs) and probs.size:
        lo, hi = float(jnp.min(probs)), float(jnp.max(probs))
        row_sums = jnp.sum(probs.astype(jnp.float32), axis=-1)
        worst = float(jnp.max(jnp.abs(row_sums - 1)))
        if not (lo >= 0 and hi <= 1 and worst <= 1e-2):
            raise ValueError(must_be("probs", "probabilities (entries in [0, 1], each row "
                                     "summing to 1; apply jax.nn.softmax to logits)",
                                     f"entries in [{lo:.4g}, {hi:.4g}], row sums off by up to "
                                     f"{worst:.3g}", raw=True))
    if labels is not None:
        labels = jnp.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"`labels` must be an integer array; got dtype {labels.dtype}.")
        if labels.shape != probs.shape[:-1]:
            raise ValueError(f"`labels` must have shape {probs.shape[:-1]}; got {labels.shape}.")
        k = probs.shape[-1]
        if is_concrete(labels) and labels.size:
            lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
            if lo < 0 or hi >= k:
                raise ValueError(must_be("labels", f"class indices in [0, {k - 1}] ({k} classes)",
                                         f"values in [{lo}, {hi}]", raw=True))
    return probs, labels


def accuracy(probs: Float[Array, "*batch k"], labels: Int[Array, "*batch"]) -> Float[Array, ""]:
    """Fraction of ``argmax(probs) == labels``.

    ``probs`` must be probabilities and ``labels`` in ``[0, K)``: checked when concrete, not under
    ``jit`` (where an out-of-range label is silently out of bounds).
    """
    probs, labels = _check_probs(probs, labels)
    return jnp.mean(jnp.argmax(probs, axis=-1) == labels)


def nll(probs: Float[Array, "*batch k"], labels: Int[Array, "*batch"]) -> Float[Array, ""]:
    """Mean negative log-likelihood ``-log p(label)`` of the predictive probabilities.

    ``ValueError`` for a label outside ``[0, K)`` or ``probs`` that are not probabilities (e.g.
    logits), when concrete. Under ``jit`` nothing is checked: a label ``-1`` scores the last
    class and a label ``K`` gives ``NaN``; check labels before jitting.
    """
    probs, labels = _check_probs(probs, labels)
    p = jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
    return -jnp.mean(jnp.log(jnp.maximum(p, jnp.finfo(probs.dtype).tiny)))


def expected_calibration_error(probs: Float[Array, "*batch k"], labels: Int[Array, "*batch"],
                               bins: int = 15) -> Float[Array, ""]:
    """ECE: ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`` over equal-width confidence bins.

    Confidence is ``max(probs)``; bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]``.
    ``probs`` must be probabilities (``ValueError`` for logits, when concrete).
    """
    probs, labels = _check_probs(probs, labels)
    bins = check_int(bins, "bins", minimum=1)
    conf = jnp.max(probs, axis=-1).reshape(-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).reshape(-1).astype(jnp.float32)
    idx = jnp.clip(jnp.ceil(conf * bins).astype(jnp.int32) - 1, 0, bins - 1)
    acc_sum = jnp.zeros(bins).at[idx].add(correct)
    conf_sum = jnp.zeros(bins).at[idx].add(conf.astype(jnp.float32))
    return jnp.sum(jnp.abs(acc_sum - conf_sum)) / conf.size


def predictive_entropy(probs: Float[Array, "*batch k"]) -> Float[Array, "*batch"]:
    """Entropy ``-sum_k p_k log p_k`` (nats) of each predictive distribution."""
    probs, _ = _check_probs(probs)
    logp = jnp.log(jnp.maximum(probs, jnp.finfo(probs.dtype).tiny))
    return -jnp.sum(jnp.where(probs > 0, probs * logp, 0.0), axis=-1)


def training_flops(posterior: Posterior, positions: Any) -> dict[str, float]:
    """Matmul FLOPs of one LRT training step: the masked posterior vs dense mean-field VI.

    Per selected leaf with ``p`` output positions per step (batch size for a linear layer, batch x
    output pixels for a convolution: each weight is used once per output position), the forward pass
    runs two products (mean ``x @ mu`` and variance ``x^2 @ sigma^2``) of
    ``2 p nnz`` FLOPs each, and the backward pass twice that (input and weight gradients), so
    ``12 p nnz`` per step; dense VI uses the leaf size for ``nnz``. Unselected leaves (biases) are
    not counted. This is the sparse-kernel cost; masked dense matmuls (as on CPU here) run at
    the dense cost.

    Args:
        posterior: a `Posterior`.
        positions: output positions per step: an int for every leaf, or a tree mirroring
            ``posterior.mu`` (ints on selected leaves, ``None`` elsewhere).

    Returns:
        ``{"sparse": ..., "dense": ..., "ratio": sparse / dense}`` (Python floats).
    """
    _check_posterior(posterior)
    masks = jax.tree.leaves(posterior.mask, is_leaf=_is_none)
    if isinstance(positions, int):
        pos = [positions] * len(masks)
    else:
        pos = jax.tree.structure(posterior.mask, is_leaf=_is_none).flatten_up_to(positions)
    sparse = dense = 0.0
    for m, p in zip(masks, pos):
        if m is None:
            continue
        p = check_int(p, "positions", minimum=0)
        sparse += 12.0 * p * float(jnp.sum(m))
        dense += 12.0 * p * m.size
    return {"sparse": sparse, "dense": dense, "ratio": sparse / dense if dense else 1.0}

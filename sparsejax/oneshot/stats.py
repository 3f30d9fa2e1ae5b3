"""Calibration statistics of a layer's inputs, accumulated batch by batch without holding activations."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sparsejax._checks import check_float_array

__all__ = ["LayerStats"]


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class LayerStats:
    """Running statistics of the inputs ``x`` (``[..., features]``) that feed one linear layer.

    A registered pytree (it passes through ``jit``, ``vmap``, ``lax.scan``); every field is a float32
    accumulation (int32 for the count) whatever the input dtype. Rows of ``x`` are *tokens*: every
    leading axis (batch, sequence) is flattened.

    Attributes:
        count: number of tokens seen, int32 scalar.
        sum: ``sum_t x_t``, ``[features]``.
        sumsq: ``sum_t x_t**2``, ``[features]`` (Wanda's ``||X_j||_2**2``).
        gram: ``X^T X = sum_t x_t x_t^T``, ``[features, features]``, or ``None`` when made with
            ``gram=False`` (SparseGPT and DSnoT's reconstruction guard need it; Wanda does not).
    """

    count: Int[Array, ""]
    sum: Float[Array, " features"]
    sumsq: Float[Array, " features"]
    gram: Float[Array, "features features"] | None = None

    def tree_flatten(self):
        return (self.count, self.sum, self.sumsq, self.gram), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def features(self) -> int:
        """Number of input features."""
        return self.sum.shape[-1]

    @classmethod
    def zeros(cls, features: int, *, gram: bool = True) -> LayerStats:
        """Empty statistics for ``features`` inputs (count 0)."""
        return cls(jnp.zeros((), jnp.int32), jnp.zeros(features, jnp.float32),
                   jnp.zeros(features, jnp.float32),
                   jnp.zeros((features, features), jnp.float32) if gram else None)

    @classmethod
    def from_inputs(cls, x: Float[Array, "*batch features"], where: Bool[Array, "*batch"] | None = None,
                    *, gram: bool = True) -> LayerStats:
        """Statistics of one batch of inputs ``x`` (``[..., features]``, any float dtype); see
        `update` for ``where``."""
        x = check_float_array(x, "x")
        if x.ndim == 0:
            raise ValueError("`x` must have a feature axis ([..., features]); got a scalar.")
        return cls.zeros(x.shape[-1], gram=gram).update(x, where)

    def update(self, x: Float[Array, "*batch features"],
               where: Bool[Array, "*batch"] | None = None) -> LayerStats:
        """These statistics extended by the tokens of ``x`` (``[..., features]``).

        Args:
            x: inputs; every leading axis is a token axis.
            where: optional ``[...]`` mask of the tokens to count (e.g. an attention mask, so
                padding does not enter the statistics); ``None`` counts all.
        """
        x = check_float_array(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.features:
            raise ValueError(f"`x` must have {self.features} features (the last axis) like these "
                             f"statistics; got x of shape {x.shape}.")
        x32 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        if where is None:
            count = x32.shape[0]
        else:
            if jnp.shape(where) != x.shape[:-1]:
                raise ValueError(f"`where` must have the token shape x.shape[:-1] = {x.shape[:-1]}; "
                                 f"got shape {jnp.shape(where)}.")
            keep = jnp.asarray(where).reshape(-1).astype(bool)
            x32 = jnp.where(keep[:, None], x32, 0.0)
            count = jnp.sum(keep, dtype=jnp.int32)
        gram = None
        if self.gram is not None:
            gram = self.gram + jnp.matmul(x32.T, x32, precision=jax.lax.Precision.HIGHEST)
        return LayerStats(self.count + count, self.sum + jnp.sum(x32, axis=0),
                          self.sumsq + jnp.sum(x32 * x32, axis=0), gram)

    @property
    def mean(self) -> Float[Array, " features"]:
        """Per-feature mean ``E[x_j]``."""
        return self.sum / jnp.maximum(self.count, 1)

    @property
    def var(self) -> Float[Array, " features"]:
        """Per-feature population variance ``E[x_j^2] - E[x_j]^2`` (clipped at 0)."""
        return jnp.maximum(self.sumsq / jnp.maximum(self.count, 1) - self.mean ** 2, 0.0)

    @property
    def norms(self) -> Float[Array, " features"]:
        """Per-feature L2 norm over all tokens, ``||X_j||_2`` (the Wanda input factor)."""
        return jnp.sqrt(self.sumsq)

"""Flax NNX sparse autoencoder / transcoder over `sparsejax.dictionary.sae`'s functional core.

Parameters are ``nnx.Param`` attributes named as in `sparsejax.dictionary.sae.functional`
(``W_enc``, ``W_dec``, ...); the training state (dead-latent tracker, firing-density EMA, BatchTopK
threshold) lives in `SAEStateVariable` attributes that `SparseAutoencoder.loss` updates in place,
so ``nnx.value_and_grad`` with its default ``nnx.Param`` filter differentiates only the parameters.
The Equinox counterpart is `sparsejax.nn.eqx.SparseAutoencoder`.

Example::

    from sparsejax.dictionary.sae import SAEConfig, remove_decoder_parallel_grads
    from sparsejax.nn import SparseAutoencoder

    model = SparseAutoencoder(SAEConfig(d_in=384, d_sae=6144, k=32), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.chain(remove_decoder_parallel_grads(), optax.adam(1e-4)),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        (loss, metrics), grads = nnx.value_and_grad(lambda m: m.loss(x), has_aux=True)(model)
        opt.update(model, grads)
        model.normalize_decoder_()
        return metrics
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from sparsejax.dictionary.sae import functional as F
from sparsejax.dictionary.sae.decoder import unit_norm_rows

__all__ = ["SparseAutoencoder", "SAEStateVariable"]


class SAEStateVariable(nnx.Variable):
    """Non-trainable SAE training state (not an ``nnx.Param``)."""


class SparseAutoencoder(nnx.Module):
    """A sparse autoencoder / transcoder as a Flax NNX module.

    Args:
        config: the static `sparsejax.dictionary.sae.SAEConfig`.
        rngs: ``nnx.Rngs`` (its ``params`` stream initialises the weights).
        b_dec: optional initial decoder bias ``[d_out]``.
        dtype: parameter dtype.
    """

    def __init__(self, config: F.SAEConfig, *, rngs: nnx.Rngs,
                 b_dec: Float[Array, " d_out"] | None = None, dtype: Any = jnp.float32):
        if not isinstance(config, F.SAEConfig):
            raise TypeError(f"config must be an SAEConfig, got {type(config).__name__}")
        self.config = config
        params = F.init_sae(rngs.params(), config, b_dec=b_dec, dtype=dtype)
        self.param_names = tuple(sorted(params))
        for name in self.param_names:
            setattr(self, name, nnx.Param(params[name]))
        st = F.init_state(config)
        self.tokens_since_fired = SAEStateVariable(st.tokens_since_fired)
        self.density = SAEStateVariable(st.density)
        self.threshold = SAEStateVariable(st.threshold)
        self.step = SAEStateVariable(st.step)

    def params(self) -> F.Params:
        """The parameters as the functional core's dict."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    def state(self) -> F.SAEState:
        """The training state as a `sparsejax.dictionary.sae.SAEState`."""
        return F.SAEState(self.tokens_since_fired[...], self.density[...], self.threshold[...],
                          self.step[...])

    def encode(self, x: Float[Array, "... d_in"], *, inference: bool = False,
               grad: Float[Array, "... d_out"] | None = None) -> Float[Array, "... d_sae"]:
        """Codes of ``x``; ``inference=True`` uses BatchTopK's tracked threshold; ``grad`` is the
        downstream gradient that ``gradient_topk`` (g-SAE) needs."""
        threshold = self.threshold[...] if inference and \
            self.config.activation == "batch_topk" else None
        return F.encode(self.params(), x, self.config, threshold=threshold, grad=grad)

    def decode(self, codes: Float[Array, "... d_sae"],
               x: Float[Array, "... d_in"] | None = None) -> Float[Array, "... d_out"]:
        """Reconstruction from codes (``x`` is needed with a skip connection)."""
        return F.decode(self.params(), codes, self.config, x)

    def __call__(self, x: Float[Array, "... d_in"], *, inference: bool = False,
                 grad: Float[Array, "... d_out"] | None = None) -> Float[Array, "... d_out"]:
        """Reconstruction of ``x`` (or the transcoder's prediction)."""
        return self.decode(self.encode(x, inference=inference, grad=grad), x)

    def loss(self, x: Float[Array, "... d_in"], y: Float[Array, "... d_out"] | None = None,
             *, grad: Float[Array, "... d_out"] | None = None) -> tuple[Array, dict[str, Array]]:
        """Training loss and metrics; updates the state variables in place."""
        loss, out = F.sae_loss(self.params(), x, self.config, self.state(), y, grad=grad)
        st = out.state
        self.tokens_since_fired[...] = st.tokens_since_fired
        self.density[...] = st.density
        self.threshold[...] = st.threshold
        self.step[...] = st.step
        return loss, out.metrics

    def normalize_decoder_(self) -> None:
        """Rescale the decoder rows to unit norm in place."""
        self.W_dec[...] = jax.lax.stop_gradient(unit_norm_rows(self.W_dec[...]))

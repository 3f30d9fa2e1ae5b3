"""Equinox sparse autoencoder / transcoder over `sparsejax.dictionary.sae`'s functional core.

The Equinox counterpart of `sparsejax.nn.SparseAutoencoder`. The module holds the params dict
(``W_enc``, ``W_dec``, ... as in `sparsejax.dictionary.sae.functional`) and the
static config; the training state is explicit (a `sparsejax.dictionary.sae.SAEState` passed in and returned),
as is usual in Equinox.

Example::

    from sparsejax.dictionary.sae import SAEConfig, init_state, remove_decoder_parallel_grads
    from sparsejax.nn.eqx import SparseAutoencoder

    model = SparseAutoencoder(SAEConfig(d_in=384, d_sae=6144, k=32), key=key)
    opt = optax.chain(remove_decoder_parallel_grads(), optax.adam(1e-4))
    opt_state = opt.init(eqx.filter(model, eqx.is_array))
    state = init_state(model.config)

    @eqx.filter_jit
    def step(model, opt_state, state, x):
        (loss, out), grads = eqx.filter_value_and_grad(
            lambda m: m.loss(x, state), has_aux=True)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates).normalize_decoder()
        return model, opt_state, out.state, out.metrics
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from sparsejax.dictionary.sae import functional as F
from sparsejax.dictionary.sae.decoder import normalize_decoder

__all__ = ["SparseAutoencoder"]


class SparseAutoencoder(eqx.Module):
    """A sparse autoencoder / transcoder as an Equinox module.

    Args:
        config: the static `sparsejax.dictionary.sae.SAEConfig`.
        key: PRNG key for the initialisation.
        b_dec: optional initial decoder bias ``[d_out]``.
        dtype: parameter dtype.
    """

    params: dict[str, Array]
    config: F.SAEConfig = eqx.field(static=True)

    def __init__(self, config: F.SAEConfig, *, key: Array,
                 b_dec: Float[Array, " d_out"] | None = None, dtype: Any = jnp.float32):
        if not isinstance(config, F.SAEConfig):
            raise TypeError(f"config must be an SAEConfig, got {type(config).__name__}")
        self.config = config
        self.params = F.init_sae(key, config, b_dec=b_dec, dtype=dtype)

    def encode(self, x: Float[Array, "... d_in"], *, threshold: Array | None = None,
               grad: Float[Array, "... d_out"] | None = None) -> Float[Array, "... d_sae"]:
        """Codes of ``x`` (``threshold``: BatchTopK's inference threshold, ``state.threshold``;
        ``grad``: the downstream gradient that ``gradient_topk`` needs)."""
        return F.encode(self.params, x, self.config, threshold=threshold, grad=grad)

    def decode(self, codes: Float[Array, "... d_sae"],
               x: Float[Array, "... d_in"] | None = None) -> Float[Array, "... d_out"]:
        """Reconstruction from codes (``x`` is needed with a skip connection)."""
        return F.decode(self.params, codes, self.config, x)

    def __call__(self, x: Float[Array, "... d_in"], *, threshold: Array | None = None,
                 grad: Float[Array, "... d_out"] | None = None) -> Float[Array, "... d_out"]:
        """Reconstruction of ``x`` (or the transcoder's prediction)."""
        return self.decode(self.encode(x, threshold=threshold, grad=grad), x)

    def loss(self, x: Float[Array, "... d_in"], state: F.SAEState,
             y: Float[Array, "... d_out"] | None = None, *,
             grad: Float[Array, "... d_out"] | None = None) -> tuple[Array, F.SAEOutput]:
        """``(loss, SAEOutput)`` as `sparsejax.dictionary.sae.sae_loss`."""
        return F.sae_loss(self.params, x, self.config, state, y, grad=grad)

    def normalize_decoder(self) -> SparseAutoencoder:
        """A copy with unit-norm decoder rows."""
        return eqx.tree_at(lambda m: m.params, self, normalize_decoder(self.params))

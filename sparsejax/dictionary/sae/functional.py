"""Sparse autoencoders as pure functions: a params dict in, arrays out.

An SAE is described by a frozen, hashable `SAEConfig` (pass it as a static argument or
close over it) and its parameters are a plain dict of arrays (SAELens names and layouts):

==============  =====================  =========================================================
key             shape                  used by
==============  =====================  =========================================================
``W_enc``       ``[d_in, d_sae]``      all
``b_enc``       ``[d_sae]``            all but ``gated``
``W_dec``       ``[d_sae, d_out]``     all (one row per atom; unit rows when ``normalize_decoder``)
``b_dec``       ``[d_out]``            all
``log_threshold`` ``[d_sae]``          ``jumprelu`` (``theta = exp(log_threshold)``)
``b_gate``, ``b_mag``, ``r_mag`` ``[d_sae]``  ``gated`` (``W_mag = W_enc * exp(r_mag)``)
``W_skip``      ``[d_in, d_out]``      ``skip=True`` (zero-initialised)
==============  =====================  =========================================================

Forward pass: ``h = x - b_dec`` (autoencoders with ``apply_b_dec_to_input``; transcoders use
``h = x``), ``pre = h @ W_enc + b_enc``, ``codes = activation(pre)``,
``y_hat = codes @ W_dec + b_dec (+ x @ W_skip)``.

Training state (`SAEState`, explicit, updated by `sae_loss`): a dead-latent tracker
(tokens since each latent last fired, as EleutherAI/sparsify and openai), an EMA of each latent's
firing frequency (for aux_zipf), and BatchTopK's inference threshold (an EMA of the smallest kept
activation, SAELens ``topk_threshold_lr``; the first batch sets it directly).

Losses (reconstruction = ``mean_tokens ||y - y_hat||^2`` as SAELens, or the FVU with
``normalize_loss=True`` as sparsify; auxiliary terms are divided by the same normaliser):

* ``relu``: ``+ l1_coefficient * mean_tokens sum_i f_i ||W_dec[i]||``.
* ``topk``, ``batch_topk``, ``abs_topk``: ``+ aux_coefficient * AuxK`` over dead latents.
* ``mutual_choice``, ``feature_choice``: ``+ aux_coefficient * aux_zipf``.
* ``jumprelu``: ``+ l0_coefficient * mean_tokens sum_i H(pre_i - theta_i)`` (rectangle-kernel
  gradient for ``theta``).
* ``gated`` (Rajamanoharan et al. 2024): ``f = 1[pi_gate > 0] * relu(pi_mag)``;
  ``+ l1_coefficient * mean sum_i relu(pi_gate)_i ||W_dec[i]||`` ``+ ||y - (relu(pi_gate) W_dec^sg
  + b_dec^sg)||^2`` with the decoder frozen (stop-gradient) in the auxiliary reconstruction as in
  the paper (SAELens lets that term's gradient reach the decoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import (
    check_choice,
    check_float,
    check_float_array,
    check_int,
    check_last_dim,
)
from sparsejax.dictionary.sae import activations as acts
from sparsejax.dictionary.sae.decoder import unit_norm_rows
from sparsejax.dictionary.sae.losses import aux_zipf_loss, auxk_loss, decoder_weighted_l1

__all__ = [
    "ACTIVATIONS",
    "SAEConfig",
    "SAEOutput",
    "SAEState",
    "dead_mask",
    "decode",
    "encode",
    "forward",
    "init_sae",
    "init_state",
    "pre_activation",
    "prefix_reconstructions",
    "sae_loss",
    "update_state",
]

ACTIVATIONS = ("relu", "topk", "batch_topk", "jumprelu", "abs_topk", "mutual_choice",
               "feature_choice", "gated", "gradient_topk")
_AUXK = ("topk", "batch_topk", "abs_topk", "gradient_topk")
_ZIPF = ("mutual_choice", "feature_choice")
_COUNT_CAP = 2**30

Params = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static description of a sparse autoencoder or transcoder (hashable; use as a static arg).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        activation: one of ``relu``, ``topk``, ``batch_topk``, ``jumprelu``, ``abs_topk``,
            ``mutual_choice``, ``feature_choice``, ``gated``, ``gradient_topk`` (g-SAE: needs
            the downstream gradient ``grad`` in `encode` / `sae_loss`).
        k: latents per token (TopK, AbsTopK), average per token (BatchTopK, Mutual Choice, whose
            total budget is ``k * n_tokens``) or the budget Feature Choice's default capacity is
            derived from.
        d_out: output width (defaults to ``d_in``); a different width needs ``transcoder=True``.
        transcoder: predict a target ``y`` from ``x`` (no ``b_dec`` subtraction from the input).
        skip: add a linear skip connection ``x @ W_skip`` (skip-transcoder).
        topk_order: ``relu_first`` or ``topk_first`` (see `.activations`).
        feature_capacity: tokens each latent may pick under Feature Choice; default
            ``max(1, k * n_tokens // d_sae)``.
        l1_coefficient: sparsity weight for ``relu`` and ``gated``.
        l0_coefficient: L0 weight for ``jumprelu``.
        jumprelu_bandwidth: rectangle-kernel bandwidth ``eps``.
        jumprelu_init_threshold: initial ``theta``.
        aux_k: auxiliary latents per token for AuxK / aux_zipf (default ``min(d_out // 2, d_sae)``
            as sparsify and SAELens).
        aux_coefficient: weight of AuxK / aux_zipf (openai's 1/32; 0 disables).
        dead_tokens: a latent is dead after this many tokens without firing (sparsify/openai 10M).
        threshold_ema: BatchTopK threshold EMA rate (SAELens ``topk_threshold_lr``).
        density_ema: EMA rate of the per-latent firing frequency.
        zipf_fraction: aux_zipf's underutilisation fraction (see `.underutilised_mask`).
        normalize_decoder: keep decoder rows at unit norm (init, and via
            `.remove_decoder_parallel_grads` + `.normalize_decoder` in training).
        normalize_loss: divide the losses by the target's total variance (FVU, as sparsify).
        apply_b_dec_to_input: subtract ``b_dec`` from the input (default: True for autoencoders,
            must be False for transcoders).
        matryoshka_widths: ``batch_topk`` only: the widths of the inner Matryoshka prefixes,
            strictly increasing (the full width ``d_sae`` is the outer level, always included;
            a trailing ``d_sae`` as SAELens writes it is dropped); each prefix's reconstruction
            error is added to the loss (SAELens ``matryoshka_widths``; empty: a plain SAE).
        gradient_beta: ``gradient_topk`` only: the weight ``beta`` of the gradient term.
    """

    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int = 32
    d_out: int | None = None
    transcoder: bool = False
    skip: bool = False
    topk_order: str = "relu_first"
    feature_capacity: int | None = None
    l1_coefficient: float = 1.0
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    aux_k: int | None = None
    aux_coefficient: float = 1.0 / 32.0
    dead_tokens: int = 10_000_000
    threshold_ema: float = 0.01
    density_ema: float = 0.01
    zipf_fraction: float = 0.5
    normalize_decoder: bool = True
    normalize_loss: bool = False
    apply_b_dec_to_input: bool | None = None
    matryoshka_widths: tuple[int, ...] = ()
    gradient_beta: float = 1.0

    def __post_init__(self) -> None:
        check_int(self.d_in, "d_in", minimum=1)
        check_int(self.d_sae, "d_sae", minimum=1)
        check_choice(self.activation, "activation", ACTIVATIONS)
        uses_k = self.activation in _AUXK + _ZIPF
        check_int(self.k, "k", minimum=1, maximum=self.d_sae if uses_k else None)
        if self.d_out is not None:
            check_int(self.d_out, "d_out", minimum=1)
            if self.d_out != self.d_in and not self.transcoder:
                raise ValueError(f"d_out={self.d_out} differs from d_in={self.d_in}: set "
                                 "transcoder=True to predict a different target")
        for name in ("transcoder", "skip", "normalize_decoder", "normalize_loss"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.apply_b_dec_to_input is not None:
            if not isinstance(self.apply_b_dec_to_input, bool):
                raise TypeError(f"`apply_b_dec_to_input` must be a bool or None; "
                                f"got {self.apply_b_dec_to_input!r}")
            if self.apply_b_dec_to_input and self.transcoder:
                raise ValueError("apply_b_dec_to_input=True is not allowed for transcoders "
                                 "(b_dec lives in the output space)")
        check_choice(self.topk_order, "topk_order", ("relu_first", "topk_first"))
        if self.feature_capacity is not None:
            check_int(self.feature_capacity, "feature_capacity", minimum=1)
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient"):
            check_float(getattr(self, name), name, minimum=0.0)
        check_float(self.jumprelu_bandwidth, "jumprelu_bandwidth", minimum=0.0,
                    exclusive_minimum=True)
        check_float(self.jumprelu_init_threshold, "jumprelu_init_threshold", minimum=0.0,
                    exclusive_minimum=True)
        if self.aux_k is not None:
            check_int(self.aux_k, "aux_k", minimum=1, maximum=self.d_sae)
        check_int(self.dead_tokens, "dead_tokens", minimum=0)
        for name in ("threshold_ema", "density_ema"):
            check_float(getattr(self, name), name, minimum=0.0, exclusive_minimum=True,
                        maximum=1.0)
        check_float(self.zipf_fraction, "zipf_fraction", minimum=0.0, exclusive_minimum=True,
                    maximum=1.0)
        check_float(self.gradient_beta, "gradient_beta", minimum=0.0)
        widths = self.matryoshka_widths
        if not isinstance(widths, tuple):
            raise TypeError(f"`matryoshka_widths` must be a tuple of ints; got {widths!r}")
        if widths:
            if self.activation != "batch_topk":
                raise ValueError(f"`matryoshka_widths` must be empty unless "
                                 f"activation='batch_topk'; got activation={self.activation!r}")
            for w in widths:
                check_int(w, "matryoshka_widths", minimum=1, maximum=self.d_sae)
            if any(b <= a for a, b in zip(widths, widths[1:])):
                raise ValueError(f"`matryoshka_widths` must be strictly increasing; got {widths}")
            if widths[-1] == self.d_sae:  # SAELens lists the outer level too
                object.__setattr__(self, "matryoshka_widths", widths[:-1])

    @property
    def out_dim(self) -> int:
        """The output width ``d_out`` (``d_in`` unless set)."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def subtract_b_dec(self) -> bool:
        """Whether ``b_dec`` is subtracted from the input."""
        if self.apply_b_dec_to_input is None:
            return not self.transcoder
        return self.apply_b_dec_to_input

    @property
    def num_aux(self) -> int:
        """Auxiliary latents per token for AuxK / aux_zipf."""
        return self.aux_k if self.aux_k is not None else max(1, min(self.out_dim // 2, self.d_sae))

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Latents per Matryoshka group: the differences of ``(0, *matryoshka_widths, d_sae)``."""
        edges = (0, *self.matryoshka_widths, self.d_sae)
        return tuple(b - a for a, b in zip(edges, edges[1:]))


class SAEState(NamedTuple):
    """Explicit training state of an SAE (a pytree).

    Attributes:
        tokens_since_fired: int32 ``[d_sae]``, tokens seen since each latent last fired.
        density: float32 ``[d_sae]``, EMA of each latent's firing frequency.
        threshold: float32 scalar, BatchTopK's inference threshold (-1 until the first batch).
        step: int32 scalar, number of updates.
    """

    tokens_since_fired: Int[Array, " d_sae"]
    density: Float[Array, " d_sae"]
    threshold: Float[Array, ""]
    step: Int[Array, ""]


class SAEOutput(NamedTuple):
    """Auxiliary output of `sae_loss`: the updated state, metrics, codes, reconstruction."""

    state: SAEState
    metrics: dict[str, Array]
    codes: Array
    reconstruction: Array


def _check_config(config: Any) -> SAEConfig:
    if not isinstance(config, SAEConfig):
        # old wording kept: tests/test_nn_sae.py (nn engineer) matches "config must be an SAEConfig"
        raise TypeError(f"config must be an SAEConfig; got {type(config).__name__}.")
    return config


def init_sae(key: Array, config: SAEConfig, *, b_dec: Float[Array, " d_out"] | None = None,
             dtype: Any = jnp.float32) -> Params:
    """Initialise SAE parameters.

    Decoder rows are Gaussian directions scaled to unit norm; an autoencoder's encoder starts as
    the decoder's transpose (SAELens, sparsify); a transcoder's encoder is an independent draw with
    unit-norm columns. Encoder/gate/magnitude biases and ``r_mag`` start at 0,
    ``log_threshold`` at ``log(jumprelu_init_threshold)``, ``W_skip`` at 0.

    Args:
        key: PRNG key.
        config: the SAE description.
        b_dec: initial decoder bias ``[d_out]`` (e.g. `.geometric_median` of the targets);
            zeros when None.
        dtype: parameter dtype.

    Returns:
        The params dict (see the module docstring).
    """
    config = _check_config(config)
    k_dec, k_enc = jax.random.split(key)
    d_in, d_sae, d_out = config.d_in, config.d_sae, config.out_dim
    w_dec = unit_norm_rows(jax.random.normal(k_dec, (d_sae, d_out), jnp.float32))
    if config.transcoder:
        w_enc = unit_norm_rows(jax.random.normal(k_enc, (d_sae, d_in), jnp.float32)).T
    else:
        w_enc = w_dec.T
    params: Params = {"W_enc": w_enc.astype(dtype), "W_dec": w_dec.astype(dtype)}
    if b_dec is None:
        params["b_dec"] = jnp.zeros((d_out,), dtype)
    else:
        b_dec = check_float_array(jnp.asarray(b_dec), "b_dec", min_ndim=1)
        if b_dec.shape != (d_out,):
            raise ValueError(f"`b_dec` must have shape (d_out,)=({d_out},); got {b_dec.shape}")
        params["b_dec"] = b_dec.astype(dtype)
    zeros = jnp.zeros((d_sae,), dtype)
    if config.activation == "gated":
        params.update(b_gate=zeros, b_mag=zeros, r_mag=zeros)
    else:
        params["b_enc"] = zeros
    if config.activation == "jumprelu":
        params["log_threshold"] = jnp.full((d_sae,), jnp.log(config.jumprelu_init_threshold),
                                           dtype)
    if config.skip:
        params["W_skip"] = jnp.zeros((d_in, d_out), dtype)
    return params


def init_state(config: SAEConfig) -> SAEState:
    """A fresh `SAEState` for ``config``."""
    config = _check_config(config)
    return SAEState(tokens_since_fired=jnp.zeros((config.d_sae,), jnp.int32),
                    density=jnp.zeros((config.d_sae,), jnp.float32),
                    threshold=jnp.asarray(-1.0, jnp.float32),
                    step=jnp.asarray(0, jnp.int32))


def _check_params(params: Params, config: SAEConfig) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"`params` must be a dict of arrays; got {type(params).__name__}")
    need = ["W_enc", "W_dec", "b_dec"]
    need += ["b_gate", "b_mag", "r_mag"] if config.activation == "gated" else ["b_enc"]
    if config.activation == "jumprelu":
        need.append("log_threshold")
    if config.skip:
        need.append("W_skip")
    missing = [n for n in need if n not in params]
    if missing:
        raise ValueError(f"params lacks {missing} needed by activation={config.activation!r}"
                         f"{' with skip=True' if config.skip else ''}; got keys "
                         f"{sorted(params)}")
    if params["W_enc"].shape != (config.d_in, config.d_sae):
        raise ValueError(f"`params['W_enc']` must have shape (d_in, d_sae)="
                         f"{(config.d_in, config.d_sae)}; got {params['W_enc'].shape}")
    if params["W_dec"].shape != (config.d_sae, config.out_dim):
        raise ValueError(f"`params['W_dec']` must have shape (d_sae, d_out)="
                         f"{(config.d_sae, config.out_dim)}; got {params['W_dec'].shape}")


def _sae_in(params: Params, x: Array, config: SAEConfig) -> Array:
    return x - params["b_dec"].astype(x.dtype) if config.subtract_b_dec else x


def _gated_pre(params: Params, x: Array, config: SAEConfig) -> tuple[Array, Array]:
    h = _sae_in(params, x, config)
    w = params["W_enc"].astype(x.dtype)
    pi_gate = h @ w + params["b_gate"].astype(x.dtype)
    pi_mag = h @ (w * jnp.exp(params["r_mag"]).astype(x.dtype)) + params["b_mag"].astype(x.dtype)
    return pi_gate, pi_mag


def pre_activation(params: Params, x: Float[Array, "... d_in"], config: SAEConfig
                   ) -> Float[Array, "... d_sae"]:
    """Encoder pre-activations ``(x - b_dec) @ W_enc + b_enc`` (``pi_mag`` for gated SAEs).

    Args:
        params: SAE params.
        x: inputs ``[..., d_in]``.
        config: the SAE description.
    """
    config = _check_config(config)
    _check_params(params, config)
    x = check_float_array(x, "x", min_ndim=1)
    check_last_dim(x, config.d_in, "x", "d_in")
    if config.activation == "gated":
        return _gated_pre(params, x, config)[1]
    return _sae_in(params, x, config) @ params["W_enc"].astype(x.dtype) + \
        params["b_enc"].astype(x.dtype)


def _activate(params: Params, pre: Array, config: SAEConfig, threshold: Array | None,
              gate: Array | None = None, grad: Array | None = None) -> Array:
    a = config.activation
    if a == "gradient_topk":
        return acts.gradient_topk(pre, grad, params["W_dec"], config.k, beta=config.gradient_beta)
    if a == "relu":
        return jax.nn.relu(pre)
    if a == "topk":
        return acts.topk(pre, config.k, order=config.topk_order)
    if a == "abs_topk":
        return acts.abs_topk(pre, config.k)
    if a == "batch_topk":
        if threshold is not None:
            return acts.threshold_activation(jax.nn.relu(pre), jnp.maximum(threshold, 0.0))
        return acts.batch_topk(pre, config.k)
    if a == "mutual_choice":
        n = pre.size // pre.shape[-1]
        return acts.mutual_choice(pre, min(config.k * n, pre.size))
    if a == "feature_choice":
        if pre.ndim < 2:
            raise ValueError("feature_choice needs a batch: x must be at least 2-D [n, d_in], "
                             f"got shape {pre.shape[:-1] + (config.d_in,)}")
        n = pre.size // pre.shape[-1]
        m = config.feature_capacity or max(1, config.k * n // config.d_sae)
        return acts.feature_choice(pre, min(m, n))
    if a == "jumprelu":
        theta = jnp.exp(params["log_threshold"]).astype(pre.dtype)
        return acts.jumprelu(pre, theta, config.jumprelu_bandwidth)
    # gated: the Heaviside gate passes no gradient (as the paper and SAELens)
    return jnp.where(jax.lax.stop_gradient(gate) > 0, jax.nn.relu(pre), jnp.zeros((), pre.dtype))


def encode(params: Params, x: Float[Array, "... d_in"], config: SAEConfig, *,
           threshold: Float[Array, ""] | None = None,
           grad: Float[Array, "... d_out"] | None = None) -> Float[Array, "... d_sae"]:
    """Sparse codes of ``x``.

    Args:
        params: SAE params.
        x: inputs ``[..., d_in]``; batch-level activations (BatchTopK in training mode, Mutual
            and Feature Choice) treat all leading axes as one batch.
        config: the SAE description.
        threshold: for ``batch_topk`` only: the inference threshold (``state.threshold``); codes
            are then ``relu(pre) * (pre > threshold)`` per token instead of the batch top-k.
        grad: for ``gradient_topk`` only (and required there): the downstream loss's gradient
            with respect to the activation, ``[..., d_out]`` (see `.activations.gradient_topk`).

    Returns:
        Codes ``[..., d_sae]``.
    """
    config = _check_config(config)
    _check_grad(grad, config)
    if threshold is not None and config.activation != "batch_topk":
        raise ValueError(f"threshold is only used by activation='batch_topk', got "
                         f"activation={config.activation!r}")
    if config.activation == "gated":
        x = check_float_array(x, "x", min_ndim=1)
        _check_params(params, config)
        check_last_dim(x, config.d_in, "x", "d_in")
        gate, mag = _gated_pre(params, x, config)
        return _activate(params, mag, config, None, gate)
    pre = pre_activation(params, x, config)
    return _activate(params, pre, config, threshold, grad=grad)


def decode(params: Params, codes: Float[Array, "... d_sae"], config: SAEConfig,
           x: Float[Array, "... d_in"] | None = None) -> Float[Array, "... d_out"]:
    """Reconstruction ``codes @ W_dec + b_dec`` (``+ x @ W_skip`` with ``skip=True``).

    Args:
        params: SAE params.
        codes: ``[..., d_sae]``.
        config: the SAE description.
        x: the inputs, required when ``skip=True``.
    """
    config = _check_config(config)
    _check_params(params, config)
    codes = check_float_array(codes, "codes", min_ndim=1)
    check_last_dim(codes, config.d_sae, "codes", "d_sae")
    out = codes @ params["W_dec"].astype(codes.dtype) + params["b_dec"].astype(codes.dtype)
    if config.skip:
        if x is None:
            raise ValueError("decode with skip=True needs the inputs x for the skip connection")
        out = out + x @ params["W_skip"].astype(x.dtype)
    return out


def forward(params: Params, x: Float[Array, "... d_in"], config: SAEConfig, *,
            threshold: Float[Array, ""] | None = None,
            grad: Float[Array, "... d_out"] | None = None,
            ) -> tuple[Float[Array, "... d_out"], Float[Array, "... d_sae"]]:
    """``(reconstruction, codes)`` of ``x`` (see `encode` for ``threshold`` and ``grad``)."""
    codes = encode(params, x, config, threshold=threshold, grad=grad)
    return decode(params, codes, config, x), codes


def _check_grad(grad: Array | None, config: SAEConfig) -> None:
    if config.activation == "gradient_topk" and grad is None:
        raise ValueError("activation='gradient_topk' needs `grad`, the downstream loss's gradient "
                         "with respect to the activation [..., d_out]; got None")
    if config.activation != "gradient_topk" and grad is not None:
        raise ValueError(f"`grad` is only used by activation='gradient_topk'; got "
                         f"activation={config.activation!r}")


def prefix_reconstructions(params: Params, codes: Float[Array, "n d_sae"], config: SAEConfig
                           ) -> Float[Array, "groups n d_out"]:
    """Reconstructions from every Matryoshka prefix of the latent groups, in one pass.

    Prefix ``g`` decodes the latents of groups ``0..g`` only (the first
    ``(*matryoshka_widths, d_sae)[g]`` latents). The decoder product is split by group (the
    FLOPs of one ``codes @ W_dec``) and the prefixes are the cumulative sum over groups; the
    last prefix is the full reconstruction ``decode(params, codes)`` (without a skip term).

    Args:
        params: SAE params.
        codes: ``[n, d_sae]``.
        config: the SAE description (``config.group_sizes`` gives the groups).

    Returns:
        ``[n_groups, n, d_out]``, each with ``b_dec`` added.
    """
    config = _check_config(config)
    codes = check_float_array(codes, "codes", min_ndim=2)
    check_last_dim(codes, config.d_sae, "codes", "d_sae")
    w_dec = params["W_dec"].astype(codes.dtype)
    edges = (0, *config.matryoshka_widths, config.d_sae)
    parts = jnp.stack([codes[..., a:b] @ w_dec[a:b] for a, b in zip(edges, edges[1:])])
    return jnp.cumsum(parts, axis=0) + params["b_dec"].astype(codes.dtype)


def dead_mask(state: SAEState, config: SAEConfig) -> Array:
    """Bool ``[d_sae]``: latents that have not fired for more than ``config.dead_tokens`` tokens."""
    config = _check_config(config)
    return state.tokens_since_fired > config.dead_tokens


def update_state(state: SAEState, codes: Float[Array, "... d_sae"], config: SAEConfig
                 ) -> SAEState:
    """The state after seeing ``codes`` (gradient-free).

    Tokens-since-fired add the batch's token count and reset to 0 where a latent fired; the
    density EMA moves towards this batch's firing frequency (the first batch sets it); for
    ``batch_topk`` the threshold moves towards the batch's smallest positive code
    (``(1 - r) * t + r * min``; set directly on the first batch; unchanged if nothing fired).
    """
    config = _check_config(config)
    codes = jax.lax.stop_gradient(codes.reshape(-1, codes.shape[-1]))
    n = codes.shape[0]
    nz = codes != 0
    fired = jnp.any(nz, axis=0)
    since = jnp.where(fired, 0, jnp.minimum(state.tokens_since_fired + n, _COUNT_CAP))
    freq = jnp.mean(nz.astype(jnp.float32), axis=0)
    r = config.density_ema
    density = jnp.where(state.step == 0, freq, (1 - r) * state.density + r * freq)
    threshold = state.threshold
    if config.activation == "batch_topk":
        positive = codes > 0
        smallest = jnp.min(jnp.where(positive, codes, jnp.inf)).astype(jnp.float32)
        lr = config.threshold_ema
        moved = jnp.where(threshold < 0, smallest, (1 - lr) * threshold + lr * smallest)
        threshold = jnp.where(jnp.any(positive), moved, threshold)
    return SAEState(since.astype(jnp.int32), density.astype(jnp.float32),
                    jnp.asarray(threshold, jnp.float32), state.step + 1)


def _topk_sparse_forward(params: Params, pre: Array, x: Array, config: SAEConfig
                         ) -> tuple[Array, Array]:
    """Per-row top-k codes and their reconstruction by gathering the k decoder rows.

    Same values as ``decode(params, topk(pre))`` but the decoder costs ``n * k * d_out`` instead
    of ``n * d_sae * d_out`` (forward and backward); the dense codes are rebuilt by a scatter.
    """
    if config.activation == "abs_topk":
        _, idx = jax.lax.top_k(jnp.abs(pre), config.k)
        vals = jnp.take_along_axis(pre, idx, axis=-1)
    else:
        vals, idx = acts.topk_indices(pre, config.k, order=config.topk_order)
    w_dec = params["W_dec"].astype(pre.dtype)
    recon = jnp.einsum("nk,nkd->nd", vals, w_dec[idx]) + params["b_dec"].astype(pre.dtype)
    if config.skip:
        recon = recon + x @ params["W_skip"].astype(x.dtype)
    rows = jnp.arange(pre.shape[0])[:, None]
    codes = jnp.zeros_like(pre).at[rows, idx].set(vals)
    return codes, recon


def sae_loss(
    params: Params,
    x: Float[Array, "... d_in"],
    config: SAEConfig,
    state: SAEState,
    y: Float[Array, "... d_out"] | None = None,
    *,
    grad: Float[Array, "... d_out"] | None = None,
) -> tuple[Float[Array, ""], SAEOutput]:
    """Training loss of an SAE or transcoder, and the updated state.

    Use with ``jax.value_and_grad(sae_loss, has_aux=True)``.

    Args:
        params: SAE params.
        x: inputs ``[..., d_in]`` (all leading axes are tokens).
        config: the SAE description (static).
        state: the training state (the dead-latent tracker feeds AuxK / aux_zipf).
        y: targets ``[..., d_out]``; required for transcoders, must be None for autoencoders.
        grad: ``gradient_topk`` only (required there): the downstream gradient ``[..., d_out]``.

    Returns:
        ``(loss, SAEOutput(state, metrics, codes, reconstruction))``; metrics hold ``loss``,
        ``mse`` (mean over tokens of the squared error summed over features), ``fvu``, ``l0``,
        ``aux`` (the auxiliary term before its coefficient) and ``dead_fraction`` (from the
        updated tracker); with ``matryoshka_widths``, also ``prefix_mse`` ``[n_groups]`` (the
        mse of each prefix, the last being ``mse``). A Matryoshka loss is
        ``sum_g prefix_mse[g] + aux_coefficient * AuxK`` (SAELens).
    """
    config = _check_config(config)
    _check_grad(grad, config)
    x = check_float_array(x, "x", min_ndim=1)
    check_last_dim(x, config.d_in, "x", "d_in")
    if config.transcoder:
        if y is None:
            raise ValueError("a transcoder (transcoder=True) needs targets y")
        y = check_float_array(y, "y", min_ndim=1)
        check_last_dim(y, config.out_dim, "y", "d_out")
        if y.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"`y` must have the leading shape of `x` {x.shape[:-1]}; got "
                             f"{y.shape}")
    elif y is not None:
        raise ValueError("y is only used by transcoders (transcoder=True); an autoencoder "
                         "reconstructs x")
    _check_params(params, config)
    xf = x.reshape(-1, config.d_in)
    yf = xf if y is None else y.reshape(-1, config.out_dim)
    if config.activation == "gated":
        gate, pre = _gated_pre(params, xf, config)
        codes = _activate(params, pre, config, None, gate)
        recon = decode(params, codes, config, xf)
    elif config.activation in ("topk", "abs_topk"):
        gate = None
        pre = pre_activation(params, xf, config)
        codes, recon = _topk_sparse_forward(params, pre, xf, config)
    elif config.matryoshka_widths:
        gate = None
        pre = pre_activation(params, xf, config)
        codes = _activate(params, pre, config, None)
        prefixes = prefix_reconstructions(params, codes, config)
        if config.skip:
            prefixes = prefixes + xf @ params["W_skip"].astype(xf.dtype)
        recon = prefixes[-1]
    elif config.activation == "gradient_topk":
        gate = None
        pre = pre_activation(params, xf, config)
        codes = _activate(params, pre, config, None, grad=grad.reshape(-1, config.out_dim))
        recon = decode(params, codes, config, xf)
    else:
        gate = None
        pre = pre_activation(params, xf, config)
        codes = _activate(params, pre, config, None)
        recon = decode(params, codes, config, xf)
    e = yf - recon
    f32 = jnp.promote_types(yf.dtype, jnp.float32)
    mse = jnp.mean(jnp.sum(e.astype(f32) ** 2, axis=-1))
    total_var = jnp.sum((yf.astype(f32) - yf.astype(f32).mean(0)) ** 2)
    norm = total_var / yf.shape[0] if config.normalize_loss else jnp.asarray(1.0, f32)
    w_dec = params["W_dec"].astype(pre.dtype)
    a = config.activation
    aux = jnp.asarray(0.0, f32)
    loss = mse / norm
    if config.matryoshka_widths:
        prefix_mse = jnp.mean(jnp.sum((yf - prefixes).astype(f32) ** 2, axis=-1), axis=-1)
        loss = jnp.sum(prefix_mse) / norm
    if a == "relu":
        aux = decoder_weighted_l1(codes, w_dec)
        loss = loss + config.l1_coefficient * aux
    elif a == "jumprelu":
        theta = jnp.exp(params["log_threshold"]).astype(pre.dtype)
        aux = jnp.mean(jnp.sum(acts.jumprelu_step(pre, theta, config.jumprelu_bandwidth), -1))
        loss = loss + config.l0_coefficient * aux
    elif a == "gated":
        gate_act = jax.nn.relu(gate)
        l1 = decoder_weighted_l1(gate_act, w_dec)
        via_gate = gate_act @ jax.lax.stop_gradient(w_dec) + \
            jax.lax.stop_gradient(params["b_dec"]).astype(gate_act.dtype)
        if config.skip:
            via_gate = via_gate + xf @ jax.lax.stop_gradient(params["W_skip"]).astype(xf.dtype)
        aux = jnp.mean(jnp.sum((yf - via_gate).astype(f32) ** 2, axis=-1))
        loss = loss + config.l1_coefficient * l1 + aux / norm
    elif config.aux_coefficient > 0:
        if a in _AUXK:
            aux = auxk_loss(pre, e, w_dec, dead_mask(state, config), config.num_aux,
                            signed=a == "abs_topk")
        else:
            # densities are unknown before the first update: no aux_zipf term then
            aux = jnp.where(state.step > 0,
                            aux_zipf_loss(pre, e, w_dec, state.density, config.num_aux,
                                          fraction=config.zipf_fraction), 0.0)
        loss = loss + config.aux_coefficient * aux / norm
    new_state = update_state(state, codes, config)
    sg = jax.lax.stop_gradient
    metrics = {
        "loss": sg(loss),
        "mse": sg(mse),
        "fvu": sg(mse * yf.shape[0] / total_var),
        "l0": jnp.mean(jnp.sum(codes != 0, axis=-1).astype(jnp.float32)),
        "aux": sg(aux),
        "dead_fraction": jnp.mean(dead_mask(new_state, config).astype(jnp.float32)),
    }
    if config.matryoshka_widths:
        metrics["prefix_mse"] = sg(prefix_mse)
    return loss, SAEOutput(new_state, metrics, codes, recon)

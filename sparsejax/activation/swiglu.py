"""Activation sparsity inside a gated (SwiGLU) MLP: CATS and Griffin.

The MLP is ``down(silu(x @ W_gate) * (x @ W_up))`` with Flax-layout kernels ``W_gate, W_up [d, f]``
and ``W_down [f, d]``.

* **CATS** (ScalingIntelligence/CATS ``MistralSparseSiluMLP.forward``): threshold only the gated
  activation ``a = silu(x @ W_gate)``: ``a[|a| <= tau] = 0`` (``tau`` from
  `calibrate_thresholds` on calibration values of ``a``, ``method="cats"`` for the reference's
  histogram), then ``(a * (x @ W_up)) @ W_down``. Only the columns of ``W_up`` and rows of
  ``W_down`` of kept neurons are needed: `cats_mlp` computes ``x @ W_up`` densely (exact, simple)
  and reads ``W_down`` through `sparsejax.ops.sparse_input_matmul`.
* **Griffin** (Infini-AI-Lab GRIFFIN / Sirius ``llama12.py``): from the prompt's intermediate
  states ``z = silu(x W_gate) * (x W_up)`` ``[T, f]``, the statistic
  ``||z_t / ||z_t|| ||_T`` per neuron (normalise each token, then the norm over tokens); keep the
  top ``k = int(f * k_factor)`` neurons for generation (`griffin_neurons`) and slice the three
  kernels (`select_neurons`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sparsejax._checks import check_float, check_float_array, must_be
from sparsejax.activation.thresholds import sparsify
from sparsejax.ops.sparse_input import sparse_input_matmul

__all__ = ["cats_mlp", "griffin_neurons", "select_neurons", "swiglu_mlp"]


def swiglu_mlp(x: Float[Array, "... d"], w_gate: Float[Array, "d f"], w_up: Float[Array, "d f"],
               w_down: Float[Array, "f d"]) -> Float[Array, "... d"]:
    """The dense SwiGLU MLP ``(silu(x W_gate) * (x W_up)) W_down``."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def cats_mlp(
    x: Float[Array, "... d"],
    w_gate: Float[Array, "d f"],
    w_up: Float[Array, "d f"],
    w_down: Float[Array, "f d"],
    tau: Any,
    *,
    backend: str = "auto",
) -> Float[Array, "... d"]:
    """CATS: the SwiGLU MLP with the gated activation thresholded at ``tau``.

    Args:
        x: inputs ``[..., d]``.
        w_gate: ``[d, f]``.
        w_up: ``[d, f]``.
        w_down: ``[f, d]``.
        tau: threshold on ``|silu(x W_gate)|`` (``|a| <= tau`` is zeroed).
        backend: for the ``W_down`` product (`sparsejax.ops.sparse_input_matmul`).

    Returns:
        ``[..., d]``; equals `swiglu_mlp` at ``tau < 0``.
    """
    x = check_float_array(x, "x", min_ndim=1)
    a = sparsify(jax.nn.silu(x @ w_gate), tau)
    return sparse_input_matmul(a * (x @ w_up), w_down, backend=backend)


def griffin_neurons(
    z: Float[Array, "tokens f"], k_factor: float
) -> Int[Array, " k"]:
    """Griffin's expert neurons: top ``int(f * k_factor)`` of ``||z_t / ||z_t||_2||_T``.

    Args:
        z: the prompt's intermediate states ``silu(x W_gate) * (x W_up)``, ``[tokens, f]``.
        k_factor: fraction of neurons kept, in ``[0, 1]``.

    Returns:
        int32 indices ``[k]`` in decreasing statistic (``jax.lax.top_k`` order, as ``torch.topk``).
    """
    z = check_float_array(z, "z")
    if z.ndim != 2:
        raise ValueError(must_be("z", "a 2-D array [tokens, f]", f"shape {tuple(z.shape)}",
                                 raw=True))
    k_factor = check_float(k_factor, "k_factor", minimum=0.0, maximum=1.0)
    k = int(z.shape[1] * k_factor)
    stat = jnp.linalg.norm(z / jnp.linalg.norm(z, axis=-1, keepdims=True), axis=0)
    return jax.lax.top_k(stat, k)[1].astype(jnp.int32)


def select_neurons(
    idx: Int[Array, " k"], w_gate: Float[Array, "d f"], w_up: Float[Array, "d f"],
    w_down: Float[Array, "f d"],
) -> tuple[Float[Array, "d k"], Float[Array, "d k"], Float[Array, "k d"]]:
    """The kernels of the MLP restricted to neurons ``idx`` (Griffin's reduced weights)."""
    return w_gate[:, idx], w_up[:, idx], w_down[idx]

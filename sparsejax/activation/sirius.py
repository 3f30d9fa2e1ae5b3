"""Sirius: a sparse model decodes, the full model checks every ``kernel_size`` tokens and rolls
back at the first token it rejects (Infini-AI-Lab/Sirius ``llama12.py`` generation loop).

The model is any JAX function with a KV cache,

    model_fn(params, tokens [T] int32, cache, start) -> (logits [T, vocab], cache)

that processes ``tokens`` at positions ``start .. start+T-1``, writes their keys/values into the
cache at those positions and attends only to positions ``< start + t`` (so a rollback is just a
smaller ``start``: stale entries past it are never read and are overwritten). ``sparse_params``
(e.g. Griffin-reduced MLPs) and ``full_params`` share that one cache, as in the reference.

Loop (greedy decoding; one sequence):

1. the full model prefills the prompt and picks the first token;
2. the sparse model generates ``kernel_size - 1`` tokens one at a time, so that the window since
   the last check holds ``kernel_size`` tokens (the full model's own last token first: the
   reference checks when ``currentlength - last_check == kernel_size``); ``kernel_size=1`` is
   plain full-model decoding;
3. the full model runs once over the window (from the first token whose cache entry it has not
   written to the newest token), rewriting those cache entries; the window's tokens are
   accepted up to the first one ``accept`` rejects, the full model's choice replaces that one,
   and everything after it is rolled back;
4. repeat until ``max_new_tokens``; a final check covers the tail.

``second_pass=True`` is the reference's ``config.secondrollback``: at the first rejected token
the full model's argmax replaces it *without* rolling back, the full model runs again over the
corrected window (rewriting its cache entries), and the acceptance scan is redone on the new
logits from the start of the window; the tokens the sparse model generated after the corrected
one are kept when the full model, now conditioned on the correction, accepts them. Only this
second scan rolls back (at its first rejection).

``accept="greedy"`` accepts a token iff it is the full model's argmax there, so the output is
the full model's greedy output token for token; a float ``thr`` accepts when the full model's
probability at temperature ``temperature`` (0.6 in the reference) is ``>= thr`` (the reference's
rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax._checks import check_callable, check_float, check_int

__all__ = ["SiriusResult", "sirius_generate"]


class SiriusResult(NamedTuple):
    """Output of `sirius_generate`.

    Attributes:
        tokens: generated tokens ``[max_new_tokens]`` (the prompt excluded).
        checks: number of full-model checks.
        rollbacks: number of checks that rejected a token (in the final scan of the check).
        sparse_tokens: tokens produced by the sparse model (accepted or not).
        second_passes: full-model runs over a corrected window (``second_pass=True``).
    """

    tokens: np.ndarray
    checks: int
    rollbacks: int
    sparse_tokens: int
    second_passes: int = 0


def sirius_generate(
    model_fn: Callable[..., tuple[Any, Any]],
    full_params: Any,
    sparse_params: Any,
    prompt: Any,
    cache: Any,
    *,
    max_new_tokens: int,
    kernel_size: int = 16,
    accept: str | float = "greedy",
    temperature: float = 0.6,
    second_pass: bool = False,
) -> SiriusResult:
    """Greedy decoding with a sparse model corrected by the full model (see module docstring).

    Args:
        model_fn: ``(params, tokens [T], cache, start) -> (logits [T, V], cache)``.
        full_params: parameters of the full model.
        sparse_params: parameters of the sparse model (same ``model_fn`` and cache layout).
        prompt: int tokens ``[P]``, ``P >= 1``.
        cache: an empty cache with room for ``P + max_new_tokens + kernel_size`` positions.
        max_new_tokens: tokens to generate (``>= 1``).
        kernel_size: tokens per check window, the full model's last token and
            ``kernel_size - 1`` sparse ones (``>= 1``; 16 in the reference).
        accept: ``"greedy"`` or a probability threshold in ``[0, 1]``.
        temperature: temperature of the probability rule (ignored by ``"greedy"``).
        second_pass: correct the first rejected token in place and re-check the window once
            more before rolling back (the reference's ``secondrollback``; see the module
            docstring).

    Returns:
        `SiriusResult`.
    """
    check_callable(model_fn, "model_fn")
    max_new = check_int(max_new_tokens, "max_new_tokens", minimum=1)
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    if accept != "greedy":
        accept = check_float(accept, "accept", minimum=0.0, maximum=1.0)
    temperature = check_float(temperature, "temperature", minimum=1e-6)
    if not isinstance(second_pass, bool | np.bool_):
        raise TypeError(f"`second_pass` must be a bool; got {second_pass!r}.")
    prompt = np.asarray(prompt, np.int32).reshape(-1)
    if prompt.size == 0:
        raise ValueError("`prompt` must hold at least one token; got an empty array.")

    def ok(logits: np.ndarray, token: int) -> bool:
        if accept == "greedy":
            return int(np.argmax(logits)) == token
        p = jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature)
        return float(p[token]) >= accept

    logits, cache = model_fn(full_params, jnp.asarray(prompt), cache, 0)
    seq = list(prompt) + [int(np.argmax(np.asarray(logits)[-1]))]
    checked = len(prompt)       # first position whose cache entry the full model has not written
    checks = rollbacks = sparse_tokens = second_passes = 0
    target = len(prompt) + max_new
    while True:
        # sparse decoding: feed seq[-1] (not yet in the cache) and append the sparse choice
        while len(seq) < target and len(seq) - checked < kernel_size:
            pos = len(seq) - 1
            logits, cache = model_fn(sparse_params, jnp.asarray([seq[-1]], jnp.int32), cache, pos)
            seq.append(int(np.argmax(np.asarray(logits)[-1])))
            sparse_tokens += 1
        if checked >= target - 1:  # seq[:target] all from, or accepted by, the full model
            break
        window = seq[checked:]
        logits, cache = model_fn(full_params, jnp.asarray(window, jnp.int32), cache, checked)
        logits = np.asarray(logits)
        checks += 1
        n_ok = _accepted(logits, window, ok)
        if second_pass and n_ok < len(window) - 1:
            window = list(window)
            window[n_ok + 1] = int(np.argmax(logits[n_ok]))
            seq[checked + n_ok + 1] = window[n_ok + 1]
            logits, cache = model_fn(full_params, jnp.asarray(window, jnp.int32), cache, checked)
            logits = np.asarray(logits)
            second_passes += 1
            n_ok = _accepted(logits, window, ok)
        if n_ok < len(window) - 1:
            rollbacks += 1
        correction = int(np.argmax(logits[n_ok]))
        seq = seq[:checked + 1 + n_ok] + [correction]
        checked += 1 + n_ok
    return SiriusResult(np.asarray(seq[len(prompt):target], np.int32), checks, rollbacks,
                        sparse_tokens, second_passes)


def _accepted(logits: np.ndarray, window: list[int], ok: Callable[[np.ndarray, int], bool]) -> int:
    """Tokens of ``window[1:]`` accepted before the first rejection."""
    n_ok = 0
    while n_ok < len(window) - 1 and ok(logits[n_ok], window[n_ok + 1]):
        n_ok += 1
    return n_ok

"""The MoA rule: the constants that turn an elastic ``(alpha, beta)`` into spans and blocks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsejax._checks import check_int

__all__ = ["MoARule", "moa_spans"]


@dataclasses.dataclass(frozen=True)
class MoARule:
    """The constants of MoA's span and layout rules (reference defaults, thu-nics/MoA).

    One frozen, hashable value passed to every MoA function (`moa_spans`, `moa_blocks`,
    `moa_tokens`, `moa_mask`, `moa_keep`, `moa_profile`, `moa_search`) instead of five keyword
    arguments, so the profile, the search and the inference masks cannot disagree.

    Attributes:
        block_size: Block edge of the prefill layout and of profiling (64).
        max_new_tokens: Generated tokens the span is sized for, ``N + new`` (1024; use 0 for a
            pure prefill). `moa_search` always uses 0, as the reference's search does.
        sink_size: Maximum number of sink tokens (64).
        minimum_cache_size: Spans are raised to at least this (128).
        split_size: Spans are rounded up to a multiple of this (64).
    """

    block_size: int = 64
    max_new_tokens: int = 1024
    sink_size: int = 64
    minimum_cache_size: int = 128
    split_size: int = 64

    def __post_init__(self):
        check_int(self.block_size, "block_size", minimum=1)
        check_int(self.max_new_tokens, "max_new_tokens", minimum=0)
        check_int(self.sink_size, "sink_size", minimum=0)
        check_int(self.minimum_cache_size, "minimum_cache_size", minimum=0)
        check_int(self.split_size, "split_size", minimum=1)


DEFAULT_RULE = MoARule()
"""The reference's constants (the default ``rule`` of every MoA function)."""


def check_rule(rule: Any) -> MoARule:
    """``rule`` if it is a `MoARule`, else a ``TypeError`` naming it."""
    if not isinstance(rule, MoARule):
        raise TypeError(f"`rule` must be a MoARule; got {type(rule).__name__} {rule!r}.")
    return rule


def as_heads(x: Any, name: str) -> np.ndarray:
    """A non-empty, finite, float64 ``[H]`` array (one value per head)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D sequence (one value per head); got shape "
            f"{arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite; got {arr}.")
    return arr


def moa_spans(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    rule: MoARule = DEFAULT_RULE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-head attention span, sink and local sizes (``moa_config_to_cache_config``)::

        S = min(int(alpha + beta * (N + new)), N + new)
        S = ceil(max(S, minimum_cache_size) / split_size) * split_size
        sink = min(S, sink_size); local = S - sink

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes (fraction of the length).
        seq_len: Prompt length ``N``.
        rule: The `MoARule` (``new = rule.max_new_tokens``).

    Returns:
        ``(span, sink, local)``, each an int64 ``[H]`` numpy array with ``span = sink + local``.

    Raises:
        ValueError: Mismatched or non-finite alphas/betas, or a non-positive ``seq_len``.
    """
    rule = check_rule(rule)
    a = as_heads(alphas, "alphas")
    b = as_heads(betas, "betas")
    if a.shape != b.shape:
        raise ValueError(
            f"`betas` must have the shape of alphas {a.shape}; got {b.shape}."
        )
    total = check_int(seq_len, "seq_len", minimum=1) + rule.max_new_tokens
    span = []
    for alpha, beta in zip(a.tolist(), b.tolist()):
        s = int(alpha + total * beta)  # python int() truncates toward zero, as in the reference
        s = min(s, total)
        s = math.ceil(max(s, rule.minimum_cache_size) / rule.split_size) * rule.split_size
        span.append(s)
    span_arr = np.asarray(span, dtype=np.int64)
    sink = np.minimum(span_arr, rule.sink_size)
    return span_arr, sink, span_arr - sink

"""MoA's inference patterns: the prefill block layout and mask, and the decode keep mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool

from sparsejax._checks import check_int
from sparsejax.attention.mask import BlockMask
from sparsejax.attention.moa._rule import DEFAULT_RULE, MoARule, check_rule, moa_spans
from sparsejax.attention.static import causal_mask

__all__ = ["moa_blocks", "moa_keep", "moa_mask", "moa_tokens"]


def moa_blocks(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    rule: MoARule = DEFAULT_RULE,
) -> Bool[np.ndarray, "heads nb nb"]:
    """Block-level prefill layout of MoA (``kernels/block_sparse_attention_prefill.py``).

    Query block ``m`` visits KV blocks ``j`` with ``j <= min(sink_blocks - 1, m)`` or
    ``max(0, m + 1 - local_blocks) <= j <= m``, where ``sink_blocks = sink // block_size`` and
    ``local_blocks = local // block_size`` (integer division, as the reference kernel does).

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        seq_len: Sequence length ``N`` (the prefill is square, ``N x N``).
        rule: The `MoARule` (block size and span constants).

    Returns:
        Bool numpy array ``[H, nb, nb]`` with ``nb = ceil(N / block_size)``; lower block
        triangular.
    """
    rule = check_rule(rule)
    bs = rule.block_size
    _, sink, local = moa_spans(alphas, betas, seq_len, rule=rule)
    nb = -(-seq_len // bs)
    m = np.arange(nb)[:, None]
    j = np.arange(nb)[None, :]
    sink_b = (sink // bs)[:, None, None]
    local_b = (local // bs)[:, None, None]
    in_sink = j <= np.minimum(sink_b - 1, m)
    in_local = (j >= np.maximum(0, m + 1 - local_b)) & (j <= m)
    return np.asarray(in_sink | in_local, dtype=bool)


def moa_tokens(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    rule: MoARule = DEFAULT_RULE,
) -> Bool[np.ndarray, "heads seq seq"]:
    """Dense token-level prefill mask of MoA (the block layout AND causal), for inspection.

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        seq_len: Sequence length ``N``.
        rule: The `MoARule`.

    Returns:
        Bool numpy array ``[H, N, N]`` (what ``moa_mask(...).to_dense()[0]`` holds).
    """
    layout = moa_blocks(alphas, betas, seq_len, rule=rule)
    bs = rule.block_size
    tok = np.repeat(np.repeat(layout, bs, axis=-2), bs, axis=-1)[..., :seq_len, :seq_len]
    return tok & np.tril(np.ones((seq_len, seq_len), dtype=bool))[None]


def moa_mask(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    seq_len: int,
    *,
    rule: MoARule = DEFAULT_RULE,
) -> BlockMask:
    """MoA prefill mask: `moa_blocks` as a static ``BlockMask``, causal inside diagonal blocks.

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        seq_len: Sequence length ``N``.
        rule: The `MoARule` (``rule.block_size`` is also the mask's block).

    Returns:
        A static ``BlockMask`` ``[1, H, N, N]`` with ``(block_size, block_size)`` blocks.
    """
    layout = moa_blocks(alphas, betas, seq_len, rule=rule)
    bs = rule.block_size
    blocks = BlockMask.from_blocks(layout[None], bs, bs, seq_len, seq_len)
    return blocks & causal_mask(seq_len, block_q=bs, block_kv=bs)


def moa_keep(
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    prompt_len: int,
    kv_len: int,
    *,
    rule: MoARule = DEFAULT_RULE,
) -> Bool[np.ndarray, "1 heads kv_len"]:
    """Token-exact KV positions a decoding query sees under MoA's static circular cache.

    The cache of each head is sized once from the prompt (``span`` of `moa_spans` with
    ``seq_len = prompt_len``). With ``kv_len`` tokens written so far (the current token included)
    a head keeps the first ``sink`` tokens and the last ``local`` tokens (everything if
    ``kv_len <= span``).

    Args:
        alphas: ``[H]`` span offsets.
        betas: ``[H]`` span slopes.
        prompt_len: Prompt length the cache was sized for.
        kv_len: Number of tokens in the (uncompressed) sequence, current token included.
        rule: The `MoARule`.

    Returns:
        Bool numpy array ``[1, H, kv_len]`` (the ``_keep`` layout ``[B|1, H, kv_len]``, the same
        for every batch row; feed it to `attend_kept`).
    """
    kv_len = check_int(kv_len, "kv_len", minimum=1)
    _, sink, local = moa_spans(alphas, betas, prompt_len, rule=rule)
    pos = np.arange(kv_len)[None, :]
    return ((pos < sink[:, None]) | (pos >= kv_len - local[:, None]))[None]
